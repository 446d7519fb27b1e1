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


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop the rows a killed run logged after the checkpoint it resumes from (they are logged again),
    and any line cut by the kill. Shared by reward and PPO resume."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
    os.replace(tmp, path)


# -- checkpoints ----------------------------------------------------------------------------


def read_weights(folder: Path, stem: str = "model") -> dict[str, Any]:
    """The tensors of `folder/<stem>.safetensors` (or its sharded index)."""
    from safetensors.torch import load_file

    single = folder / f"{stem}.safetensors"
    if single.exists():
        return load_file(str(single))
    index = folder / f"{stem}.safetensors.index.json"
    if not index.exists():
        raise WorkbenchError(f"{folder} holds no {stem}.safetensors; the checkpoint is incomplete")
    out: dict[str, Any] = {}
    for name in sorted(set(read_json(index)["weight_map"].values())):
        out.update(load_file(str(folder / name)))
    return out


def load_weights(model: Any, weights: dict[str, Any]) -> None:
    """load_state_dict that accepts only missing keys tied to loaded ones (tied embeddings)."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    own = model.state_dict()
    loaded_ptrs = {own[k].data_ptr() for k in weights if k in own}
    untied = [k for k in missing if own[k].data_ptr() not in loaded_ptrs]
    if unexpected or untied:
        raise WorkbenchError(f"checkpoint does not match the model: missing {untied[:5]}, unexpected {unexpected[:5]}")


def weights_finite(weights: dict[str, Any]) -> bool:
    """No NaN/inf in any floating-point tensor."""
    import torch

    return all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())


# -- the NaN / exploding-loss guard (reward training and PPO) ----------------------------------

EXPLODE_WINDOW = 20  # the running median is over this many previous steps
EXPLODE_MIN_HISTORY = 5  # no explosion is called before this many finite steps
EXPLODE_FLOOR = 0.1  # medians below this count as this (a loss near 0 must not make noise look explosive)


def loss_explodes(
    history: list[float],
    value: float,
    factor: float | None,
    window: int = EXPLODE_WINDOW,
    floor: float = EXPLODE_FLOOR,
    min_history: int = EXPLODE_MIN_HISTORY,
) -> float | None:
    """The exploding-loss rule: `value` explodes when

        |value| > factor x max(median(|x| over the last `window` finite steps before it), floor)

    and at least `min_history` such steps exist. Returns the threshold it exceeded, else None
    (factor None = the rule is off). Absolute values: PPO's policy loss is often negative."""
    recent = sorted(abs(x) for x in history[-window:])
    if factor is None or len(recent) < min_history:
        return None
    n = len(recent)
    median = recent[n // 2] if n % 2 else (recent[n // 2 - 1] + recent[n // 2]) / 2
    threshold = factor * max(median, floor)
    return threshold if abs(value) > threshold else None


class LossGuard:
    """Per-step check of training losses: the first NaN/inf (`non_finite`) or exploding loss
    (`loss_explosion`, see `loss_explodes`) gives a stop record; a run stops there and keeps its
    last good checkpoint. `explode_keys`: the values the explosion rule applies to (the others are
    only checked for NaN/inf)."""

    def __init__(self, factor: float | None, explode_keys: tuple[str, ...], window: int = EXPLODE_WINDOW):
        self.factor, self.explode_keys, self.window = factor, explode_keys, window
        self.history: dict[str, list[float]] = {k: [] for k in explode_keys}
        self.stop: dict[str, Any] | None = None  # the record that stopped the run, once one did

    def check(self, step: int, values: dict[str, float]) -> dict[str, Any] | None:
        for name, v in values.items():
            if not math.isfinite(v):
                return {"reason": "non_finite", "step": step, "metric": name, "value": clean_number(v)}
        for name in self.explode_keys:
            if name not in values:
                continue
            threshold = loss_explodes(self.history[name], values[name], self.factor, self.window)
            if threshold is not None:
                return {
                    "reason": "loss_explosion",
                    "step": step,
                    "metric": name,
                    "value": values[name],
                    "threshold": threshold,
                    "loss_explode_factor": self.factor,
                }
        for name in self.explode_keys:
            if name in values:
                self.history[name] = (self.history[name] + [values[name]])[-self.window :]
        return None


def divergence_message(stop: dict[str, Any], kept: str, advice: str) -> str:
    """The one message a diverged run ends with: the step, the value, what was kept, what to do."""
    if stop["reason"] == "non_finite":
        what = f"{stop['metric']} = {stop['value']} (not a finite number)"
    else:
        what = (
            f"{stop['metric']} = {stop['value']:.4g}, over {stop['loss_explode_factor']:g} x the running median "
            f"of its last {EXPLODE_WINDOW} steps (threshold {stop['threshold']:.4g}; `loss_explode_factor`)"
        )
    return f"training diverged at step {stop['step']}: {what}. The run stopped; kept {kept}. {advice}"
