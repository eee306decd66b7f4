"""Edit-type weights of toy pair datasets, for ``ip2p train --sample-weights``."""

from __future__ import annotations

import pytest

from ip2p.cli import main
from ip2p.datasets import write_parquet_shard
from ip2p.toy.balance import UNREADABLE, edit_types, parse_shares, type_weights
from ip2p.train import read_sample_weights


def test_edit_types_are_read_from_the_instructions():
    assert edit_types(["make the circle green", "remove the star", "sing a song"]) == [
        "recolor",
        "remove",
        UNREADABLE,
    ]


def _shares(types, weights):
    total = sum(weights)
    return {t: sum(w for u, w in zip(types, weights, strict=True) if u == t) / total for t in set(types)}


def test_power_one_draws_every_type_equally_and_unreadable_pairs_keep_their_share():
    types = ["style"] * 6 + ["remove"] * 2 + ["recolor"] + [UNREADABLE]
    weights = type_weights(types, 1.0)
    shares = _shares(types, weights)
    for t in ("style", "remove", "recolor"):
        assert shares[t] == pytest.approx(0.9 / 3)
    assert shares[UNREADABLE] == pytest.approx(0.1)
    assert weights[:6] == [pytest.approx(weights[0])] * 6  # the same weight within a type
    assert _shares(types, type_weights(types, 0.0)) == pytest.approx(_shares(types, [1.0] * len(types)))
    half = _shares(types, type_weights(types, 0.5))
    assert half["style"] / half["recolor"] == pytest.approx(6**0.5)  # tempered: sqrt of the count ratio
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="power must be a number of at least 0"):
            type_weights(types, bad)
    steep = _shares(types, type_weights(types, 1e6))  # no overflow: the rarest type takes the readable draws
    assert steep["recolor"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="no instruction the toy grammar can read"):
        type_weights([UNREADABLE], 1.0)


def test_type_weights_command_writes_one_weight_per_pair_in_the_data_order(tmp_path, capsys):
    from ip2p.toy.captions import parse_caption
    from ip2p.toy.render import render
    from ip2p.toy.seeds import seed_triplets

    triplets = seed_triplets(30, seed=1)
    image = render(parse_caption(triplets[0]["input"]), size=32)
    rows = [
        {
            "original_image": image,
            "edit_prompt": t["edit"],
            "edited_image": image,
            "original_prompt": t["input"],
        }
        for t in triplets
    ]
    rows[0]["edit_prompt"] = "do something unheard of"
    write_parquet_shard(rows, tmp_path / "data" / "shard-00000.parquet")
    out = tmp_path / "w" / "weights.txt"
    assert main(["toy", "type-weights", str(tmp_path / "data"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "weights written to" in printed and UNREADABLE in printed
    weights = read_sample_weights(out, len(rows))  # what `ip2p train --sample-weights` reads
    types = edit_types(r["edit_prompt"] for r in rows)
    assert weights.tolist() == pytest.approx(type_weights(types, 1.0))
    assert weights[0] == 1.0
    assert main(["toy", "type-weights", str(tmp_path / "none"), "-o", str(out)]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["toy", "type-weights", str(tmp_path / "data"), "-o", str(out), "--power", "-2"]) == 1
    assert "power must be a number of at least 0" in capsys.readouterr().err
    assert read_sample_weights(out, len(rows)).tolist() == pytest.approx(weights.tolist())  # left as it was
    assert main(["toy", "type-weights", str(tmp_path / "data"), "-o", str(out), "--shares", "add=1"]) == 1
    assert "shares must name every edit type" in capsys.readouterr().err
    assert main(["toy", "type-weights", str(tmp_path / "data"), "-o", str(tmp_path / "w")]) == 1  # a folder
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["weights.txt"]  # no temporary file left


def test_shares_set_each_types_share_of_the_readable_draws():
    types = ["style"] * 6 + ["remove"] * 2 + ["recolor"] + [UNREADABLE]
    shares = parse_shares("style=2, remove=1,recolor=1")
    got = _shares(types, type_weights(types, shares=shares))
    assert got["style"] == pytest.approx(0.9 * 0.5) and got["remove"] == pytest.approx(0.9 * 0.25)
    assert got[UNREADABLE] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="missing: style; not in the data: add"):
        type_weights(types, shares={"remove": 1, "recolor": 1, "add": 1})
    for bad in ("style", "style=0", "style=x", "=1", ""):
        with pytest.raises(ValueError, match="shares: "):
            parse_shares(bad)
