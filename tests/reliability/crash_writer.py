"""A writer process for the kill -9 tests (tests/reliability/test_crash.py); not a test module.

    python crash_writer.py labels DB_URL        save labels until none is left; after each commit
                                                 print "ack <label id> <comparison> <annotator>"
    python crash_writer.py import DB_URL FILE   print "ready", import FILE's prompts, print "done"
    python crash_writer.py prefs DB_URL FILE    the same with preferences

Every line is flushed at once: a line the parent read is a write the child saw committed."""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy import select

from rlhf.schema import Annotator, Comparison, Label
from rlhf.store import Store


def write_labels(store: Store) -> None:
    with store.session() as s:
        annotators = list(s.scalars(select(Annotator.id).where(Annotator.role == "annotator", Annotator.active)))
        comparisons = list(s.scalars(select(Comparison.id).order_by(Comparison.id)))
        done = set(s.execute(select(Label.comparison_id, Label.annotator_id)).tuples())
    print("ready", flush=True)
    for cid in comparisons:
        for aid in annotators:
            if (cid, aid) in done:
                continue
            label = store.save_label(cid, aid, "A" if (cid + aid) % 2 else "B", strength=(cid * aid) % 4)
            print(f"ack {label.id} {cid} {aid}", flush=True)
    print("done", flush=True)


def main() -> None:
    mode, url = sys.argv[1], sys.argv[2]
    store = Store(url)
    if mode == "labels":
        write_labels(store)
        return
    from rlhf.io import import_preferences, import_prompts

    print("ready", flush=True)
    (import_prompts if mode == "import" else import_preferences)(store, Path(sys.argv[3]))
    print("done", flush=True)


if __name__ == "__main__":
    main()
