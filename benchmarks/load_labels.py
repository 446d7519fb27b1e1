"""Labeling under load: N simulated annotators label concurrently through the store API.

Each annotator is a thread sharing one `Store`, as the Streamlit app's sessions share one per
server process: loop `next_comparison` -> `save_label` until its queue is empty. The store is
seeded with `labels / required` comparisons that each need `required` labels, so the run ends
after exactly `labels` labels. Afterwards it checks labels stored = labels acknowledged (the
ids `save_label` returned), no (comparison, annotator) pair twice, and no comparison over its
required labels (leases keep in-flight items from being over-labelled). Prints labels/s and
latency percentiles (nearest rank) of `save_label`, `next_comparison` and the whole cycle.

Run:  .venv/bin/python benchmarks/load_labels.py [--annotators 20] [--labels 1000] [--required 2]
      [--db sqlite|postgresql+psycopg://...]   (default: SQLite in a temp folder, then PostgreSQL
      too when RLHF_TEST_PG_URL is set; see scripts/pg-test-server)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import select

from rlhf.schema import Label
from rlhf.store import CompletionRecord, PromptRecord, Store


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float]:
    """Nearest rank: p_q = the ceil(q/100 * n)-th smallest value."""
    v = sorted(values)
    if not v:
        return {f"p{q:g}": float("nan") for q in qs}
    return {f"p{q:g}": v[max(0, math.ceil(q / 100 * len(v)) - 1)] for q in qs}


def seed_store(store: Store, n_comparisons: int, required: int, n_annotators: int) -> list[int]:
    """`n_comparisons` prompts with two candidates each (one comparison each), and the annotators."""
    store.add_prompts([PromptRecord(f"Load prompt {i}: say something.") for i in range(n_comparisons)])
    from rlhf.schema import Prompt

    with store.session() as s:
        prompt_ids = list(s.scalars(select(Prompt.id).order_by(Prompt.id)))
    for i, pid in enumerate(prompt_ids):
        store.add_candidates(
            pid,
            [CompletionRecord(f"Answer one {i}", "load"), CompletionRecord(f"Answer two {i}", "load")],
            required_labels=required,
        )
    return [store.add_annotator(f"load-annotator-{k}")[0].id for k in range(n_annotators)]


def run_load(store: Store, annotators: int = 20, labels: int = 1000, required: int = 2) -> dict[str, Any]:
    """Run the load on an initialised, empty store; returns the figures and the checks' results."""
    if labels % required:
        raise ValueError("labels must be a multiple of required")
    n_comparisons = labels // required
    ids = seed_store(store, n_comparisons, required, annotators)
    acked: list[tuple[int, int, int]] = []  # (label id, comparison, annotator), appended under the GIL
    save_ms: list[float] = []
    next_ms: list[float] = []
    cycle_ms: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(annotators)

    def annotator(aid: int) -> None:
        start.wait()
        while True:
            t0 = time.perf_counter()
            comp = store.next_comparison(aid)
            t1 = time.perf_counter()
            if comp is None:
                return
            try:
                label = store.save_label(comp.id, aid, "A" if (comp.id + aid) % 2 else "B", strength=aid % 4)
            except Exception as e:  # counted and reported: any error here is a finding
                errors.append(f"{type(e).__name__}: {e}")
                continue
            t2 = time.perf_counter()
            acked.append((label.id, comp.id, aid))
            next_ms.append((t1 - t0) * 1e3)
            save_ms.append((t2 - t1) * 1e3)
            cycle_ms.append((t2 - t0) * 1e3)

    threads = [threading.Thread(target=annotator, args=(aid,)) for aid in ids]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - t_start
    assert not any(t.is_alive() for t in threads), "an annotator thread hung"

    r = tally(store, acked, required, labels)
    r.update(
        annotators=annotators,
        errors=errors,
        wall_s=wall,
        labels_per_s=len(acked) / wall if wall else float("nan"),
        save_ms=percentiles(save_ms),
        next_ms=percentiles(next_ms),
        cycle_ms=percentiles(cycle_ms),
    )
    return r


