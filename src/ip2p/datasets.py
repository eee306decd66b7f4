"""Instruction-edit datasets: readers for our Parquet shards, the official Hugging Face schema and the original
repository's folders, and a shard writer in the official schema.

A dataset is a sequence of ``EditExample``s. Images stay encoded until an example is read, so datasets far larger
than memory can be indexed.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ip2p.fileio import atomic_path

# The official dataset's columns (timbrooks/instructpix2pix-clip-filtered).
OFFICIAL_COLUMNS = ("original_prompt", "original_image", "edit_prompt", "edited_prompt", "edited_image")


@dataclass
class EditExample:
    """One training or evaluation example: the input image, the instruction and the edited image."""

    original_image: Image.Image
    edit_prompt: str
    edited_image: Image.Image | None = None
    original_prompt: str | None = None
    edited_prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Columns:
    """Column names; configurable because datasets in the wild differ (diffusers' example uses input_image)."""

    original_image: str = "original_image"
    edit_prompt: str = "edit_prompt"
    edited_image: str = "edited_image"
    original_prompt: str = "original_prompt"
    edited_prompt: str = "edited_prompt"


class DatasetError(ValueError):
    """A dataset cannot be read; the message names the file and the problem. ``kind`` is the image error's
    (``"not-image"``, ``"corrupt"``, ``"missing"``, ... of :class:`ip2p.imaging.ImageError`) for an image cell that
    cannot be decoded, else ``"dataset"``."""

    def __init__(self, message: str, kind: str = "dataset"):
        super().__init__(message)
        self.kind = kind


def _decode_image(value: Any, where: str, base: Path | None = None) -> Image.Image:
    """Decode an image cell: HF's {bytes, path} struct, raw bytes, or a path (a relative one from ``base``, the
    dataset file's folder, as Hugging Face ``datasets`` resolves them). Every failure is a :class:`DatasetError`
    naming the row and the image, with the reason of :func:`ip2p.imaging.load_image` (its ``kind`` kept)."""
    from ip2p.imaging import ImageError, load_image

    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        value = path if data is None and path else data
    try:
        if isinstance(value, (bytes, bytearray)):
            return load_image(value, name=f"{where}: the image cell")
        if isinstance(value, str):
            path = Path(value)
            if not path.is_absolute() and base is not None:
                path = base / path
            return load_image(path, name=f"{where}: the image {path}")
    except ImageError as exc:
        raise DatasetError(str(exc), kind=exc.kind) from None
    raise DatasetError(f"{where}: unsupported image cell of type {type(value).__name__}")


class ParquetEditDataset(Sequence[EditExample]):
    """Parquet files in our or the official schema, read one row group at a time (random access by index)."""

    def __init__(self, files: Sequence[str | os.PathLike], columns: Columns = Columns()):
        import pyarrow.parquet as pq

        self.files = [Path(f) for f in files]
        if not self.files:
            raise DatasetError("no Parquet files given")
        self.index: list[tuple[int, int, int]] = []  # (file, row group, row in group)
        self._handles = []
        for i, path in enumerate(self.files):
            try:
                handle = pq.ParquetFile(path)
            except Exception as exc:
                raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
            names = set(handle.schema_arrow.names)
            if columns.original_image not in names and columns == Columns() and "input_image" in names:
                columns = Columns(original_image="input_image")
            missing = [c for c in (columns.original_image, columns.edit_prompt) if c not in names]
            if missing:
                raise DatasetError(
                    f"{path}: missing column(s) {missing}; it has {sorted(names)} (set the column names)"
                )
            self._handles.append(handle)
            for group in range(handle.num_row_groups):
                rows = handle.metadata.row_group(group).num_rows
                self.index.extend((i, group, r) for r in range(rows))
        self.columns = columns
        self._cache: tuple[tuple[int, int], dict[str, list]] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def _group(self, file: int, group: int) -> dict[str, list]:
        if self._cache is None or self._cache[0] != (file, group):
            table = self._handles[file].read_row_group(group)
            self._cache = ((file, group), table.to_pydict())
        return self._cache[1]

    def __getitem__(self, i: int) -> EditExample:  # type: ignore[override]
        file, group, row = self.index[i]
        data = self._group(file, group)
        c = self.columns
        where = f"{self.files[file]} row {i}"
        base = self.files[file].parent
        known = {c.original_image, c.edit_prompt, c.edited_image, c.original_prompt, c.edited_prompt}
        return EditExample(
            original_image=_decode_image(data[c.original_image][row], where, base),
            edit_prompt=data[c.edit_prompt][row],
            edited_image=(
                _decode_image(data[c.edited_image][row], where, base) if c.edited_image in data else None
            ),
            original_prompt=data[c.original_prompt][row] if c.original_prompt in data else None,
            edited_prompt=data[c.edited_prompt][row] if c.edited_prompt in data else None,
            extra={k: v[row] for k, v in data.items() if k not in known},
        )


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

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> EditExample:  # type: ignore[override]
        name, seed = self.items[i]
        folder = self.root / name
        prompt = json.loads((folder / "prompt.json").read_text())
        return EditExample(
            original_image=_decode_image(str(folder / f"{seed}_0.jpg"), f"{folder} seed {seed}"),
            edit_prompt=prompt["edit"],
            edited_image=_decode_image(str(folder / f"{seed}_1.jpg"), f"{folder} seed {seed}"),
            original_prompt=prompt.get("input", prompt.get("caption")),  # both keys exist in the wild
            edited_prompt=prompt.get("output"),
            extra={"seed": int(seed), "dir": name},
        )


def open_edit_dataset(
    source: str | os.PathLike | Sequence[str], columns: Columns = Columns()
) -> Sequence[EditExample]:
    """Open Parquet files (paths or globs, or a folder of them) or an original-format folder."""
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[str] = []
    for item in sources:
        path = Path(item)
        if path.is_dir():
            if (path / "seeds.json").is_file():
                if len(sources) > 1:
                    raise DatasetError("an original-format folder cannot be mixed with other sources")
                return OriginalFolderDataset(path)
            found = sorted(str(p) for p in path.rglob("*.parquet"))
            if not found:
                raise DatasetError(f"{path}: no .parquet files and no seeds.json in this folder")
            files += found
        elif path.is_file():
            files.append(str(path))
        else:
            matched = sorted(glob.glob(str(item)))
            if not matched:
                raise DatasetError(f"{item}: no such file, folder or glob match")
            files += matched
    return ParquetEditDataset(files, columns)


def image_to_cell(image: Image.Image, format: str = "PNG") -> dict[str, Any]:
    """An image as the official schema stores it: {"bytes": encoded, "path": None}."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return {"bytes": buffer.getvalue(), "path": None}


def write_parquet_shard(
    rows: list[dict[str, Any]],
    path: str | os.PathLike,
    image_columns: Sequence[str] = ("original_image", "edited_image"),
) -> Path:
    """Write rows as a Parquet shard that ``datasets.load_dataset("parquet", ...)`` decodes, atomically.

    Image columns hold PIL images or {bytes, path} cells; they are stored with the Hugging Face ``Image`` feature
    metadata so ``datasets`` returns PIL images, as for the official dataset.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError("a shard needs at least one row")
    path = Path(path)
    columns: dict[str, list] = {k: [r[k] for r in rows] for k in rows[0]}
    features: dict[str, Any] = {}
    for name, values in columns.items():
        if name in image_columns:
            columns[name] = [image_to_cell(v) if isinstance(v, Image.Image) else v for v in values]
            features[name] = {"_type": "Image"}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({k: pa.array(v, type=image_type) if k in features else v for k, v in columns.items()})
    for name in table.column_names:
        if name not in features:
            features[name] = _feature_of(table.schema.field(name).type)
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _feature_of(arrow_type) -> dict[str, Any]:
    import pyarrow as pa

    names = {
        pa.string(): "string",
        pa.large_string(): "large_string",
        pa.int64(): "int64",
        pa.float64(): "float64",
        pa.float32(): "float32",
        pa.int32(): "int32",
        pa.bool_(): "bool",
    }
    return {"dtype": names.get(arrow_type, "string"), "_type": "Value"}
