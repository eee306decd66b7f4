"""`ip2p toy judge-pairs`: the oracle's verdict on a pair dataset, per edit type."""

from __future__ import annotations

import json

from ip2p.cli import main
from ip2p.datasets import write_parquet_shard
from ip2p.toy.captions import parse_caption
from ip2p.toy.edits import apply_instruction, edit_type_of
from ip2p.toy.judge_pairs import judge_pairs
from ip2p.toy.render import render
from ip2p.toy.seeds import seed_triplets


def _pairs(rows, tamper=lambda i, before, after: (before, after)):
    out = []
    for i, row in enumerate(rows):
        before = parse_caption(row["input"])
        after = apply_instruction(before, row["edit"])
        a, b = tamper(i, render(before), render(after))
        out.append(
            {
                "original_prompt": row["input"],
                "original_image": a,
                "edit_prompt": row["edit"],
                "edited_prompt": row["output"],
                "edited_image": b,
            }
        )
    return out


def test_exact_pairs_are_faithful_and_broken_pairs_are_caught(tmp_path, capsys):
    rows = seed_triplets(12, seed=5)
    write_parquet_shard(_pairs(rows), tmp_path / "exact" / "shard-00000.parquet")
    report = judge_pairs(tmp_path / "exact", progress=False)
    assert report["overall"] == {
        "n": 12,
        "input_correct": 1.0,
        "edit_correct": 1.0,
        "preserved_vs_input": 1.0,
        "faithful": 1.0,
    }
    assert sum(r["n"] for r in report["by_type"].values()) == 12
    assert set(report["by_type"]) == {edit_type_of(r["edit"]) for r in rows}

    # the edited image replaced by the input: no edit happened; the input replaced by the target: wrong input
    def tamper(i, before, after):
        return (before, before) if i % 2 == 0 else (after, after)

    unreadable = {
        "original_prompt": "a purple elephant",
        "original_image": render(parse_caption(rows[0]["input"])),
        "edit_prompt": "make it fly",
        "edited_prompt": "x",
        "edited_image": render(parse_caption(rows[0]["input"])),
    }
    write_parquet_shard([*_pairs(rows, tamper), unreadable], tmp_path / "broken" / "shard-00000.parquet")
    report = judge_pairs(tmp_path / "broken", progress=False)
    assert report["unjudged"] == 1 and report["overall"]["n"] == 12
    assert report["overall"]["faithful"] == 0.0
    assert report["overall"]["edit_correct"] == 0.5  # the odd items show the target
    assert report["overall"]["input_correct"] == 0.5  # the even items show the input

    assert main(["toy", "judge-pairs", str(tmp_path / "exact"), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["faithful"] == 1.0
    assert main(["toy", "judge-pairs", str(tmp_path / "missing"), "--no-progress"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
