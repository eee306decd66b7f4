"""Edit examples and the random-access readers: any Hugging Face ``datasets.Dataset`` (hub ids, ``save_to_disk``
folders, Parquet files, imagefolders with metadata.jsonl, WebDataset shards) and the original repository's folders.

A dataset is a sequence of :class:`EditExample`. Images stay encoded until an example is read (image columns are
read with ``decode=False`` and decoded by :func:`ip2p.imaging.load_image`), so every image that does not decode is
a :class:`DatasetError` naming its file and row, never a traceback from inside ``datasets``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image

# The official dataset's columns (timbrooks/instructpix2pix-clip-filtered, PAPER.md 9.4).
OFFICIAL_COLUMNS = ("original_prompt", "original_image", "edit_prompt", "edited_prompt", "edited_image")

# Column names tried in order when a column is not named: the official schema's first, then diffusers' training
# script's (input_image; its SDXL script's imagefolder column `file_name` is read by `datasets` as `image`).
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "original_image": ("original_image", "input_image", "image"),
    "edit_prompt": ("edit_prompt", "instruction", "edit"),
    "edited_image": ("edited_image", "output_image"),
    "original_prompt": ("original_prompt", "input_caption", "input", "caption"),
    "edited_prompt": ("edited_prompt", "output_caption", "output"),
}
REQUIRED = ("original_image", "edit_prompt")


@dataclass
class EditExample:
    """One training or evaluation example: the input image, the instruction and the edited image."""

    original_image: Image.Image
    edit_prompt: str
    edited_image: Image.Image | None = None
    original_prompt: str | None = None
    edited_prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class DatasetError(ValueError):
    """A dataset cannot be read; the message names the file (and row) and the problem. ``kind`` is the image
    error's (``"not-image"``, ``"corrupt"``, ``"missing"``, ... of :class:`ip2p.imaging.ImageError`) for an image
    cell that cannot be decoded, ``"empty"`` for an empty instruction, else ``"dataset"``."""

    def __init__(self, message: str, kind: str = "dataset"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Columns:
    """Column names of a dataset's fields. ``None`` (the default) picks the first of :data:`DEFAULT_COLUMNS` that
    the dataset has, so that the official schema and diffusers' defaults read without flags. Example::

        Columns(original_image="before", edit_prompt="text", edited_image="after")
    """

    original_image: str | None = None
    edit_prompt: str | None = None
    edited_image: str | None = None
    original_prompt: str | None = None
    edited_prompt: str | None = None

    def resolve(self, names: Iterable[str], where: str) -> Columns:
        """These columns with every unnamed one found in ``names`` (a column absent from the data stays None);
        a named column that is absent, or a missing image or instruction, is a :class:`DatasetError`."""
        names = list(names)
        found: dict[str, str | None] = {}
        for f in fields(self):
            named = getattr(self, f.name)
            if named is None:
                found[f.name] = next((n for n in DEFAULT_COLUMNS[f.name] if n in names), None)
            elif named in names:
                found[f.name] = named
            else:
                raise DatasetError(
                    f"{where}: missing column {named!r} (the {f.name} column); it has {sorted(names)}"
                )
        missing = [k for k in REQUIRED if found[k] is None]
        if missing:
            tried = [" or ".join(DEFAULT_COLUMNS[k]) for k in missing]
            raise DatasetError(
                f"{where}: missing column(s) {', '.join(tried)}; it has {sorted(names)} (name them with "
                "--original-image-column / --edit-prompt-column / --edited-image-column)"
            )
        return Columns(**found)

    def used(self) -> set[str]:
        return {v for v in (getattr(self, f.name) for f in fields(self)) if v is not None}


def decode_image(value: Any, where: str, base: Path | None = None) -> Image.Image:
    """Decode an image cell: HF's {bytes, path} struct, raw bytes, a path (a relative one from ``base``, the
    dataset file's folder, as Hugging Face ``datasets`` resolves them) or a PIL image. Every failure is a
    :class:`DatasetError` naming the row and the image, with the reason of :func:`ip2p.imaging.load_image` (its
    ``kind`` kept)."""
    from ip2p.imaging import ImageError, load_image

    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        value = path if data is None and path else data
    try:
        if isinstance(value, (bytes, bytearray)):
            return load_image(bytes(value), name=f"{where}: the image cell")
        if isinstance(value, Image.Image):
            return load_image(value, name=f"{where}: the image cell")
        if isinstance(value, str):
            path = Path(value)
            if not path.is_absolute() and base is not None:
                path = base / path
            return load_image(path, name=f"{where}: the image {path}")
    except ImageError as exc:
        raise DatasetError(str(exc), kind=exc.kind) from None
    if value is None:
        raise DatasetError(f"{where}: the image cell is empty", kind="missing")
    raise DatasetError(f"{where}: unsupported image cell of type {type(value).__name__}")


def row_to_example(
    row: dict[str, Any], columns: Columns, where: str, base: Path | None = None
) -> EditExample:
    """One row (image cells undecoded) as an :class:`EditExample`; ``columns`` resolved. An image that does not
    decode or an empty instruction is a :class:`DatasetError` naming ``where``."""
    c = columns
    prompt = row.get(c.edit_prompt)
    if not isinstance(prompt, str) or not prompt.strip():
        raise DatasetError(f"{where}: the instruction ({c.edit_prompt}) is empty", kind="empty")
    text = lambda name: None if name is None or row.get(name) is None else str(row[name])  # noqa: E731
    return EditExample(
        original_image=decode_image(row.get(c.original_image), where, base),
        edit_prompt=prompt,
        edited_image=None if c.edited_image is None else decode_image(row.get(c.edited_image), where, base),
        original_prompt=text(c.original_prompt),
        edited_prompt=text(c.edited_prompt),
        extra={k: v for k, v in row.items() if k not in c.used() and not k.startswith("__")},
    )


def undecoded(dataset):
    """A ``datasets`` Dataset or IterableDataset with every Image column left encoded ({bytes, path}): a change of
    features only (``cast_column``'s path for decodable features), never a rewrite of the data."""
    import datasets

    for name, feature in (dataset.features or {}).items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return dataset


def flatten_row(row: dict[str, Any]) -> dict[str, Any]:
    """A WebDataset sample's fields as columns: ``original_image.png`` -> ``original_image``; the keys of a ``json``
    field become columns of their own (``ip2p.data.convert`` writes texts there). Other rows are returned as
    they are."""
    if "__key__" not in row:
        return row
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "json" and isinstance(value, dict):
            out.update(value)
        elif key.startswith("__") or "." not in key:
            out[key] = value
        else:
            out[key.rsplit(".", 1)[0]] = (
                value.decode() if isinstance(value, bytes) and key.endswith(".txt") else value
            )
    return out


def flat_names(names: Iterable[str], features=None) -> list[str]:
    """The column names :func:`flatten_row` gives for a table with these names (and ``json`` features)."""
    names = list(names)
    if "__key__" not in names:
        return names
    out = []
    for key in names:
        if key == "json" and features is not None and isinstance(features.get("json"), dict):
            out += list(features["json"])
        elif key.startswith("__") or "." not in key:
            out.append(key)
        else:
            out.append(key.rsplit(".", 1)[0])
    return out


class HFEditDataset(Sequence[EditExample]):
    """Random access to a Hugging Face ``datasets.Dataset`` (memory-mapped Arrow) as edit examples.

    ``files`` are (first row, file) of the files the rows came from, in order, so that an error names the file
    and its row; ``base`` is the folder relative image paths are read from.
    """

    def __init__(
        self,
        dataset,
        columns: Columns | None = None,
        name: str = "the dataset",
        files: Sequence[tuple[int, str]] = (),
        base: Path | None = None,
    ):
        self.data = undecoded(dataset)
        self.name, self.files, self.base = name, list(files), base
        self.columns = (columns or Columns()).resolve(
            flat_names(self.data.column_names, self.data.features), name
        )

    def __len__(self) -> int:
        return len(self.data)

    def where(self, i: int) -> str:
        """The file and row of example ``i``."""
        start, file = 0, self.name
        for first, path in self.files:
            if first > i:
                break
            start, file = first, path
        return f"{file} row {i - start}"

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` with image cells undecoded ({bytes, path})."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} examples")
        return flatten_row(self.data[i])

    def __getitem__(self, i: int) -> EditExample:  # type: ignore[override]
        row = self.row(i)
        if "__key__" in row:  # a WebDataset sample: its shard and key name it
            where = f"{row.get('__url__', self.name)} sample {row['__key__']}"
        else:
            where = self.where(i)
        return row_to_example(row, self.columns, where, self.base)


class OriginalFolderDataset(Sequence[EditExample]):
    """The original repository's format: ``seeds.json`` = [[dir, [seed, ...]], ...] and per dir ``prompt.json``
    ({input or caption, edit, output}) with ``{seed}_0.jpg`` / ``{seed}_1.jpg``.

    Every kept seed is an example of its own (the original draws one of a prompt's seeds at random per access;
    listing them all is the deterministic equivalent).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        seeds_file = self.root / "seeds.json"
        if not seeds_file.is_file():
            raise DatasetError(
                f"{self.root}: no seeds.json (not a folder in the original repository's format)"
            )
        try:
            listing = json.loads(seeds_file.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{seeds_file}: not valid JSON ({exc.msg})") from exc
        self.items = [(name, str(seed)) for name, seeds in listing for seed in seeds]
        self.columns = Columns(
            "original_image", "edit_prompt", "edited_image", "original_prompt", "edited_prompt"
        )

    def __len__(self) -> int:
        return len(self.items)

    def where(self, i: int) -> str:
        name, seed = self.items[i]
        return f"{self.root / name} seed {seed}"

    def row(self, i: int) -> dict[str, Any]:
        """Example ``i`` in the official schema, images as paths."""
        name, seed = self.items[i]
        folder = self.root / name
        try:
            prompt = json.loads((folder / "prompt.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{folder / 'prompt.json'}: cannot be read ({exc})") from None
        return {
            "original_prompt": prompt.get("input", prompt.get("caption")),  # both keys exist in the wild
            "original_image": str(folder / f"{seed}_0.jpg"),
            "edit_prompt": prompt.get("edit"),
            "edited_prompt": prompt.get("output"),
            "edited_image": str(folder / f"{seed}_1.jpg"),
            "seed": int(seed),
            "dir": name,
        }

    def __getitem__(self, i: int) -> EditExample:  # type: ignore[override]
        return row_to_example(self.row(i), self.columns, self.where(i))
