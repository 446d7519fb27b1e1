"""The labeling queue: who gets which comparison, overlap, leases in flight, undo, concurrency."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
from labeling_seed import seed_labeling
from sqlalchemy import select

from rlhf.schema import Label
from rlhf.store import ComparisonFilter, Store, shown_left_for


@pytest.fixture
def store(backend_store):
    """Every test here runs on SQLite and on PostgreSQL (see conftest.backend_store)."""
    return backend_store


def _labels(store: Store, status: str = "submitted") -> list[tuple[int, int]]:
    with store.session() as s:
        return list(s.execute(select(Label.comparison_id, Label.annotator_id).where(Label.status == status)).tuples())


def test_next_comparison_loads_prompt_and_completions(store):
    seed = seed_labeling(store, n_prompts=2)
    c = store.next_comparison(seed.annotator_ids[0])
    # Usable after its session closed (the page keeps it between reruns).
    assert c.id == seed.comparison_ids[0]
    assert "Prompt number 0" in c.prompt.content
    assert c.completion_a.text.startswith("Response one") and c.completion_b.text.startswith("Response two")


def test_an_annotator_never_gets_the_same_comparison_twice(store):
    seed = seed_labeling(store, n_prompts=3)
    aid = seed.annotator_ids[0]
    seen = []
    while (c := store.next_comparison(aid)) is not None:
        assert c.id not in seen
        seen.append(c.id)
        store.save_label(c.id, aid, "A", strength=1)
    assert seen == seed.comparison_ids
    assert store.next_comparison(aid) is None


def test_overlap_keeps_item_until_required_labels_then_it_leaves_every_queue(store):
    seed = seed_labeling(store, n_prompts=1, required=2, n_annotators=3)
    a1, a2, a3 = seed.annotator_ids
    cid = seed.comparison_ids[0]
    assert store.next_comparison(a1).id == cid
    store.save_label(cid, a1, "tie")
    assert store.next_comparison(a1) is None  # a1 is done with it
    assert store.next_comparison(a2).id == cid  # still needs a second label
    store.save_label(cid, a2, "B", strength=0)
    assert store.next_comparison(a3) is None  # complete: gone from every queue
    assert store.counts()["comparisons_completed"] == 1


def test_order_is_fewest_labels_first_then_oldest(store):
    seed = seed_labeling(store, n_prompts=3, required=3, n_annotators=3)
    a1, a2, a3 = seed.annotator_ids
    c1, c2, c3 = seed.comparison_ids
    store.save_label(c1, a1, "A")
    store.save_label(c2, a1, "A")
    store.save_label(c2, a2, "A")
    # a3: c3 has 0 labels, c1 has 1, c2 has 2.
    assert store.next_comparison(a3).id == c3
    store.save_label(c3, a3, "A")
    assert store.next_comparison(a3).id == c1


def test_leases_keep_two_annotators_from_over_labelling(store):
    seed = seed_labeling(store, n_prompts=2, required=1, n_annotators=2)
    a1, a2 = seed.annotator_ids
    c1, c2 = seed.comparison_ids
    assert store.next_comparison(a1).id == c1
    assert store.next_comparison(a2).id == c2  # c1 is in flight with a1
    assert store.next_comparison(a2).id == c2  # asking again resumes the same item
    assert store.next_comparison(a1).id == c1
    store.release_comparison(a1)
    store.save_label(c2, a2, "A")
    assert store.next_comparison(a2).id == c1  # released: available again


def test_expired_lease_frees_the_item(store):
    seed = seed_labeling(store, n_prompts=1, required=1, n_annotators=2)
    a1, a2 = seed.annotator_ids
    assert store.next_comparison(a1, lease_s=0.0) is not None
    assert store.next_comparison(a2).id == seed.comparison_ids[0]


def test_submitted_lease_holder_counts_once(store):
    # a1 submitted but has not asked for the next item yet: its lease must not block a2 (required 2).
    seed = seed_labeling(store, n_prompts=1, required=2, n_annotators=2)
    a1, a2 = seed.annotator_ids
    cid = store.next_comparison(a1).id
    store.save_label(cid, a1, "A")
    assert store.next_comparison(a2).id == cid


def test_skip_excludes_and_undo_returns_the_item(store):
    seed = seed_labeling(store, n_prompts=2)
    aid = seed.annotator_ids[0]
    c1, c2 = seed.comparison_ids
    assert store.next_comparison(aid, exclude=[c1]).id == c2
    label = store.save_label(c2, aid, "B", strength=3, time_spent_s=4.5, shown_left="B")
    assert store.last_label(aid).id == label.id
    assert store.next_comparison(aid, exclude=[c1]) is None
    store.discard_label(label.id, aid)
    assert store.last_label(aid) is None
    assert store.next_comparison(aid, exclude=[c1]).id == c2
    # Relabelling after the undo reuses the row: still one label for the pair.
    store.save_label(c2, aid, "A", strength=0)
    assert _labels(store) == [(c2, aid)] and _labels(store, "discarded") == []


def test_progress_counts_today_total_and_remaining(store):
    seed = seed_labeling(store, n_prompts=4, required=1, n_annotators=2)
    a1, a2 = seed.annotator_ids
    store.save_label(seed.comparison_ids[0], a1, "A")
    store.save_label(seed.comparison_ids[1], a2, "tie")
    p = store.annotator_progress(a1)
    assert (p.done_today, p.done_total, p.remaining) == (1, 1, 2)


def test_shown_left_is_deterministic_and_balanced():
    sides = [shown_left_for(7, cid) for cid in range(1000)]
    assert sides == [shown_left_for(7, cid) for cid in range(1000)]
    assert 400 < sides.count("A") < 600
    # Different annotators see different orders of the same item.
    assert [shown_left_for(a, 1) for a in range(20)].count("A") not in (0, 20)


def test_listing_filters_and_label_rows(store):
    seed = seed_labeling(store, n_prompts=4, required=2, n_annotators=2)
    a1, a2 = seed.annotator_ids
    c1, c2, *_ = seed.comparison_ids
    store.save_label(c1, a1, "A", strength=2)
    store.save_label(c1, a2, "B", strength=1)
    store.save_label(c2, a1, "tie")
    assert [r["comparison"] for r in store.list_comparisons(ComparisonFilter(status="completed"))] == [c1]
    assert len(store.list_comparisons(ComparisonFilter(category="code"))) == 2
    assert [r["comparison"] for r in store.list_comparisons(ComparisonFilter(annotator_id=a2))] == [c1]
    assert [r["comparison"] for r in store.list_comparisons(ComparisonFilter(search="number 2"))] == [
        seed.comparison_ids[2]
    ]
    assert store.list_comparisons(ComparisonFilter(search="%"))[:1] == []  # LIKE wildcards escaped
    assert len(store.label_rows()) == 3
    assert {(r.comparison_id, r.annotator) for r in store.label_rows(min_labels=2)} == {
        (c1, "annotator1"),
        (c1, "annotator2"),
    }
    assert [r["choice"] for r in store.list_labels(comparison_id=c1)] == ["B", "A"]


def _label_until_empty(store: Store, aid: int, rng: random.Random, out: list[int]) -> None:
    while (c := store.next_comparison(aid)) is not None:
        threading.Event().wait(rng.random() * 0.005)  # think time, so the threads interleave
        out.append(store.save_label(c.id, aid, rng.choice(["A", "B", "tie"])).id)


def test_concurrent_annotators_through_one_store_never_over_label(store):
    # The app's case: one Store per process shared by every session; leases hold items in flight.
    seed = seed_labeling(store, n_prompts=12, required=2, n_annotators=4)
    saved: list[int] = []
    threads = [
        threading.Thread(target=_label_until_empty, args=(store, aid, random.Random(aid), saved))
        for aid in seed.annotator_ids
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    labels = _labels(store)
    assert len(labels) == len(saved) == 12 * 2  # nothing lost, nothing extra
    assert len(set(labels)) == len(labels)  # no (comparison, annotator) twice
    assert Counter(cid for cid, _ in labels) == {cid: 2 for cid in seed.comparison_ids}
    assert store.counts()["comparisons_pending"] == 0


def test_concurrent_annotators_in_separate_processes_over_label_only_in_flight(store):
    # Separate Store objects share no leases (like two app servers): each comparison may get at
    # most one extra label per other annotator with the item in flight, never a duplicate.
    seed = seed_labeling(store, n_prompts=12, required=2, n_annotators=4)
    saved: list[int] = []
    threads = [
        threading.Thread(target=_label_until_empty, args=(Store(store.url), aid, random.Random(aid), saved))
        for aid in seed.annotator_ids
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    labels = _labels(store)
    assert len(labels) == len(saved)
    assert len(set(labels)) == len(labels)
    per_item = Counter(cid for cid, _ in labels)
    assert set(per_item) == set(seed.comparison_ids)
    assert all(2 <= n <= 2 + 3 for n in per_item.values())


@pytest.mark.parametrize("required", [1, 3])
def test_item_with_required_labels_done_is_not_offered_even_with_leases(store, required):
    seed = seed_labeling(store, n_prompts=1, required=required, n_annotators=required + 1)
    cid = seed.comparison_ids[0]
    for aid in seed.annotator_ids[:required]:
        assert store.next_comparison(aid).id == cid
        store.save_label(cid, aid, "A")
    assert store.next_comparison(seed.annotator_ids[-1]) is None
