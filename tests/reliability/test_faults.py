"""Faults: a locked database, a read-only data home, a full disk. Each gives a clear WorkbenchError
and leaves the database intact (integrity_check ok, the same rows as before)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from labeling_seed import seed_labeling
from reliability_tools import store_fingerprint

from rlhf.errors import WorkbenchError
from rlhf.io import import_prompts
from rlhf.store import Store


def integrity_ok(db: Path) -> bool:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con.close()


def test_locked_database_gives_a_clear_error_and_changes_nothing(store, home):
    seed = seed_labeling(store, n_prompts=2)
    before = store_fingerprint(store)
    db = home / "rlhf.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        impatient = Store(busy_timeout_s=0.3)
        t0 = time.perf_counter()
        with pytest.raises(WorkbenchError, match="locked.*Another process holds a write lock"):
            impatient.save_label(seed.comparison_ids[0], seed.annotator_ids[0], "A")
        assert time.perf_counter() - t0 < 5  # waited about the timeout, not forever
        impatient.engine.dispose()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store_fingerprint(store) == before
    assert integrity_ok(db)
    store.save_label(seed.comparison_ids[0], seed.annotator_ids[0], "A")  # works once the lock is gone


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 16 MB tmpfs (needs root and mount rights; skipped otherwise)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)):
        pytest.skip("cannot mount a tmpfs here (needs root): read-only / disk-full faults not simulated")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_read_only_data_home_gives_a_clear_error_and_keeps_the_data(tmpfs, monkeypatch):
    monkeypatch.setenv("RLHF_HOME", str(tmpfs / "home"))
    store = Store()
    store.init()
    seed = seed_labeling(store, n_prompts=2)
    before = store_fingerprint(store)
    store.engine.dispose()
    assert _mount("-o", "remount,ro", str(tmpfs))
    try:
        ro = Store()
        with pytest.raises(WorkbenchError, match="read-only|readonly|unable to open|cannot create"):
            ro.save_label(seed.comparison_ids[0], seed.annotator_ids[0], "A")
        ro.engine.dispose()
    finally:
        assert _mount("-o", "remount,rw", str(tmpfs))
    again = Store()
    assert store_fingerprint(again) == before
    assert integrity_ok(tmpfs / "home" / "rlhf.db")


def test_disk_full_during_import_gives_a_clear_error_and_imports_nothing(tmpfs, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_HOME", str(tmpfs / "home"))
    store = Store()
    store.init()
    seed_labeling(store, n_prompts=2)
    before = store_fingerprint(store)
    # Fill the disk, leaving ~64 KB: far less than the import below needs (~3 MB of prompts).
    filler = tmpfs / "filler"
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    filler.write_bytes(b"\0" * max(0, free - 64 * 1024))
    src = tmp_path / "big.jsonl"
    src.write_text("".join(f'{{"prompt": "prompt {i} {"y" * 1000}"}}\n' for i in range(3000)))
    with pytest.raises(WorkbenchError, match="full"):
        import_prompts(store, src)
    filler.unlink()
    store.engine.dispose()
    again = Store()
    assert store_fingerprint(again) == before
    assert integrity_ok(tmpfs / "home" / "rlhf.db")
    assert import_prompts(again, src).added == 3000  # with space back, the same import works
