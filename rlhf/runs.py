"""Run folders: where every training stage writes its outputs, and how they are read back.

    runs/<kind>/<id>/
      config.json      the resolved configuration (ours + TRL's), with the input folder and its hash
      metrics.jsonl    one JSON object per logged step, appended as training goes (a callback)
      summary.json     written last: final metrics, timings; its presence marks a finished run
      model/           the trained model (loads with the usual transformers Auto classes)

Metric names follow DESIGN.md's vocabulary so the UI, reports and tests can rely on them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlhf.errors import WorkbenchError
from rlhf.home import ensure_home

KINDS = ("reward", "ppo")


def runs_dir(kind: str) -> Path:
    if kind not in KINDS:
        raise WorkbenchError(f"unknown run kind {kind!r}; one of {KINDS}")
    return ensure_home() / "runs" / kind


def new_run_dir(kind: str, name: str | None = None) -> Path:
    """A fresh folder `runs/<kind>/<UTC time>[-name]` (a suffix keeps ids unique)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:60] if name else ""
    base = f"{stamp}-{slug}" if slug else stamp
    root = runs_dir(kind)
    for i in range(1000):
        path = root / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise WorkbenchError(f"cannot create a run folder under {root}")


def new_shared_run_dir(kind: str, name: str | None = None) -> Path:
    """`new_run_dir` for every process of a distributed launch (torchrun / accelerate): the main
    process creates the folder and the others receive its path, so a run has one folder.
    Call it after the training config exists: creating that joins the process group (gloo on CPU);
    a bare PartialState() first would fix a non-distributed state for the whole process."""
    from accelerate import PartialState

    state = PartialState()  # joins the process group when launched with several processes
    if state.num_processes == 1:
        return new_run_dir(kind, name)
    import torch.distributed as dist

    box = [str(new_run_dir(kind, name)) if state.is_main_process else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resolve_run(kind: str, run: str | Path) -> Path:
    """A run folder from a path or an id under `runs/<kind>/` (`latest` = the newest)."""
    p = Path(run)
    if p.is_dir() and (p / "config.json").exists():  # an explicit path to a run folder
        return p.resolve()
    root = runs_dir(kind)
    if str(run) == "latest":
        done = sorted(d for d in root.iterdir() if (d / "summary.json").exists())
        if not done:
            raise WorkbenchError(f"no finished {kind} run in {root}")
        return done[-1]
    if "/" in str(run) or ".." in str(run):
        raise WorkbenchError(f"no {kind} run folder {run}")
    if not (root / str(run)).is_dir():
        raise WorkbenchError(f"no {kind} run {run!r} in {root}; see the folder names there")
    return root / str(run)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename): a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "__dict__"):
        return {k: v for k, v in vars(x).items() if not k.startswith("_")}
    return str(x)


def clean_number(v: Any) -> Any:
    """NaN/inf are not JSON: keep them readable as strings instead of breaking the file."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLog:
    """Append-only `metrics.jsonl`. Each line is flushed at once so a live dashboard sees it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: clean_number(v) for k, v in record.items()}, ensure_ascii=False, default=_jsonable)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write: skip it, keep the rest
        return rows


def metrics_callback(run_dir: Path) -> Any:
    """A transformers `TrainerCallback` that appends every `on_log` to the run's metrics.jsonl."""
    from transformers import TrainerCallback

    log = MetricsLog(run_dir)

    class _MetricsCallback(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and state.is_world_process_zero:  # one writer in multi-process runs
                log.append({"step": state.global_step, "epoch": state.epoch, **logs})

    return _MetricsCallback()


def folder_hash(path: Path) -> str:
    """Identity of an input folder: its manifest's rows hash when it has one, else a content hash."""
    manifest = Path(path) / "manifest.json"
    if manifest.exists():
        m = read_json(manifest)
        if m.get("rows_sha256"):
            return m["rows_sha256"]
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()
