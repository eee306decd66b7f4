"""``ip2p data inspect``: what a dataset holds (its layout, rows, columns and the columns read for each field), a
grid of its first examples, and, with ``validate``, every row that training would refuse, named by file and row."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from ip2p.data.formats import DatasetError


def find_problems(
    data, limit: int | None = None, need_edited: bool = False
) -> tuple[list[DatasetError], int]:
    """Every row of ``data`` that cannot be read (an image that does not decode, an empty instruction; with
    ``need_edited``, no edited image) as its :class:`DatasetError`, and how many rows were read. ``limit`` stops
    after that many problems."""
    problems: list[DatasetError] = []
    n = 0
    for i in range(len(data)):
        n += 1
        try:
            example = data[i]
        except DatasetError as exc:
            problems.append(exc)
        else:
            if need_edited and example.edited_image is None:
                where = data.where(i) if hasattr(data, "where") else f"row {i}"
                problems.append(DatasetError(f"{where}: no edited image", kind="missing"))
        if limit is not None and len(problems) >= limit:
            break
    return problems, n


def check_dataset(data, need_edited: bool = True) -> None:
    """Raise the first problem of :func:`find_problems` (with how many rows have one) before a run starts."""
    problems, _ = find_problems(data, need_edited=need_edited)
    if problems:
        more = f" (and {len(problems) - 1} more rows with problems: ip2p data inspect --validate lists them)"
        raise DatasetError(f"{problems[0]}{more if len(problems) > 1 else ''}", kind=problems[0].kind)


def inspect_dataset(
    source: str | Sequence[str],
    columns=None,
    format: str = "auto",
    grid: str | os.PathLike | None = None,
    examples: int = 8,
    validate: bool = False,
) -> dict[str, Any]:
    """A dataset's summary: {source, format, rows, columns (all names), fields (field -> column read), problems
    (with ``validate``: one line each), grid (the path written)}. The grid holds the first ``examples`` examples,
    one a row: input and edited image, the instruction as the label. Example::

        inspect_dataset("pairs/", grid="pairs.png", validate=True)["rows"]
    """
    from ip2p.data.formats import Columns
    from ip2p.data.sources import detect_format, open_edit_dataset

    sources = [str(source)] if isinstance(source, (str, os.PathLike)) else [str(s) for s in source]
    kind = detect_format(sources) if format == "auto" else format
    data = open_edit_dataset(sources, columns or Columns(), kind)
    names = list(data.row(0)) if len(data) else []
    report: dict[str, Any] = {
        "source": sources[0] if len(sources) == 1 else sources,
        "format": kind,
        "rows": len(data),
        "columns": [n for n in names if not n.startswith("__")],
        "fields": {f.name: getattr(data.columns, f.name) for f in fields(data.columns)},
    }
    if validate:
        problems, _ = find_problems(data)
        report["problems"] = [str(p) for p in problems]
    if grid is not None and len(data):
        report["grid"] = str(_write_grid(data, examples, Path(grid)))
    return report


def _write_grid(data, examples: int, path: Path) -> Path:
    from ip2p.imaging import make_grid, save_png

    tiles, labels = [], []
    for i in range(min(examples, len(data))):
        try:
            ex = data[i]
        except DatasetError:
            continue  # shown by --validate
        size = (128, 128)  # (the grid needs tiles of one size)
        after = ex.edited_image or ex.original_image
        tiles += [ex.original_image.resize(size), after.resize(size)]
        labels += [ex.edit_prompt[:40], "edited" if ex.edited_image is not None else "(no edited image)"]
    if not tiles:
        raise DatasetError(f"{data.where(0)}: none of the first {examples} examples can be read")
    return save_png(make_grid(tiles, columns=2, labels=labels), path)
