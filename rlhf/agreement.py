"""Inter-annotator agreement and per-annotator statistics over the store's submitted labels.

Reads flat label rows (`Store.label_rows()`: comparison, annotator, choice, shown side, time,
category); returns plain numbers and dataclasses that the UI draws and reports print. Choices are
nominal categories (A / B / tie / both_bad, in stored A/B terms, not screen sides).

Measures (all "None" when undefined, e.g. fewer than two labels per item or no variation at all):
  - raw pairwise agreement: the share of agreeing pairs among all pairs of labels on the same item;
  - Cohen's kappa for each pair of annotators, on the items both labelled;
  - Fleiss' kappa across all annotators (items may have different numbers of labels: each item's
    agreement is averaged, which is Fleiss' 1971 formula when every item has the same number);
  - Krippendorff's alpha (nominal), which also allows missing labels and any number of annotators.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

# item -> {annotator -> category}
Ratings = Mapping[Hashable, Mapping[Hashable, Hashable]]


def pairwise_agreement(items: Ratings) -> float | None:
    """Agreeing pairs / all pairs, over items with at least two labels."""
    agree = total = 0
    for ratings in items.values():
        for a, b in combinations(list(ratings.values()), 2):
            total += 1
            agree += a == b
    return agree / total if total else None


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two annotators' labels on the same items (a[i] and b[i] label item i).

    kappa = (p_o - p_e) / (1 - p_e), p_e from each annotator's own category frequencies."""
    if len(a) != len(b):
        raise ValueError(f"`a` and `b` must label the same items; got {len(a)} and {len(b)} labels")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[c] * cb[c] for c in ca) / (n * n)
    if p_e == 1:
        return None  # both annotators used one and the same category throughout: kappa is 0/0
    return (p_o - p_e) / (1 - p_e)


@dataclass
class PairAgreement:
    annotator_a: Hashable
    annotator_b: Hashable
    n_items: int  # items both labelled
    agreement: float | None
    kappa: float | None


