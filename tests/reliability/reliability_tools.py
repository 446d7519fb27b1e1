"""Helpers shared by the reliability tests and `benchmarks/load_labels.py`."""

from __future__ import annotations

import hashlib
import json
import sqlite3

from sqlalchemy import select

from rlhf.schema import Annotator, Comparison, Completion, Label, Prompt, Setting
from rlhf.store import Store


def store_fingerprint(store: Store) -> tuple[dict[str, int], str]:
    """(counts, sha256 over every row of every table in id order): equal before and after means unchanged."""
    h = hashlib.sha256()
    with store.session() as s:
        for table in (Prompt, Completion, Comparison, Label, Annotator, Setting):
            cols = list(table.__table__.columns)
            for row in s.execute(select(*cols).order_by(*table.__table__.primary_key.columns)):
                h.update(json.dumps([str(v) for v in row], ensure_ascii=False).encode("utf-8", "surrogatepass"))
                h.update(b"\n")
            h.update(b"--\n")
    return store.counts(), h.hexdigest()


def check_opens_cleanly(store: Store) -> Store:
    """A brand-new handle on the database, as the next app start would open it."""
    fresh = Store(store.url)
    if fresh.engine.dialect.name == "sqlite":
        con = sqlite3.connect(fresh.engine.url.database)
        try:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            con.close()
    fresh.require_ready()
    fresh.counts()
    return fresh
