"""Readers of the standard editing benchmarks: MagicBrush and the Emu Edit test set, in their published schemas.

MagicBrush (``osunlp/MagicBrush`` on the hub): one row per turn, ``img_id`` (the edit session), ``turn_index``
(1, 2, ...), ``source_img`` (the turn's ground-truth input: the photo at turn 1, the previous turn's target
after), ``mask_img``, ``instruction``, ``target_img``. The hub holds the ``train`` and ``dev`` splits; the test set
of the paper's tables is released as a folder (``test/images/<img_id>/<img_id>-input.png``,
``<img_id>-output<k>.png``, ``<img_id>-mask<k>.png``, with ``edit_sessions.json`` listing each session's turns),
which :func:`read_magicbrush` also reads. CLIP-T needs the test set's ``local_captions.json``
(``{img_id: {"<img_id>-output<k>.png": caption}}``), found beside the folder or passed as ``captions``.

Emu Edit (``facebook/emu_edit_test_set``): ``instruction``, ``image``, ``task`` (background, global, style,
remove, add, local, texture), ``split``, ``idx``, ``hash``, ``input_caption``, ``output_caption``; no target
images. The hub's ``validation`` split holds 2,022 rows and ``test`` 3,589; the published copy of Emu Edit's
generations (``facebook/emu_edit_test_set_generations``) names them the other way round (``validation`` 3,589
rows, ``test`` 2,022). Every row carries its own ``split`` column, so :func:`read_emu_edit` selects rows by that
column where it has the value asked for (in any hub split), and by the hub split's name otherwise; the run
records which.

Any source is a hub id, a ``save_to_disk`` folder, or Parquet files (a file, or a folder of them; files named
``<split>-*.parquet`` form that split), read with ``datasets``, imported only here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ip2p.evaluate.items import EvaluationError

MAGICBRUSH_FIELDS = ("img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img")
EMU_EDIT_FIELDS = ("instruction", "image", "task", "split", "idx", "hash", "input_caption", "output_caption")
EMU_EDIT_SPLIT_SIZES = {"validation": 2022, "test": 3589}  # facebook/emu_edit_test_set's own hub splits


@dataclass
class BenchItem:
    """One edit of a benchmark: the turn's input, instruction and what the metrics compare against."""

    id: str
    image: Image.Image  # the ground-truth input of this turn
    instruction: str
    session: str  # MagicBrush: img_id; otherwise the item's own id
    turn: int = 1
    target: Image.Image | None = None
    caption: str | None = None  # the caption CLIP-T / CLIPout compare with (MagicBrush: the local caption)
    input_caption: str | None = None
    task: str | None = None  # Emu Edit's task, the toy world's edit type


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def load_source(source: str):
    """A ``datasets`` Dataset or DatasetDict from a hub id, a ``save_to_disk`` folder or Parquet files."""
    import datasets

    path = Path(source).expanduser()
    try:
        if path.is_file() or (path.is_dir() and any(path.rglob("*.parquet"))):
            files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
            splits: dict[str, list[str]] = {}
            for f in files:
                name = f.name.split("-")[0] if "-" in f.name else "train"
                splits.setdefault(name, []).append(str(f))
            return datasets.load_dataset("parquet", data_files=splits)
        if path.is_dir():
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset(source)
    except Exception as exc:  # the hub client, fsspec and arrow raise many types
        raise EvaluationError(
            f"could not read the benchmark data {source!r} ({_first_line(exc)}); pass a local copy (a save_to_disk "
            "folder or Parquet files) with --data PATH"
        ) from exc


def _splits(data) -> dict[str, Any]:
    import datasets

    return {"": data} if isinstance(data, datasets.Dataset) else dict(data)


def open_split(source: str, split: str | None, default: str = "test") -> tuple[Any, str, list[str]]:
    """(rows, the split read, every split the source has): ``split``, else ``default`` where the source has it,
    else its only split."""
    splits = _splits(load_source(source))
    names = list(splits)
    if names == [""]:
        return splits[""], split or "", names
    chosen = split or (default if default in names else names[0] if len(names) == 1 else None)
    if chosen not in splits:
        raise EvaluationError(
            f"--split: {source} has the splits {', '.join(names)}; choose one (got {split!r})"
        )
    return splits[chosen], chosen, names


def _check_fields(rows, fields: tuple[str, ...], source: str) -> None:
    missing = [f for f in fields if f not in rows.column_names]
    if missing:
        raise EvaluationError(f"{source}: not in the benchmark's schema, lacks {', '.join(missing)}")


