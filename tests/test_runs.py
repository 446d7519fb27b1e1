"""Run folders: unique ids, atomic JSON, append-only metrics that survive a cut line, input hashes."""

from __future__ import annotations

import json

import pytest

from rlhf.errors import WorkbenchError
from rlhf.runs import MetricsLog, folder_hash, new_run_dir, read_json, resolve_run, runs_dir, write_json


def test_new_run_dirs_are_unique_and_named(home):
    a = new_run_dir("reward", "my run/../x")
    b = new_run_dir("reward", "my run/../x")
    assert a != b and a.parent == b.parent == runs_dir("reward")
    assert a.name.endswith("-my-run-..-x") or "my-run" in a.name
    assert ".." not in a.relative_to(runs_dir("reward")).parts


def test_resolve_run_by_id_latest_and_refusals(home):
    a = new_run_dir("ppo", "first")
    b = new_run_dir("ppo", "second")
    with pytest.raises(WorkbenchError, match="no finished ppo run"):
        resolve_run("ppo", "latest")
    for run in (a, b):
        write_json(run / "config.json", {})
        write_json(run / "summary.json", {})
    assert resolve_run("ppo", "latest") == b
    assert resolve_run("ppo", a.name) == a
    assert resolve_run("ppo", str(a)) == a.resolve()
    for bad in ("../../etc", "nope"):
        with pytest.raises(WorkbenchError, match="no ppo run"):
            resolve_run("ppo", bad)
    with pytest.raises(WorkbenchError, match="unknown run kind"):
        runs_dir("dpo")


def test_metrics_log_appends_and_skips_a_line_cut_by_a_crash(tmp_path):
    log = MetricsLog(tmp_path)
    log.append({"step": 1, "loss": 0.5})
    log.append({"step": 2, "loss": float("nan")})
    with log.path.open("a") as f:
        f.write('{"step": 3, "lo')  # a crash mid-write
    assert log.read() == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": "nan"}]


def test_write_json_is_atomic_and_readable(tmp_path):
    write_json(tmp_path / "a.json", {"path": tmp_path, "x": 1})
    assert read_json(tmp_path / "a.json") == {"path": str(tmp_path), "x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_folder_hash_prefers_the_manifest_rows_hash(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"rows_sha256": "abc"}))
    assert folder_hash(tmp_path) == "abc"
    other = tmp_path / "other"
    other.mkdir()
    (other / "f.txt").write_text("1")
    h1 = folder_hash(other)
    (other / "f.txt").write_text("2")
    assert folder_hash(other) != h1 and len(h1) == 64
