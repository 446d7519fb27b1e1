"""Agreement measures against published worked examples and hand computations."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rlhf.agreement import (
    agreement_by_category,
    agreement_report,
    annotator_stats,
    binomial_two_sided_p,
    cohen_kappa,
    cohen_kappa_pairs,
    fleiss_kappa,
    fleiss_kappa_items,
    krippendorff_alpha_nominal,
    pairwise_agreement,
)


def test_fleiss_kappa_matches_fleiss_1971_worked_example():
    # Wikipedia's "Fleiss' kappa" worked example: 10 subjects, 14 raters, 5 categories.
    # P_bar = 0.378, P_e = 0.213, kappa = (0.378 - 0.213) / (1 - 0.213) = 0.210.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-5)


def test_cohen_kappa_matches_textbook_example():
    # Wikipedia's "Cohen's kappa" example: 50 proposals; yes/yes 20, yes/no 5, no/yes 10, no/no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_krippendorff_alpha_nominal_matches_krippendorff_2011_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers,
    # 12 units, nominal values 1-5 with missing data; published alpha (nominal) = 0.743.
    # (n = 40 pairable values; the paper's coincidence matrix gives 1 - 39 * 10/3 / 506 = 0.743.)
    obs = {
        "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    }
    items = {u: {o: v[u] for o, v in obs.items() if v[u] is not None} for u in range(12)}
    assert krippendorff_alpha_nominal(items) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_binary_two_observers_example():
    # Krippendorff (2011), section A: 2 observers, 10 units, binary; published alpha = 0.095.
    a = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    b = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    items = {i: {"A": a[i], "B": b[i]} for i in range(10)}
    assert krippendorff_alpha_nominal(items) == pytest.approx(0.095, abs=5e-4)


def test_pairwise_agreement_hand_computed():
    # item 1: A,A,B -> pairs (A,A) agree, (A,B), (A,B) -> 1 of 3; item 2: tie,tie -> 1 of 1;
    # item 3: one label, no pairs. Total 2 of 4 = 0.5.
    items = {1: {"x": "A", "y": "A", "z": "B"}, 2: {"x": "tie", "y": "tie"}, 3: {"x": "A"}}
    assert pairwise_agreement(items) == 0.5
    assert pairwise_agreement({3: {"x": "A"}}) is None


def test_undefined_measures_are_none_not_nan():
    same = {i: {"x": "A", "y": "A"} for i in range(5)}
    assert cohen_kappa(["A"] * 5, ["A"] * 5) is None
    assert fleiss_kappa_items(same) is None
    assert krippendorff_alpha_nominal(same) is None
    assert pairwise_agreement(same) == 1.0
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa(["A"], [])


def test_perfect_disagreement_kappa_is_negative_one():
    # p_o = 0, p_e = 0.5 -> kappa = -1.
    assert cohen_kappa(["A", "B"] * 5, ["B", "A"] * 5) == pytest.approx(-1.0)


def test_fleiss_with_equal_counts_equals_generalised_items_form():
    items = {
        1: {"x": "A", "y": "A", "z": "B"},
        2: {"x": "B", "y": "B", "z": "B"},
        3: {"x": "A", "y": "tie", "z": "A"},
    }
    # Table (A, B, tie): [2,1,0], [0,3,0], [2,0,1]; P_i = 1/3, 1, 1/3 -> P_bar = 5/9;
    # p = (4/9, 4/9, 1/9) -> P_e = 33/81; kappa = (45/81 - 33/81) / (48/81) = 12/48 = 0.25.
    assert fleiss_kappa_items(items) == pytest.approx(0.25)


def test_cohen_pairs_only_on_shared_items():
    items = {1: {"x": "A", "y": "A"}, 2: {"x": "B", "y": "A"}, 3: {"y": "B", "z": "B"}}
    pairs = {(p.annotator_a, p.annotator_b): p for p in cohen_kappa_pairs(items)}
    assert set(pairs) == {("x", "y"), ("y", "z")}
    assert pairs[("x", "y")].n_items == 2 and pairs[("x", "y")].agreement == 0.5
    # x = [A, B], y = [A, A]: p_o = 0.5, p_e = (1*2 + 1*0)/4 = 0.5 -> kappa 0.
    assert pairs[("x", "y")].kappa == pytest.approx(0.0)


@dataclass
class Row:
    comparison_id: int
    annotator: str
    choice: str
    shown_left: str | None = None
    time_spent_s: float | None = None
    category: str | None = None


def test_reports_and_annotator_stats_from_rows():
    rows = [
        Row(1, "ann", "A", "A", 10.0, "advice"),
        Row(1, "bob", "A", "B", 20.0, "advice"),
        Row(1, "cy", "B", "A", 5.0, "advice"),
        Row(2, "ann", "tie", "B", 30.0, "code"),
        Row(2, "bob", "B", "B", 40.0, "code"),
        Row(3, "ann", "B", "A", 2.0, None),  # single label: not overlapped
    ]
    rep = agreement_report(rows)
    # item 1: (A,A) agree, (A,B), (A,B); item 2: (tie,B) -> 1 of 4.
    assert (rep.n_items, rep.n_labels, rep.n_annotators) == (2, 5, 3)
    assert rep.pairwise == 0.25
    cats = agreement_by_category(rows)
    assert set(cats) == {"advice", "code", "(none)"}
    assert cats["advice"].pairwise == pytest.approx(1 / 3)
    assert cats["(none)"].n_items == 0 and cats["(none)"].pairwise is None

    stats = {s.annotator: s for s in annotator_stats(rows)}
    ann = stats["ann"]
    assert ann.labels == 3 and ann.median_time_s == 10.0
    # item 1: others (bob A, cy B) split evenly -> skipped; item 2: others = bob B -> ann tie disagrees.
    assert (ann.majority_items, ann.majority_agreement) == (1, 0.0)
    assert ann.tie_rate == pytest.approx(1 / 3)
    # A/B choices with a side: item 1 (A shown left, chose A: left), item 3 (A left, chose B: right).
    assert (ann.ab_choices, ann.left_rate) == (2, 0.5)
    # cy: others on item 1 = ann A, bob A -> majority A; cy chose B.
    assert (stats["cy"].majority_items, stats["cy"].majority_agreement) == (1, 0.0)
    # bob: item 1 others (ann A, cy B) split -> skipped; item 2 others = ann tie, bob chose B.
    assert (stats["bob"].majority_items, stats["bob"].majority_agreement) == (1, 0.0)
    # bob saw B on the left both times and chose A then B: 1 of 2 to the left.
    assert (stats["bob"].ab_choices, stats["bob"].left_rate) == (2, 0.5)


def test_binomial_p_values():
    # 8 of 10 to the left: P(X >= 8) = (45 + 10 + 1) / 1024 = 0.0547; two-sided 0.109375.
    assert binomial_two_sided_p(8, 10) == pytest.approx(0.109375)
    assert binomial_two_sided_p(5, 10) == 1.0
    assert binomial_two_sided_p(0, 0) is None
