"""Success-rate intervals and paired comparisons (ip2p.evaluate.stats), checked against independent numbers."""

import math
import random

import pytest

from ip2p.evaluate.stats import binomial_two_sided, is_binary, paired_comparison, wilson_interval


def test_wilson_interval_matches_the_textbook_values():
    # Newcombe (1998), table I: 81/263 -> 0.2553 to 0.3662 (Wilson score, no continuity correction)
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=5e-4) and high == pytest.approx(0.3662, abs=5e-4)
    # 0 of 10: the interval starts at 0 and is not degenerate (the Wald interval would be [0, 0])
    low, high = wilson_interval(0, 10)
    assert low == 0 and high == pytest.approx(0.2775, abs=5e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_wilson_interval_covers_about_95_percent():
    rng = random.Random(0)
    p, n, trials = 0.7, 300, 2000
    covered = 0
    for _ in range(trials):
        k = sum(rng.random() < p for _ in range(n))
        low, high = wilson_interval(k, n)
        covered += low <= p <= high
    assert 0.93 <= covered / trials <= 0.97


def test_wilson_interval_refuses_impossible_counts():
    with pytest.raises(ValueError, match="at least one item"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="must lie in"):
        wilson_interval(5, 4)


def test_binomial_two_sided_by_enumeration():
    # 2 of 10 heads: P(X <= 2) = 56/1024, doubled
    assert binomial_two_sided(2, 10) == pytest.approx(2 * 56 / 1024)
    assert binomial_two_sided(8, 10) == binomial_two_sided(2, 10)
    assert binomial_two_sided(5, 10) == 1.0
    assert binomial_two_sided(0, 0) == 1.0


def test_is_binary():
    assert is_binary([0, 1, 1.0, 0.0])
    assert not is_binary([0, 0.5])
    assert not is_binary([])


def _records(values):
    return [{"item": f"i{k}", "oracle_success": v} for k, v in enumerate(values)]


def test_paired_comparison_counts_flips_and_tests_them():
    a = _records([1] * 50 + [0] * 30 + [1] * 5 + [0] * 15)
    b = _records([1] * 50 + [0] * 30 + [0] * 5 + [1] * 15)
    result = paired_comparison(a, b, "oracle_success")
    assert (result.n, result.a_successes, result.b_successes) == (100, 55, 65)
    assert (result.a_only, result.b_only) == (5, 15)
    assert result.b_only_items[0] == "i85"
    assert result.difference == pytest.approx(0.10)
    # McNemar exact: 5 vs 15 flips, P = 2 * P(X <= 5 | n=20, 1/2)
    expected = 2 * sum(math.comb(20, i) for i in range(6)) / 2**20
    assert result.p_value == pytest.approx(expected)
    assert result.significant
    low, high = result.difference_interval()
    se = math.sqrt(20 - 10**2 / 100) / 100
    assert (low, high) == pytest.approx((0.10 - 1.959964 * se, 0.10 + 1.959964 * se), abs=1e-6)
    text = result.describe("base", "new")
    assert "+10.0 points" in text and "significant" in text and "15 right only in new" in text


def test_paired_comparison_uses_only_shared_items_and_refuses_duplicates():
    a = _records([1, 0, 1])
    b = _records([1, 1])
    result = paired_comparison(a, b, "oracle_success")
    assert result.n == 2 and not result.significant
    with pytest.raises(ValueError, match="twice"):
        paired_comparison(a + a, b, "oracle_success")
    with pytest.raises(ValueError, match="share no item"):
        paired_comparison(a, [{"item": "other", "oracle_success": 1}], "oracle_success")
    with pytest.raises(ValueError, match="not 0 or 1"):
        paired_comparison([{"item": "i0", "oracle_success": 0.5}], b, "oracle_success")


def test_summary_gives_success_columns_their_interval():
    from ip2p.evaluate.methods import Method, setting_key
    from ip2p.evaluate.run import summarize
    from ip2p.registry import Metric

    metric = Metric(measure=lambda *a: [], columns=("hit", "score"), by_type=("hit",), headline="hit")
    method = Method("m", [{"s": 1.0}], edit=lambda *a: None)
    records = [
        {
            "method": "m",
            "setting": setting_key({"s": 1.0}),
            "item": f"i{k}",
            "edit_type": "recolor" if k < 6 else "move",
            "hit": int(k % 3 != 0),  # 6 of 10; 4 of the 6 recolourings
            "score": k / 10,
        }
        for k in range(10)
    ]
    (row,) = summarize(records, [method], {"m": metric})
    assert row["hit"] == pytest.approx(0.6)
    assert (row["hit_ci_low"], row["hit_ci_high"]) == pytest.approx(wilson_interval(6, 10))
    assert (row["hit_ci_low/recolor"], row["hit_ci_high/recolor"]) == pytest.approx(wilson_interval(4, 6))
    assert "score_ci_low" not in row  # not a success column
