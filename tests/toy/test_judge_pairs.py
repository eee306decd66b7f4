"""`ip2p toy judge-pairs`: the oracle's verdict on a pair dataset, per edit type."""

from __future__ import annotations

import json

import pytest

from ip2p.cli import main
from ip2p.datasets import write_parquet_shard
from ip2p.pairs.clip_score import ClipThresholds
from ip2p.toy.captions import parse_caption
from ip2p.toy.edits import apply_instruction, edit_type_of
from ip2p.toy.judge_pairs import FilterSetting, filter_report, filter_settings, judge_pairs
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
        "triplet_valid": 1.0,
        "faithful_given_valid": 1.0,
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


def test_filter_report_replays_gen_pairs_filter_and_judges_what_it_keeps(tmp_path, capsys):
    """Two candidates a triplet: an exact pair, and one whose edited image is the input (no edit). The scores
    say which is which in different ways, so that each filter setting keeps a different, predictable set."""
    rows = seed_triplets(6, seed=3)
    good = _pairs(rows)
    bad = _pairs(rows, lambda i, before, after: (before, before))
    candidates = []
    for i, (g, b) in enumerate(zip(good, bad, strict=True)):
        # the exact pair: image-image 0.8; the unedited one: image-image 0.95 (an unchanged image is similar)
        # and the better directional score on even triplets, so that top 1 alone picks it there
        g_dir, b_dir = (0.3, 0.5) if i % 2 == 0 else (0.5, 0.3)
        candidates.append(
            {
                **g,
                "seed": 2 * i,
                "clip_sim_0": 0.3,
                "clip_sim_1": 0.3,
                "clip_sim_dir": g_dir,
                "clip_sim_image": 0.8,
            }
        )
        candidates.append(
            {
                **b,
                "seed": 2 * i + 1,
                "clip_sim_0": 0.3,
                "clip_sim_1": 0.3,
                "clip_sim_dir": b_dir,
                "clip_sim_image": 0.95,
            }
        )
    for c in candidates[:2]:  # stage 1 wrote a no-op caption for the first triplet: not a valid triplet
        c["edited_prompt"] = rows[0]["input"]
    # a triplet whose instruction the toy grammar cannot read: its candidates count as invalid triplets
    unreadable = {**good[1], "edit_prompt": "make it fly", "clip_sim_0": 0.3, "clip_sim_1": 0.3}
    candidates += [
        {**unreadable, "seed": 100, "clip_sim_dir": 0.6, "clip_sim_image": 0.9},
        {**unreadable, "seed": 101, "clip_sim_dir": 0.1, "clip_sim_image": 0.9},
    ]
    write_parquet_shard(candidates, tmp_path / "all" / "shard-00000.parquet")

    settings = [
        *filter_settings((0.75, 0.9)),
        FilterSetting("directional >= 0.4", ClipThresholds(0.2, 0.4, 0.0), None),
        FilterSetting("directional >= 0.55", ClipThresholds(0.2, 0.55, 0.0), None),
    ]
    report = filter_report(tmp_path / "all", settings, progress=False)
    by_name = {r["name"]: r for r in report["settings"]}
    assert report["triplets"] == 7 and report["unjudged"] == 2
    every = by_name["every candidate (no filter)"]
    assert every["pairs"] == 14 and every["unreadable"] == 2 and every["overall"]["n"] == 12
    assert every["overall"]["faithful"] == 0.5
    assert every["overall"]["triplet_valid"] == 10 / 12 and every["valid_of_all"] == 10 / 14
    top1 = by_name["top 1 by directional similarity, no thresholds"]
    # top 1 picks the exact pair in odd triplets, the unedited one in even ones
    assert top1["pairs"] == 7 and top1["unreadable"] == 1 and top1["overall"]["faithful"] == 0.5
    paper_top1 = report["settings"][3]
    assert paper_top1["top_k"] == 1 and paper_top1["pairs"] == 7 and paper_top1["unreadable"] == 1
    # both candidates pass 0.75, so top 1 goes by directional similarity again
    assert paper_top1["overall"]["faithful"] == 0.5
    strict = report["settings"][4]  # image-image >= 0.9: only the unedited candidates pass
    assert strict["pairs"] == 7 and strict["overall"]["faithful"] == 0.0
    by_dir = by_name["directional >= 0.4"]
    assert by_dir["pairs"] == 7 and by_dir["unreadable"] == 1 and by_dir["overall"]["faithful"] == 0.5
    only_unreadable = by_name["directional >= 0.55"]
    assert only_unreadable["pairs"] == 1 and only_unreadable["triplets_covered"] == 1 / 7
    assert only_unreadable["overall"]["n"] == 0 and only_unreadable["valid_of_all"] == 0.0
    # the valid triplets' share and stage 2's faithfulness on them: candidate 0 (exact, no-op caption) is out
    assert every["overall"]["faithful_given_valid"] == 5 / 10

    assert (
        main(
            [
                "toy",
                "judge-pairs",
                str(tmp_path / "all"),
                "--filters",
                "--image-image",
                "0.75,0.9",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("\n| ") == 1 + len(filter_settings((0.75, 0.9)))  # header and one line a setting
    # a dataset without the scores is refused with a one-line error
    write_parquet_shard(_pairs(rows), tmp_path / "plain" / "shard-00000.parquet")
    assert main(["toy", "judge-pairs", str(tmp_path / "plain"), "--filters", "--no-progress"]) == 1
    assert "clip_sim_0" in capsys.readouterr().err
    assert main(["toy", "judge-pairs", str(tmp_path / "all"), "--filters", "--image-image", "x"]) == 1


def test_filter_report_compares_in_float32_and_refuses_filtered_output(tmp_path, capsys):
    import numpy as np

    rows = seed_triplets(2, seed=4)
    # gen-pairs keeps a float32 score equal to the float32 threshold; in float64 it would fall just below 0.7
    at_threshold = float(np.float32(0.7))
    scores = {"clip_sim_0": 0.3, "clip_sim_1": 0.3, "clip_sim_dir": 0.3, "clip_sim_image": at_threshold}
    candidates = [{**pair, "seed": i, **scores} for i, pair in enumerate(_pairs(rows))]
    write_parquet_shard(candidates, tmp_path / "all" / "data" / "shard-00000.parquet")
    report = filter_report(tmp_path / "all" / "data", filter_settings((0.7,)), progress=False)
    assert report["settings"][3]["pairs"] == 2

    # the output of a filtering gen-pairs run (its config.json beside data/) is refused, not replayed
    config = {"num_candidates": 4, "top_k": 1, "clip_threshold": 0.2, "clip_dir_threshold": 0.2}
    identity = {"identity": {**config, "clip_img_threshold": 0.75}}  # as gen-pairs writes it
    (tmp_path / "all" / "config.json").write_text(json.dumps(identity))
    assert main(["toy", "judge-pairs", str(tmp_path / "all" / "data"), "--filters", "--no-progress"]) == 1
    assert "were filtered by gen-pairs" in capsys.readouterr().err


def test_pairs_without_edited_captions_have_unknown_validity(tmp_path, capsys):
    pairs = [
        {k: v for k, v in pair.items() if k != "edited_prompt"} for pair in _pairs(seed_triplets(3, seed=6))
    ]
    write_parquet_shard(pairs, tmp_path / "shard-00000.parquet")
    report = judge_pairs(tmp_path, progress=False)
    assert report["overall"]["faithful"] == 1.0 and report["overall"]["triplet_valid"] is None
    assert main(["toy", "judge-pairs", str(tmp_path), "--no-progress"]) == 0
    assert "n/a" in capsys.readouterr().out


def test_the_oracle_filter_keeps_the_faithful_pairs_whole(tmp_path):
    from ip2p.datasets import open_edit_dataset
    from ip2p.toy.judge_pairs import oracle_filter

    rows = seed_triplets(8, seed=7)

    def tamper(i, before, after):  # the odd pairs show no edit
        return (before, before) if i % 2 else (before, after)

    pairs = [{**pair, "seed": i} for i, pair in enumerate(_pairs(rows, tamper))]
    write_parquet_shard(pairs, tmp_path / "all" / "shard-00000.parquet")
    assert oracle_filter(tmp_path / "all", tmp_path / "kept", progress=False) == {"pairs": 8, "kept": 4}
    kept = open_edit_dataset(str(tmp_path / "kept"))
    assert [example.extra["seed"] for example in kept] == [0, 2, 4, 6]  # every column kept
    assert judge_pairs(tmp_path / "kept", progress=False)["overall"]["faithful"] == 1.0

    only_broken = [pair for i, pair in enumerate(pairs) if i % 2]
    write_parquet_shard(only_broken, tmp_path / "broken" / "shard-00000.parquet")
    with pytest.raises(ValueError, match="judges none of its 4 pairs faithful"):
        oracle_filter(tmp_path / "broken", tmp_path / "none", progress=False)
    assert not (tmp_path / "none").exists()  # nothing half-written
