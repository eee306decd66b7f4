"""Seed triplets (input caption, edit instruction, edited caption).

These play the role of InstructPix2Pix's ~700 human-written examples: the
toy language model is fine-tuned on them to write more triplets. Each
triplet's two captions are drawn with the same phrasing plan, so the edited
caption reads like a minimal rewrite of the input caption, as a human would
write it.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path

from ip2p.fileio import atomic_write

from .captions import caption_with_plan, random_plan
from .edits import EDIT_TYPES, random_edit
from .scene import MAX_SHAPES, MIN_SHAPES, random_scene

TRIPLET_KEYS = ("input", "edit", "output")


def _scene_for(edit_type: str, rng: random.Random):
    # "add" needs room for one more shape and "remove" must leave one, so
    # draw the shape count from the range where the edit is possible.
    low = MIN_SHAPES + 1 if edit_type == "remove" else MIN_SHAPES
    high = MAX_SHAPES - 1 if edit_type == "add" else MAX_SHAPES
    return random_scene(rng, rng.randint(low, high))


def seed_triplets(n: int = 700, seed: int = 0) -> list[dict[str, str]]:
    """``n`` triplets, edit types balanced (round robin), deterministic in ``seed``."""
    rng = random.Random(seed)
    triplets = []
    for i in range(n):
        edit_type = EDIT_TYPES[i % len(EDIT_TYPES)]
        edit = random_edit(_scene_for(edit_type, rng), rng, edit_type)
        plan = random_plan(rng)
        triplets.append(
            {
                "input": caption_with_plan(edit.before, plan),
                "edit": edit.instruction,
                "output": caption_with_plan(edit.after, plan),
            }
        )
    # Shuffle so that the list is not periodic in edit type.
    rng.shuffle(triplets)
    return triplets


def write_jsonl(path: str | os.PathLike[str], triplets: Iterable[dict[str, str]]) -> Path:
    """Write one JSON object per line, atomically and synced to disk (``ip2p.fileio.atomic_write``)."""
    path = Path(path)
    with atomic_write(path, fsync=True) as f:
        for t in triplets:
            f.write(json.dumps({k: t[k] for k in TRIPLET_KEYS}, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read triplets written by :func:`write_jsonl`."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
