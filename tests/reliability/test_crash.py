"""Faults: kill -9 of a writer process in the middle of label writes and of imports, many times.

After every kill: the database opens cleanly (SQLite: PRAGMA integrity_check = ok), every label the
writer acknowledged (printed after its commit) is stored, no (comparison, annotator) pair appears
twice, at most one label per kill is stored without its acknowledgement (committed, then killed
before the print), and an import killed at any moment is all or nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labeling_seed import seed_labeling
from reliability_tools import check_opens_cleanly
from sqlalchemy import func, select

from rlhf.schema import Comparison, Label, Prompt
from rlhf.store import Store

WRITER = Path(__file__).with_name("crash_writer.py")
KILLS = 10
SEED = int(os.environ.get("RLHF_CRASH_SEED", "7"))


@pytest.fixture
def store(rel_store):
    return rel_store


def start(mode: str, url: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), mode, url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    line = proc.stdout.readline()  # blocks until the child is connected and about to write
    assert line.strip() == "ready", f"writer did not start: {line!r} {proc.stderr.read()[-2000:]}"
    return proc


def kill(proc: subprocess.Popen) -> str:
    """SIGKILL (no cleanup, no atexit, no rollback in the child) and return what it had printed."""
    os.kill(proc.pid, signal.SIGKILL)
    out = proc.stdout.read()
    proc.wait(timeout=30)
    proc.stderr.close()
    return out


def test_kill_9_during_label_writes_loses_no_acknowledged_label(store):
    rng = random.Random(SEED)
    seed_labeling(store, n_prompts=30, required=30, n_annotators=30)  # 900 possible labels
    acked: dict[int, tuple[int, int]] = {}
    unacked_allowance = 0
    for _ in range(KILLS):
        proc = start("labels", store.url)
        time.sleep(rng.uniform(0.0, 0.25))
        out = kill(proc)
        assert "done" not in out, "the writer finished before the kill; raise the number of labels"
        for line in out.splitlines():
            _, lid, cid, aid = line.split()
            acked[int(lid)] = (int(cid), int(aid))
        unacked_allowance += 1
        fresh = check_opens_cleanly(store)
        with fresh.session() as s:
            rows = {
                lid: (cid, aid)
                for lid, cid, aid in s.execute(
                    select(Label.id, Label.comparison_id, Label.annotator_id).where(Label.status == "submitted")
                )
            }
            pairs = s.execute(
                select(Label.comparison_id, Label.annotator_id, func.count())
                .group_by(Label.comparison_id, Label.annotator_id)
                .having(func.count() > 1)
            ).all()
        fresh.engine.dispose()
        missing = {lid: p for lid, p in acked.items() if rows.get(lid) != p}
        assert not missing, f"acknowledged labels lost or changed: {missing}"
        assert not pairs, f"duplicate labels: {pairs}"
        assert len(rows) - len(acked) <= unacked_allowance
    assert len(acked) >= KILLS, "too few labels were written to mean anything"
    print(f"\nlabels: {KILLS} kills survived, {len(acked)} acknowledged labels, all present, no duplicates")


IMPORT_KILLS = 6


def write_file(path: Path, mode: str, tag: str, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            row = {"prompt": f"{tag} prompt {i} " + "x" * 200}
            if mode == "prefs":
                row.update(chosen=f"good {i}", rejected=f"bad {i}")
            f.write(json.dumps(row) + "\n")
    return path


def prompt_and_comparison_counts(store: Store) -> tuple[int, int]:
    fresh = check_opens_cleanly(store)
    with fresh.session() as s:
        out = (
            s.scalar(select(func.count()).select_from(Prompt)),
            s.scalar(select(func.count()).select_from(Comparison)),
        )
    fresh.engine.dispose()
    return out


@pytest.mark.parametrize("mode", ["import", "prefs"])
def test_kill_9_during_import_is_all_or_nothing(store, tmp_path, mode):
    rng = random.Random(SEED)
    n = 3000 if mode == "import" else 1000
    # 1) calibrate: how long one import runs in a child process here (from "ready" to "done")
    proc = start(mode, store.url, str(write_file(tmp_path / "calibrate.jsonl", mode, "calibrate", n)))
    t0 = time.perf_counter()
    assert proc.stdout.readline().strip() == "done", proc.stderr.read()[-2000:]
    took = time.perf_counter() - t0
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    # 2) kill at random moments across that span (a little past it, so some imports complete)
    outcomes = {"nothing": 0, "all": 0}
    for round_ in range(IMPORT_KILLS):
        path = write_file(tmp_path / f"round{round_}.jsonl", mode, f"round {round_}", n)
        before, comps_before = prompt_and_comparison_counts(store)
        proc = start(mode, store.url, str(path))
        time.sleep(rng.uniform(0.1 * took, 1.1 * took))
        out = kill(proc)
        after, comps_after = prompt_and_comparison_counts(store)
        assert after in (before, before + n), f"half-applied import: {before} -> {after} prompts"
        if mode == "prefs":
            assert comps_after - comps_before == after - before
        if "done" in out:
            assert after == before + n
        outcomes["all" if after == before + n else "nothing"] += 1
    print(f"\n{mode}: import takes {took:.2f} s; {IMPORT_KILLS} kills, outcomes {outcomes}, never half-applied")
