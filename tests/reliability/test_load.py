"""Load: 20 annotators label 200 items concurrently through the store API (bounded version of
`benchmarks/load_labels.py`, which prints the throughput and latency figures)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from load_labels import check, report, run_load  # noqa: E402


@pytest.fixture
def store(rel_store):
    return rel_store


def test_twenty_annotators_lose_nothing_and_never_over_label(store):
    r = run_load(store, annotators=20, labels=1000, required=2)
    print("\n" + report(r))
    assert check(r) == []
    # Exact: 500 comparisons x 2 required labels, each stored once and acknowledged once. (1000 labels:
    # with 200 an over-labelling race of an optimistic lease variant went unnoticed; 1000 caught it.)
    assert r["labels_stored"] == r["labels_acknowledged"] == 1000
    assert r["max_labels_per_comparison"] == 2
