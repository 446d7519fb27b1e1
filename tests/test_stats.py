"""Honest numbers (rlhf/stats.py): the Wilson interval against hand-computed values, proportions with
ties counting half, win rates, and the reward model's "did it learn" verdict."""

from __future__ import annotations

import pytest

from rlhf.stats import MIN_DECISIVE_PAIRS, fmt_proportion, learning_verdict, proportion, wilson_interval, win_rate


def rounded(interval: tuple[float, float]) -> tuple[float, float]:
    return round(interval[0], 4), round(interval[1], 4)


@pytest.mark.parametrize(
    "k, n, expected",
    [
        # p = 0.8, z = 1.96: centre (0.8 + 1.9208/10) / 1.38415 = 0.71674, half 1.41600 x 0.16001 = 0.22658.
        (8, 10, (0.4902, 0.9433)),
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),  # the mirror image of k = 0
        (50, 100, (0.4038, 0.5962)),
        (2, 4, (0.15, 0.85)),  # centre 0.5, half 0.99979 x 0.35003 = 0.34996
    ],
)
def test_wilson_interval_hand_computed(k: int, n: int, expected: tuple[float, float]) -> None:
    assert rounded(wilson_interval(k, n)) == expected


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing measured: anything is possible
    for bad in (-1, 11):
        with pytest.raises(ValueError, match="k must lie in"):
            wilson_interval(bad, 10)


def test_proportion_and_its_format() -> None:
    p = proportion(8, 10)
    assert p["value"] == 0.8 and p["n"] == 10 and rounded((p["low"], p["high"])) == (0.4902, 0.9433)
    assert fmt_proportion(p) == "0.80 [0.49, 0.94] (n=10)"
    assert fmt_proportion(p, digits=3) == "0.800 [0.490, 0.943] (n=10)"
    assert proportion(0, 0) == {"value": None, "n": 0, "low": 0.0, "high": 1.0}
    assert fmt_proportion(proportion(0, 0)) == fmt_proportion(None) == "n/a (n=0)"


def test_fractional_k_from_ties() -> None:
    # 2.5 of 5 (two wins, one tie): p = 0.5, centre 0.5, half 1.10839 x 0.29735 = 0.32958.
    p = proportion(2.5, 5)
    assert p["value"] == 0.5 and rounded((p["low"], p["high"])) == (0.1704, 0.8296)


def test_win_rate_counts_ties_half() -> None:
    w = win_rate([1.0, 1.0, 0.5, 0.0, 0.0])
    assert (w["value"], w["n"], w["wins"], w["ties"], w["losses"]) == (0.5, 5, 2, 1, 2)
    assert rounded((w["low"], w["high"])) == (0.1704, 0.8296)
    w = win_rate([1.0, 0.5, 0.5, 0.5])
    assert (w["value"], w["wins"], w["ties"], w["losses"]) == (0.625, 1, 3, 0)
    all_ties = win_rate([0.5] * 8)  # a policy against itself
    assert all_ties["value"] == 0.5 and all_ties["ties"] == 8 and all_ties["wins"] == all_ties["losses"] == 0
    empty = win_rate([])
    assert empty["value"] is None and empty["n"] == 0 and (empty["low"], empty["high"]) == (0.0, 1.0)


def test_learning_verdict_too_small() -> None:
    assert MIN_DECISIVE_PAIRS == 30
    v = learning_verdict(0.9, 29, 0.5)
    assert v["status"] == "too_small"
    assert "29 pairs (need >= 30)" in v["message"] and "--test-fraction" in v["message"]
    assert learning_verdict(None, 100, 0.5)["status"] == "too_small"
    assert learning_verdict(0.9, 30, 0.5)["status"] == "learned"  # 30 pairs is enough to tell


def test_learning_verdict_learned_nothing_near_chance() -> None:
    # 0.55 on 100 pairs: Wilson lower bound 0.452, not above chance.
    v = learning_verdict(0.55, 100, 0.5)
    assert v["status"] == "learned_nothing"
    assert "LEARNED NOTHING" in v["message"] and "0.55 [0.45, 0.64] (n=100)" in v["message"]


def test_learning_verdict_learned() -> None:
    # 0.80 on 100 pairs: lower bound 0.711 > 0.5.
    v = learning_verdict(0.80, 100, 0.5)
    assert v["status"] == "learned"
    assert v["message"] == "held-out accuracy 0.80 [0.71, 0.87] (n=100) is above 0.50"
    assert learning_verdict(0.80, 100, None)["status"] == "learned"  # no untrained accuracy: chance is the bar


def test_learning_verdict_measures_against_the_untrained_model() -> None:
    # 0.70 on 100 pairs: lower bound 0.604 clears chance but not an untrained model already at 0.65.
    assert learning_verdict(0.70, 100, 0.5)["status"] == "learned"
    v = learning_verdict(0.70, 100, 0.65)
    assert v["status"] == "learned_nothing" and "untrained accuracy 0.65" in v["message"]