def _rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _read_captions(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    if not path.is_file():
        raise EvaluationError(f"--captions: {path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"--captions: {path}: not JSON ({exc})") from None


def _caption(captions: dict[str, Any], img_id: str, turn: int) -> str | None:
    """The local caption of ``<img_id>-output<turn>.png`` (nested by image id, as the test set's file, or flat)."""
    name = f"{img_id}-output{turn}.png"
    inner = captions.get(img_id)
    value = inner.get(name) if isinstance(inner, dict) else captions.get(name)
    return value if isinstance(value, str) and value else None


def _magicbrush_folder(root: Path) -> tuple[Path, Path] | None:
    """(edit_sessions.json, images folder) of the released test folder, or None."""
    for base in (root, root.parent):
        sessions = base / "edit_sessions.json"
        if sessions.is_file():
            images = base / "images" if (base / "images").is_dir() else base
            return sessions, images
    return None


def read_magicbrush(
    source: str, split: str | None = None, captions: str | None = None, limit: int | None = None
) -> tuple[list[list[BenchItem]], dict[str, Any]]:
    """MagicBrush's edit sessions (each a list of turns in order) and where they came from.

    ``limit`` keeps the first N sessions. Returns ``(sessions, provenance)``."""
    root = Path(source).expanduser()
    folder = _magicbrush_folder(root) if root.is_dir() else None
    caption_file = Path(captions).expanduser() if captions else None
    if caption_file is None and folder is not None:
        found = [
            p / "local_captions.json"
            for p in (folder[0].parent, root)
            if (p / "local_captions.json").is_file()
        ]
        caption_file = found[0] if found else None
    local = _read_captions(caption_file)
    sessions: dict[str, list[BenchItem]] = {}
    if folder is not None:
        from ip2p.imaging import load_image  # a missing or broken file is one line naming it

        try:
            listing = json.loads(folder[0].read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{folder[0]}: not JSON ({exc})") from None
        for img_id, turns in listing.items():
            if limit is not None and len(sessions) >= limit:
                break
            items = []
            for k, turn in enumerate(turns, start=1):
                where = folder[1] / str(img_id)
                if not isinstance(turn, dict) or "input" not in turn or "instruction" not in turn:
                    raise EvaluationError(f"{folder[0]}: turn {k} of {img_id} lacks 'input' or 'instruction'")
                output = where / turn.get("output", f"{img_id}-output{k}.png")
                items.append(
                    BenchItem(
                        id=f"{img_id}-{k}",
                        image=load_image(where / turn["input"]),
                        instruction=str(turn["instruction"]),
                        session=str(img_id),
                        turn=k,
                        target=load_image(output) if output.is_file() else None,
                        caption=_caption(local, str(img_id), k),
                    )
                )
            sessions[str(img_id)] = items
        read = {"format": "MagicBrush test folder", "edit_sessions": str(folder[0]), "split": split or "test"}
    else:
        rows, chosen, names = open_split(source, split)
        _check_fields(rows, MAGICBRUSH_FIELDS, source)
        for row in rows:
            img_id = str(row["img_id"])
            if img_id not in sessions and limit is not None and len(sessions) >= limit:
                continue
            turn = int(row["turn_index"])
            sessions.setdefault(img_id, []).append(
                BenchItem(
                    id=f"{img_id}-{turn}",
                    image=_rgb(row["source_img"]),
                    instruction=str(row["instruction"]),
                    session=img_id,
                    turn=turn,
                    target=_rgb(row["target_img"]),
                    caption=_caption(local, img_id, turn),
                )
            )
        read = {"format": "hub schema", "split": chosen, "splits": names}
    out = []
    for img_id, items in sessions.items():
        items.sort(key=lambda it: it.turn)
        if [it.turn for it in items] != list(range(1, len(items) + 1)):
            raise EvaluationError(
                f"{source}: session {img_id} has turns {[it.turn for it in items]}, not 1..N"
            )
        if any(it.target is None for it in items):
            raise EvaluationError(f"{source}: session {img_id} lacks a target image")
        out.append(items)
    if not out:
        raise EvaluationError(f"{source}: no MagicBrush sessions read")
    read |= {
        "sessions": len(out),
        "turns": sum(len(s) for s in out),
        "captions": str(caption_file) if caption_file else None,
    }
    return out, read


def read_emu_edit(
    source: str, split: str = "test", limit: int | None = None
) -> tuple[list[BenchItem], dict[str, Any]]:
    """The Emu Edit test set's items of ``split`` (``test`` or ``validation``), selected by each row's own
    ``split`` column where it holds that name (the hub splits of a copy may be swapped), by the hub split's name
    otherwise. Returns ``(items, provenance)``."""
    import datasets

    splits = _splits(load_source(source))
    chosen_rows, how = [], None
    for rows in splits.values():
        _check_fields(rows, EMU_EDIT_FIELDS, source)
        keep = [i for i, s in enumerate(rows["split"]) if s == split]
        if keep:
            chosen_rows.append(rows.select(keep))
            how = "the rows' split column"
    if not chosen_rows:
        if split not in splits:
            raise EvaluationError(
                f"--split: no row of {source} is in split {split!r} (hub splits: {', '.join(n or '-' for n in splits)})"
            )
        chosen_rows, how = [splits[split]], "the hub split's name"
    rows = datasets.concatenate_datasets(chosen_rows) if len(chosen_rows) > 1 else chosen_rows[0]
    items = []
    for row in rows.select(range(min(limit, len(rows)))) if limit is not None else rows:
        items.append(
            BenchItem(
                id=str(row["idx"]),
                image=_rgb(row["image"]),
                instruction=str(row["instruction"]),
                session=str(row["idx"]),
                caption=row["output_caption"] or None,
                input_caption=row["input_caption"] or None,
                task=row["task"] or None,
            )
        )
    if not items:
        raise EvaluationError(f"{source}: split {split!r} is empty")
    read = {
        "format": "hub schema",
        "split": split,
        "selected_by": how,
        "rows": len(rows),
        "expected_rows": EMU_EDIT_SPLIT_SIZES.get(split),
    }
    return items, read


def registered_test_set(name: str, limit: int | None = None) -> list[BenchItem]:
    """Items of a registered test set (``toy:300``) with targets, for MagicBrush-style metrics: the output caption
    stands in for the local caption, the edit type for the task."""
    from ip2p.evaluate.items import load_test_set

    items = []
    for it in load_test_set(name, limit):
        if it.target is None:
            raise EvaluationError(
                f"test set {name}: item {it.id} has no target image; MagicBrush metrics need one"
            )
        items.append(
            BenchItem(
                id=it.id,
                image=_rgb(it.image),
                instruction=it.instruction,
                session=it.id,
                target=_rgb(it.target),
                caption=it.output_caption,
                input_caption=it.input_caption,
                task=it.edit_type,
            )
        )
    return items
