"""Exact rendered pairs for toy triplets: the ablation of synthesized data (issue: training in the toy world).

For each (caption, instruction, edited caption) triplet, the caption is parsed back to its scene, the instruction is
applied to it exactly, and both scenes are rendered: the pair the synthesis stage (a text-to-image model, Prompt-to-
Prompt and CLIP filtering) approximates. Training on these instead of the synthesized pairs of the same triplets
measures how much the synthesized data costs. Triplets whose caption or instruction the toy grammar cannot read, or
whose instruction is impossible for the scene, are skipped and counted.

Output: Parquet shards in the official schema (``data/shard-00000.parquet``, written atomically; shards already
there are kept, so a rerun resumes) and ``manifest.json`` with the counts.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from ip2p.datasets import write_parquet_shard
from ip2p.fileio import write_json_atomic
from ip2p.jsonl import iter_jsonl_objects


def exact_pairs(
    triplets: str | os.PathLike,
    output: str | os.PathLike,
    shard_size: int = 500,
    resolution: int = 64,
    progress: bool = True,
) -> dict:
    """Render the exact pairs of the triplets in ``triplets`` (JSONL of input/edit/output) under ``output``."""
    from tqdm.auto import tqdm

    from .captions import caption, parse_caption
    from .edits import apply_instruction, edit_type_of
    from .render import render

    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    rows = [row for _, row in iter_jsonl_objects(triplets)]
    if not rows:
        raise ValueError(f"{triplets}: no triplets")
    out = Path(output)
    counts: Counter[str] = Counter()
    shards = range(0, len(rows), shard_size)
    for s, start in enumerate(tqdm(shards, desc="exact pairs", unit="shard", disable=not progress or None)):
        path = out / "data" / f"shard-{s:05d}.parquet"
        chunk = rows[start : start + shard_size]
        records = []
        for i, row in enumerate(chunk, start):
            text, instruction = row.get("input", row.get("caption")), row.get("edit")
            try:
                before = parse_caption(str(text))
                after = apply_instruction(before, str(instruction))
            except (ValueError, KeyError, TypeError):
                counts["skipped"] += 1
                continue
            counts[f"kept/{edit_type_of(str(instruction))}"] += 1
            records.append(
                {
                    "original_prompt": str(text),
                    "original_image": render(before, size=resolution),
                    "edit_prompt": str(instruction),
                    "edited_prompt": caption(after),
                    "edited_image": render(after, size=resolution),
                    "item": i,
                }
            )
        counts["kept"] += len(records)
        if records and not path.is_file():
            write_parquet_shard(records, path)
    manifest = {
        "triplets": str(triplets),
        "total": len(rows),
        "resolution": resolution,
        **dict(sorted(counts.items())),
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
