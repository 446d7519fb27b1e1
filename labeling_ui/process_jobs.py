"""Background OS processes started from the app (PPO training): start, watch, stop; state on disk.

`labeling_ui.jobs` runs short work in a thread of the server. Training is different: it holds GBs of
memory, may run for hours and must not die with (or slow down) the Streamlit server, so it runs as its
own process in its own process group, and everything about it lives in the data home:

    <RLHF_HOME>/jobs/<id>.json       what was started: command, pid (= process group), cwd, started, meta
    <RLHF_HOME>/jobs/<id>.log        the command's stdout + stderr
    <RLHF_HOME>/jobs/<id>.exit.json  {returncode, finished}: written by the wrapper when the command ends

A small wrapper process (`_WRAPPER`) runs the command and records its exit code, so a job that ends
while no server watches (or after a server restart) still shows how it ended. Stopping sends SIGTERM
to the whole group, then SIGKILL after a grace period. This module never imports Streamlit.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rlhf.errors import WorkbenchError
from rlhf.home import data_home

# Runs `argv[3:]`, then writes its exit code to `argv[1]` (atomically). It shares the command's process
# group, so a stop signal reaches it too: a no-op handler (not SIG_IGN, which the command would
# inherit) keeps it alive to record how the command ended.
_WRAPPER = """\
import json, os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *a: None)
signal.signal(signal.SIGINT, lambda *a: None)
exit_path = sys.argv[1]
try:
    rc = subprocess.call(sys.argv[3:])
except OSError as e:
    print(f"cannot start {sys.argv[3]!r}: {e}", file=sys.stderr, flush=True)
    rc = 127
with open(exit_path + ".tmp", "w") as f:
    json.dump({"returncode": rc, "finished": time.time()}, f)
os.replace(exit_path + ".tmp", exit_path)
"""

# Popen handles of the jobs this process started: polling them reaps an ended wrapper (otherwise a
# zombie that still answers os.kill(pid, 0)).
_CHILDREN: dict[int, subprocess.Popen] = {}

STATUSES = ("running", "stopping", "finished", "failed", "stopped", "lost")


def jobs_dir() -> Path:
    """`<data home>/jobs`, created on first use."""
    path = data_home() / "jobs"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkbenchError(f"cannot create the jobs folder {path}: {e.strerror}; check RLHF_HOME") from e
    return path


@dataclass
class ProcessJob:
    """One background process as its files describe it; `status` is computed when it is loaded."""

    id: str
    kind: str
    command: list[str]
    pid: int
    started: float
    root: Path
    description: str = ""
    cwd: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    stop_requested: float | None = None
    returncode: int | None = None
    finished: float | None = None
    status: str = "running"

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.id}.log"

    @property
    def record_path(self) -> Path:
        return self.root / f"{self.id}.json"

    @property
    def exit_path(self) -> Path:
        return self.root / f"{self.id}.exit.json"

    @property
    def active(self) -> bool:
        return self.status in ("running", "stopping")

    def elapsed(self, now: float | None = None) -> float:
        end = self.finished if self.finished is not None else (time.time() if now is None else now)
        return max(0.0, end - self.started)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "description": self.description,
            "command": self.command,
            "pid": self.pid,
            "started": self.started,
            "cwd": self.cwd,
            "meta": self.meta,
            "stop_requested": self.stop_requested,
        }


def job_status(returncode: int | None, stop_requested: bool, alive: bool) -> str:
    """running | stopping | finished | failed | stopped | lost, from what is known of a job.

    `returncode` is the wrapper's record (None: none written yet). A job stopped from the app is
    "stopped" whatever code the signal left; one that vanished without a record was killed from outside."""
    if returncode is not None:
        if stop_requested:
            return "stopped"
        return "finished" if returncode == 0 else "failed"
    if alive:
        return "stopping" if stop_requested else "running"
    return "stopped" if stop_requested else "lost"


def start_job(
    kind: str,
    command: Sequence[str],
    description: str = "",
    meta: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    root: Path | None = None,
) -> ProcessJob:
    """Start `command` in the background, in a new session (its own process group), output to its log."""
    root = Path(root) if root is not None else jobs_dir()
    root.mkdir(parents=True, exist_ok=True)
    job_id = f"{datetime.now():%Y%m%d-%H%M%S}-{kind}-{secrets.token_hex(3)}"
    job = ProcessJob(
        id=job_id,
        kind=kind,
        command=[str(c) for c in command],
        pid=0,
        started=time.time(),
        root=root,
        description=description,
        cwd=str(Path(cwd or Path.cwd()).resolve()),
        meta=dict(meta or {}),
    )
    # Unbuffered output, so the log tail in the app is current; the data home spelled out, so a relative
    # RLHF_HOME means the same folder to the child.
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", "RLHF_HOME": str(data_home()), **(env or {})}
    with job.log_path.open("ab") as log:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _WRAPPER, str(job.exit_path), "--", *job.command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=job.cwd,
                env=child_env,
                start_new_session=True,  # its own process group: a stop signal reaches the whole tree
            )
        except OSError as e:
            raise WorkbenchError(f"cannot start {job.command[0]}: {e}") from e
    _CHILDREN[proc.pid] = proc
    job.pid = proc.pid
    _write_record(job)
    return job


def load_job(path: Path) -> ProcessJob:
    """A job from its `<id>.json` record (ValueError when the record is unreadable)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        job = ProcessJob(
            id=str(data["id"]),
            kind=str(data["kind"]),
            command=[str(c) for c in data["command"]],
            pid=int(data["pid"]),
            started=float(data["started"]),
            root=path.parent,
            description=str(data.get("description") or ""),
            cwd=str(data.get("cwd") or ""),
            meta=dict(data.get("meta") or {}),
            stop_requested=data.get("stop_requested"),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"job record {path.name} is unreadable ({e})") from e
    _refresh(job)
    return job


