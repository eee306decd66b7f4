"""Test items of ``ip2p evaluate`` (paper section 4): what an item is, where test sets come from, per-item seeds.

A test set is a registered name (``ip2p.registry.TEST_SETS``, written ``NAME`` or ``NAME:N``), a JSONL file or
an edit dataset. This module imports neither torch nor a plug-in (the toy world's test sets import it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image


class EvaluationError(ValueError):
    """A test set, method or setting cannot be used; the message says why."""


@dataclass
class EvalItem:
    """One test case: an input image, an instruction, the captions around it, and what is known of the result."""

    id: str
    image: Image.Image
    instruction: str
    input_caption: str | None = None
    output_caption: str | None = None
    target: Image.Image | None = (
        None  # the exact (toy) or synthesized edited image, where the test set has one
    )
    edit: Any = (
        None  # what a metric plug-in knows of the edit (the toy world: its exact Edit, for the oracle)
    )
    edit_type: str | None = None
    chain: str | None = None  # multi-turn sets: the sequence it is a turn of (turns consecutive, in order)


def _jsonl_test_set(path: Path) -> list[EvalItem]:
    from ip2p.imaging import load_image
    from ip2p.jsonl import iter_jsonl_objects

    items = []
    for n, (line, row) in enumerate(iter_jsonl_objects(path, EvaluationError)):
        where = f"{path}:{line}"

        def get(*keys: str, row: dict = row) -> Any:
            return next((row[k] for k in keys if row.get(k) not in (None, "")), None)

        image, instruction = get("image", "input_image"), get("instruction", "edit")
        if image is None or instruction is None:
            raise EvaluationError(f"{where}: needs 'image' and 'instruction' (or 'edit')")
        target = get("target", "target_image", "edited_image")
        items.append(
            EvalItem(
                id=str(row.get("id", n)),
                image=load_image(path.parent / image),
                instruction=str(instruction),
                input_caption=get("input_caption", "input"),
                output_caption=get("output_caption", "output"),
                target=None if target is None else load_image(path.parent / target),
                edit_type=row.get("edit_type"),
            )
        )
    return items


def load_test_set(source: str, limit: int | None = None, columns=None) -> list[EvalItem]:
    """Items from a registered test set (``NAME`` or ``NAME:N`` of ``ip2p.registry.TEST_SETS``; the toy world's
    plug-in gives ``toy``, ``toy-val``, ``toy-brief`` and ``toy-val-brief``), a JSONL file of {image, instruction,
    input_caption, output_caption[, target]} (paths relative to the file), or any edit dataset
    :func:`ip2p.data.open_edit_dataset` reads (Parquet, a folder with metadata.jsonl, WebDataset shards, a
    save_to_disk folder, a hub id, original folders; columns detected as in training)."""
    from ip2p.data import Columns, DatasetError, open_edit_dataset
    from ip2p.registry import TEST_SETS, RegistryError, find_counted

    try:
        named = find_counted(TEST_SETS, source)
    except RegistryError as exc:
        raise EvaluationError(f"test set {exc}") from None
    path = Path(source).expanduser()
    if named is not None:
        _, load, count = named
        items = load(count, limit)
    elif path.suffix == ".jsonl":
        if not path.is_file():
            raise EvaluationError(f"{path}: no such file")
        items = _jsonl_test_set(path)
    else:
        try:
            data = open_edit_dataset(source, columns or Columns())
        except DatasetError as exc:
            raise EvaluationError(str(exc)) from exc
        items = []
        for i in range(len(data) if limit is None else min(limit, len(data))):
            ex = data[i]
            items.append(
                EvalItem(
                    id=str(ex.extra.get("id", i)),
                    image=ex.original_image,
                    instruction=ex.edit_prompt,
                    input_caption=ex.original_prompt,
                    output_caption=ex.edited_prompt,
                    target=ex.edited_image,
                    edit_type=ex.extra.get("edit_type"),
                )
            )
    if not items:
        raise EvaluationError(f"{source}: the test set is empty")
    return items if limit is None else items[:limit]


def item_seed(seed: int, index: int) -> int:
    """The seed of test item ``index``: the same for every method and setting, independent of batching."""
    digest = hashlib.sha256(f"ip2p-eval:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
