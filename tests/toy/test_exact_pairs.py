"""`ip2p toy exact-pairs`: exact rendered pairs of toy triplets, unreadable ones skipped, readable by the trainer."""

from __future__ import annotations

import json

import numpy as np

from ip2p.cli import main
from ip2p.datasets import open_edit_dataset
from ip2p.toy.captions import parse_caption
from ip2p.toy.edits import apply_instruction
from ip2p.toy.render import render
from ip2p.toy.seeds import seed_triplets


def test_exact_pairs_render_the_applied_instruction(tmp_path, capsys):
    rows = seed_triplets(5, seed=3)
    rows.append({"input": "a purple elephant", "edit": "make it fly", "output": "a flying elephant"})
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["toy", "exact-pairs", str(path), "-o", str(tmp_path / "out"), "--shard-size", "4"]) == 0
    assert "5 of 6 triplets rendered (1 skipped)" in capsys.readouterr().out
    data = open_edit_dataset(tmp_path / "out")
    assert len(data) == 5
    for i, row in enumerate(rows[:5]):
        ex = data[i]
        after = apply_instruction(parse_caption(row["input"]), row["edit"])
        assert ex.edit_prompt == row["edit"]
        assert np.array_equal(np.asarray(ex.edited_image), np.asarray(render(after)))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["kept"] == 5 and manifest["skipped"] == 1
    assert main(["toy", "exact-pairs", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x")]) == 1