def list_jobs(root: Path | None = None, kind: str | None = None) -> tuple[list[ProcessJob], list[str]]:
    """(jobs newest first, one problem line per unreadable record)."""
    root = Path(root) if root is not None else jobs_dir()
    jobs, problems = [], []
    for path in root.glob("*.json"):
        if path.name.endswith(".exit.json"):
            continue
        try:
            job = load_job(path)
        except ValueError as e:
            problems.append(str(e))
            continue
        if kind is None or job.kind == kind:
            jobs.append(job)
    jobs.sort(key=lambda j: (j.started, j.id), reverse=True)
    return jobs, sorted(problems)


def stop_job(job: ProcessJob, grace_s: float = 10.0) -> ProcessJob:
    """SIGTERM to the job's process group; SIGKILL when it is still there after `grace_s` seconds.

    The PPO run keeps what it already saved (its last checkpoint); a job that already ended is left alone.
    A stop within the wrapper's first ~50 ms (before its handler is set) ends it too, without an exit
    record: the job still reads "stopped"."""
    _refresh(job)
    if not job.active:
        return job
    if job.stop_requested is None:
        job.stop_requested = time.time()
        _write_record(job)
    _signal_group(job.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(job):
            break
        time.sleep(0.1)
    else:
        _signal_group(job.pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while _alive(job) and time.monotonic() < end:
            time.sleep(0.05)
    _refresh(job)  # the wrapper wrote its exit record before it exited (unless SIGKILL got it)
    return job


def log_tail(job: ProcessJob, lines: int = 30, max_bytes: int = 64_000) -> str:
    """The last `lines` lines of the job's log (progress bars' carriage returns folded to new lines)."""
    try:
        with job.log_path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    kept = [line for line in text.split("\n") if line.strip()]
    return "\n".join(kept[-lines:])


# -- internals -----------------------------------------------------------------------------------


def _write_record(job: ProcessJob) -> None:
    tmp = job.record_path.with_name(f".{job.record_path.name}.tmp")
    tmp.write_text(json.dumps(job.record(), indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, job.record_path)


def _refresh(job: ProcessJob) -> None:
    """Read the exit record (if any) and recompute the status."""
    job.returncode = job.finished = None
    if job.exit_path.exists():
        try:
            data = json.loads(job.exit_path.read_text(encoding="utf-8"))
            job.returncode, job.finished = int(data["returncode"]), float(data["finished"])
        except (OSError, ValueError, KeyError, TypeError):
            job.returncode = None
    alive = job.returncode is None and _alive(job)
    job.status = job_status(job.returncode, job.stop_requested is not None, alive)
    if job.finished is None and not alive and job.returncode is None:
        job.finished = _mtime(job.log_path)


def _alive(job: ProcessJob) -> bool:
    """Whether the job's wrapper process still runs (not a zombie, not a reused pid)."""
    proc = _CHILDREN.get(job.pid)
    if proc is not None:  # our own child: its pid cannot be reused before we reap it
        if proc.poll() is None:
            return True
        _CHILDREN.pop(job.pid, None)
        return False
    try:
        os.kill(job.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user: our pid was reused
        return False
    proc_dir = Path(f"/proc/{job.pid}")
    if proc_dir.is_dir():  # Linux: tell our wrapper from a reused pid, and a zombie from a live process
        try:
            cmdline = (proc_dir / "cmdline").read_bytes()
            state = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return job.id.encode() in cmdline and state != "Z"
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