def tally(store: Store, acked: list[tuple[int, ...]], required: int, target: int) -> dict[str, Any]:
    """The invariants after a run: submitted labels in the store against the acknowledged ones.

    `acked`: (label id, comparison, annotator) when the writer knows the label id (store API), or
    (comparison, annotator) when it only saw the app acknowledge the submit. Also used by the
    through-the-app load and kill tests (`tests/reliability/test_app_load.py`)."""
    with store.session() as s:
        stored = [
            tuple(row)
            for row in s.execute(
                select(Label.id, Label.comparison_id, Label.annotator_id).where(Label.status == "submitted")
            )
        ]
    keyed = stored if acked and len(acked[0]) == 3 else [row[1:] for row in stored]
    per_comparison = Counter(cid for _, cid, _ in stored)
    pairs = Counter((cid, aid) for _, cid, aid in stored)
    acked_set, stored_set = set(acked), set(keyed)
    return {
        "backend": store.engine.dialect.name,
        "labels_target": target,
        "labels_acknowledged": len(acked),
        "labels_stored": len(stored),
        "stored_equals_acknowledged": sorted(keyed) == sorted(acked),
        "acknowledged_missing": len(acked_set - stored_set),  # acknowledged, yet not in the store
        "stored_unacknowledged": len(stored_set - acked_set),  # committed, acknowledgement never seen
        "duplicate_pairs": sum(1 for n in pairs.values() if n > 1),
        "max_labels_per_comparison": max(per_comparison.values(), default=0),
        "required": required,
        "over_labelled": sum(1 for n in per_comparison.values() if n > required),
    }


LATENCIES = (
    ("save_ms", "save_label"),
    ("next_ms", "next_comparison"),
    ("cycle_ms", "cycle"),
    ("ack_ms", "submit -> acknowledged"),
)


def report(r: dict[str, Any]) -> str:
    def fmt(p: dict[str, float]) -> str:
        return " ".join(f"{k}={v:.1f}" for k, v in p.items())

    lines = [
        f"[{r['backend']}] {r['annotators']} annotators, {r['labels_acknowledged']}/{r['labels_target']} labels "
        f"in {r['wall_s']:.2f} s = {r['labels_per_s']:.1f} labels/s"
    ]
    lines += [f"  {title} ms: {fmt(r[key])}" for key, title in LATENCIES if key in r]
    lines.append(
        f"  stored={r['labels_stored']} acknowledged={r['labels_acknowledged']} "
        f"equal={r['stored_equals_acknowledged']} duplicates={r['duplicate_pairs']} "
        f"max per comparison={r['max_labels_per_comparison']} (required {r['required']}) errors={len(r['errors'])}"
    )
    return "\n".join(lines)


def check(r: dict[str, Any]) -> list[str]:
    problems = []
    if not r["stored_equals_acknowledged"]:
        problems.append("labels stored != labels acknowledged")
    if r["labels_acknowledged"] != r["labels_target"]:
        problems.append(f"{r['labels_acknowledged']} labels written, expected {r['labels_target']}")
    if r["duplicate_pairs"]:
        problems.append(f"{r['duplicate_pairs']} duplicate (comparison, annotator) pairs")
    if r["over_labelled"]:
        problems.append(f"{r['over_labelled']} comparisons over their required labels")
    if r["errors"]:
        problems.append(f"{len(r['errors'])} errors, first: {r['errors'][0]}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--annotators", type=int, default=20)
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--required", type=int, default=2)
    ap.add_argument("--db", action="append", help="sqlite or a PostgreSQL URL (repeatable); it is wiped")
    args = ap.parse_args()
    dbs = args.db or ["sqlite", *([os.environ["RLHF_TEST_PG_URL"]] if os.environ.get("RLHF_TEST_PG_URL") else [])]
    failed = False
    for db in dbs:
        with tempfile.TemporaryDirectory() as d:
            if db == "sqlite":
                store = Store(f"sqlite:///{Path(d) / 'load.db'}")
            else:
                from sqlalchemy import create_engine, text

                engine = create_engine(db)
                with engine.begin() as c:
                    c.execute(text("DROP SCHEMA public CASCADE"))
                    c.execute(text("CREATE SCHEMA public"))
                engine.dispose()
                store = Store(db)
            store.init()
            r = run_load(store, args.annotators, args.labels, args.required)
            store.engine.dispose()
        print(report(r), flush=True)
        if problems := check(r):
            print("  FAILED: " + "; ".join(problems), flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