def cohen_kappa_pairs(items: Ratings) -> list[PairAgreement]:
    """Cohen's kappa (and raw agreement) for every pair of annotators with shared items."""
    shared: dict[tuple[Hashable, Hashable], list[tuple[Hashable, Hashable]]] = defaultdict(list)
    for ratings in items.values():
        for r1, r2 in combinations(sorted(ratings, key=str), 2):
            shared[(r1, r2)].append((ratings[r1], ratings[r2]))
    out = []
    for (r1, r2), pairs in sorted(shared.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        a, b = [x for x, _ in pairs], [y for _, y in pairs]
        out.append(PairAgreement(r1, r2, len(pairs), sum(x == y for x, y in pairs) / len(pairs), cohen_kappa(a, b)))
    return out


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa from a count table: table[i][j] = how many annotators put item i in category j.

    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)) is item i's agreement; P_bar their mean;
    p_j = sum_i n_ij / sum_i n_i; P_e = sum_j p_j^2; kappa = (P_bar - P_e) / (1 - P_e).
    Items with fewer than two labels carry no agreement and are left out."""
    rows = [list(r) for r in table if sum(r) >= 2]
    if not rows:
        return None
    p_items = [(sum(x * x for x in r) - sum(r)) / (sum(r) * (sum(r) - 1)) for r in rows]
    p_bar = sum(p_items) / len(rows)
    n_total = sum(sum(r) for r in rows)
    p_e = sum((sum(r[j] for r in rows) / n_total) ** 2 for j in range(len(rows[0])))
    if p_e == 1:
        return None
    return (p_bar - p_e) / (1 - p_e)


def _count_table(items: Ratings) -> list[list[int]]:
    cats = sorted({c for ratings in items.values() for c in ratings.values()}, key=str)
    index = {c: j for j, c in enumerate(cats)}
    table = []
    for ratings in items.values():
        row = [0] * len(cats)
        for c in ratings.values():
            row[index[c]] += 1
        table.append(row)
    return table


def fleiss_kappa_items(items: Ratings) -> float | None:
    return fleiss_kappa(_count_table(items))


def krippendorff_alpha_nominal(items: Ratings) -> float | None:
    """Krippendorff's alpha for nominal data, any number of annotators, missing labels allowed.

    From the coincidence matrix o_ck (each unit with m_u >= 2 values adds 1/(m_u - 1) for every
    ordered pair of its values): alpha = 1 - (n - 1) * sum_{c!=k} o_ck / sum_{c!=k} n_c n_k."""
    o: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for ratings in items.values():
        values = list(ratings.values())
        m = len(values)
        if m < 2:
            continue
        for i, j in ((i, j) for i in range(m) for j in range(m) if i != j):
            o[(values[i], values[j])] += 1 / (m - 1)
    n_c: dict[Hashable, float] = defaultdict(float)
    for (c, _k), v in o.items():
        n_c[c] += v
    n = sum(n_c.values())
    observed = sum(v for (c, k), v in o.items() if c != k)
    expected = n * n - sum(x * x for x in n_c.values())  # sum over c != k of n_c * n_k
    if n == 0 or expected == 0:
        return None
    return 1 - (n - 1) * observed / expected


# -- reports over store rows -------------------------------------------------------------------


@dataclass
class AgreementReport:
    """Agreement on overlapped items (two or more labels)."""

    n_items: int
    n_labels: int
    n_annotators: int
    pairwise: float | None
    fleiss: float | None
    alpha: float | None
    pairs: list[PairAgreement] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.n_items,
            "labels": self.n_labels,
            "annotators": self.n_annotators,
            "pairwise_agreement": self.pairwise,
            "fleiss_kappa": self.fleiss,
            "krippendorff_alpha": self.alpha,
        }


def ratings_from_rows(rows: Iterable[Any]) -> dict[Hashable, dict[Hashable, str]]:
    """{comparison_id: {annotator: choice}} from `Store.label_rows()`."""
    items: dict[Hashable, dict[Hashable, str]] = defaultdict(dict)
    for r in rows:
        items[r.comparison_id][r.annotator] = r.choice
    return dict(items)


def agreement_report(rows: Iterable[Any]) -> AgreementReport:
    items = {k: v for k, v in ratings_from_rows(rows).items() if len(v) >= 2}
    return AgreementReport(
        n_items=len(items),
        n_labels=sum(len(v) for v in items.values()),
        n_annotators=len({a for v in items.values() for a in v}),
        pairwise=pairwise_agreement(items),
        fleiss=fleiss_kappa_items(items),
        alpha=krippendorff_alpha_nominal(items),
        pairs=cohen_kappa_pairs(items),
    )


def agreement_by_category(rows: Iterable[Any]) -> dict[str, AgreementReport]:
    """One report per prompt category ("(none)" for prompts without one)."""
    by_cat: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        by_cat[r.category or "(none)"].append(r)
    return {cat: agreement_report(rs) for cat, rs in sorted(by_cat.items())}


@dataclass
class AnnotatorStats:
    annotator: Hashable
    labels: int
    median_time_s: float | None
    majority_items: int  # items where the other annotators have a strict plurality choice
    majority_agreement: float | None  # share of those where this annotator chose the same
    tie_rate: float | None
    both_bad_rate: float | None
    ab_choices: int  # A/B choices with a known screen side
    left_rate: float | None  # share of those that picked the left side (0.5 = no position bias)
    left_bias_p: float | None  # two-sided exact binomial p-value of left_rate against 0.5


def binomial_two_sided_p(k: int, n: int) -> float | None:
    """Exact two-sided p-value of k successes in n fair coin flips (sum of outcomes as unlikely)."""
    if n == 0:
        return None
    probs = [math.comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(p for p in probs if p <= probs[k] * (1 + 1e-9)))


def annotator_stats(rows: Sequence[Any]) -> list[AnnotatorStats]:
    """Per-annotator: labels, median time, agreement with the others' majority, tie rate, side bias."""
    rows = list(rows)
    items = ratings_from_rows(rows)
    by_annotator: dict[Hashable, list[Any]] = defaultdict(list)
    for r in rows:
        by_annotator[r.annotator].append(r)
    out = []
    for name, rs in sorted(by_annotator.items(), key=lambda kv: str(kv[0])):
        times = [r.time_spent_s for r in rs if r.time_spent_s is not None]
        agree = n_major = 0
        for r in rs:
            others = Counter(c for a, c in items[r.comparison_id].items() if a != name)
            top = others.most_common(2)
            if not top or (len(top) == 2 and top[0][1] == top[1][1]):
                continue  # nobody else labelled it, or the others are split evenly
            n_major += 1
            agree += r.choice == top[0][0]
        sided = [r for r in rs if r.choice in ("A", "B") and r.shown_left in ("A", "B")]
        left = sum(r.choice == r.shown_left for r in sided)
        n = len(rs)
        out.append(
            AnnotatorStats(
                annotator=name,
                labels=n,
                median_time_s=statistics.median(times) if times else None,
                majority_items=n_major,
                majority_agreement=agree / n_major if n_major else None,
                tie_rate=sum(r.choice == "tie" for r in rs) / n if n else None,
                both_bad_rate=sum(r.choice == "both_bad" for r in rs) / n if n else None,
                ab_choices=len(sided),
                left_rate=left / len(sided) if sided else None,
                left_bias_p=binomial_two_sided_p(left, len(sided)),
            )
        )
    return out
