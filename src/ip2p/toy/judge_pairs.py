"""How faithful an image-pair dataset is, judged by the toy world's oracle.

Synthesized pairs (paper 3.1.2) approximate what the triplet says: the input image should show the input caption,
the edited image should show the edit applied and everything else unchanged. In the toy world every pair can be
checked exactly: the caption is parsed to its scene, the instruction applied to it, and the oracle reads both images
(``oracle.judge_edit``). Exact rendered pairs score 100% by construction; synthesized ones show what the generator
and the CLIP filter let through, per edit type.

    >>> report = judge_pairs("runs/toy-pairs")          # doctest: +SKIP
    >>> report["overall"]["faithful"]                   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence

from ip2p.datasets import open_edit_dataset

CHECKS = ("input_correct", "edit_correct", "preserved_vs_input", "faithful")


def judge_pairs(source: str | os.PathLike | Sequence[str], progress: bool = True) -> dict:
    """Oracle verdicts over a pair dataset (our Parquet or the official schema, or the original folders).

    Returns ``{"overall": {...}, "by_type": {type: {...}}, "unjudged": n}`` where each entry holds ``n`` and the
    fraction of pairs passing each check: ``input_correct`` (the input image shows the input caption),
    ``edit_correct`` (the edited image shows what the instruction changes), ``preserved_vs_input`` (everything else
    reads the same in both images) and ``faithful`` (all three). Pairs whose caption or instruction the toy
    grammar cannot read are counted as ``unjudged``.
    """
    from tqdm.auto import tqdm

    from .captions import parse_caption
    from .edits import Edit, apply_instruction, edit_type_of
    from .oracle import judge_edit

    data = open_edit_dataset(source)
    totals: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(("n", *CHECKS), 0))
    unjudged = 0
    for example in tqdm(data, desc="judging pairs", unit="pair", disable=not progress or None):
        try:
            before = parse_caption(str(example.original_prompt))
            after = apply_instruction(before, example.edit_prompt)
            kind = edit_type_of(example.edit_prompt)
        except (ValueError, KeyError, TypeError):
            unjudged += 1
            continue
        if example.edited_image is None:
            unjudged += 1
            continue
        verdict = judge_edit(
            example.original_image, example.edited_image, Edit(kind, example.edit_prompt, before, after)
        )
        verdict["faithful"] = (
            verdict["input_correct"] and verdict["edit_correct"] and verdict["preserved_vs_input"]
        )
        for key in (kind, "overall"):
            totals[key]["n"] += 1
            for check in CHECKS:
                totals[key][check] += bool(verdict[check])

    def rates(counts: dict[str, float]) -> dict[str, float]:
        n = counts["n"]
        return {"n": int(n), **{c: counts[c] / n for c in CHECKS}}

    overall = totals.pop("overall", None)
    if overall is None:
        raise ValueError(f"{source}: no pair could be judged ({unjudged} unreadable)")
    return {
        "overall": rates(overall),
        "by_type": {kind: rates(totals[kind]) for kind in sorted(totals)},
        "unjudged": unjudged,
    }


def format_report(report: dict) -> str:
    """A table: one line per edit type and one overall."""
    lines = [f"{'edit type':14} {'n':>5} " + " ".join(f"{c:>19}" for c in CHECKS)]
    for name, row in [*report["by_type"].items(), ("overall", report["overall"])]:
        lines.append(f"{name:14} {row['n']:5d} " + " ".join(f"{100 * row[c]:18.1f}%" for c in CHECKS))
    if report["unjudged"]:
        lines.append(f"({report['unjudged']} pairs the toy grammar cannot read were not judged)")
    return "\n".join(lines)
