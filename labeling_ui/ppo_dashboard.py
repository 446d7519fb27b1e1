"""What the PPO runs page shows, without Streamlit: PPO run folders read back, the warning rules for a
run going wrong, samples by step and by prompt, two runs side by side, and the command that starts a
run in the background. The page (`app_pages/ppo.py`) only lays these out, so everything here is tested
directly.

Reads `runs/ppo/<id>/` as `rlhf.ppo.train_ppo` writes it (see that module's docstring): config.json,
metrics.jsonl (TRL's keys + `kl/coef`, and `eval/*` rows), samples.jsonl, report.json, summary.json
(written last: its presence marks a finished run), checkpoints/. Runs started from the app are
`labeling_ui.process_jobs` jobs whose `meta` names the run folder they create.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import yaml

from labeling_ui.process_jobs import ProcessJob
from labeling_ui.reward_inspector import as_number, read_json_file, read_json_objects
from rlhf.ppo_loop import PHASES
from rlhf.stats import fmt_proportion, proportion, win_rate

REPO = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO / "pipelines" / "configs"

CHARTS = {  # panel title -> metrics.jsonl keys drawn on it (DESIGN.md's vocabulary)
    "Reward": ("objective/scores", "objective/rlhf_reward", "eval/reward_mean"),
    "KL per response (nats)": ("objective/kl",),
    "KL coefficient": ("kl/coef",),
    "Exact KL per token (held-out)": ("eval/kl_to_ref",),
    "Non-score reward": ("objective/non_score_reward",),
    "Entropy": ("objective/entropy",),
    "Response length (held-out)": ("eval/response_length",),
    "Clip fraction": ("policy/clipfrac_avg",),
}
COMPARE_KEYS = (  # the main curves overlaid when two runs are compared
    "objective/scores",
    "eval/reward_mean",
    "objective/kl",
    "eval/kl_to_ref",
    "kl/coef",
    "eval/response_length",
)
TRAIN_KEY = "objective/kl"  # a row holding it is a PPO step (TRL logs it every step)
TIME_PREFIX = "time/"  # our PPO step's seconds per phase (rlhf.ppo_loop.StepTimer; PHASES is their order)
LIVE_WINDOW_S = 120.0  # a run without summary.json that wrote within this is taken to be live

# Warning rules (see `kl_warnings` and `length_warnings`).
KL_TARGET_FACTOR = 2.0  # KL above this x kl_target: the adaptive controller is not holding it
KL_RISE_WINDOW = 3  # compare the mean KL of the last 3 steps with the 3 before them ...
KL_RISE_FACTOR = 2.0  # ... and warn when it at least doubled ...
KL_RISE_MIN = 1.0  # ... by at least 1 nat (a rise from 0.01 to 0.03 is noise, not a runaway)
LENGTH_DRIFT = 0.5  # held-out response length changed by more than 50% since the first evaluation
LENGTH_AT_MAX = 0.95  # mean held-out length >= 95% of response_length: nearly every response is cut off

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
RESERVED_OVERRIDES = ("name", "resume")  # set by the app: the run folder's name links it to its job


# -- run folders --------------------------------------------------------------------------------


@dataclass
class PPORun:
    """Everything the page shows about one run; `problems` holds one line per unreadable file."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def options(self) -> dict[str, Any]:
        o = self.config.get("options")
        return o if isinstance(o, dict) else {}

    @property
    def trl(self) -> dict[str, Any]:
        t = self.config.get("trl")
        return t if isinstance(t, dict) else {}

    def checkpoints(self) -> list[str]:
        """Complete checkpoints (their workbench state written last), oldest first."""
        folder = self.path / "checkpoints"
        done = [d for d in folder.glob("checkpoint-*") if (d / "workbench_state.json").exists()]
        return [d.name for d in sorted(done, key=lambda d: _step_of(d.name))]


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(rows, unreadable lines). The last line may be cut by a live writer: skipped, not counted."""
    if not path.exists():
        return [], 0
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return [], 1
    rows, bad = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += i < len(lines) - 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def load_ppo_run(path: Path) -> PPORun:
    """Read a run folder, collecting every unreadable or malformed file instead of raising."""
    run = PPORun(Path(path))
    read_json_objects(run, {"config.json": "config", "summary.json": "summary", "report.json": "report"})
    if run.summary is None and (run.path / "summary.json").exists():
        run.summary = {}  # there but unreadable: the run did finish
    for name, attr in (("metrics.jsonl", "metrics"), ("samples.jsonl", "samples")):
        rows, bad = read_jsonl(run.path / name)
        setattr(run, attr, rows)
        if bad:
            run.problems.append(f"{name}: {bad} unreadable line(s) skipped")
    return run


@dataclass
class RunListing:
    """One run as the run picker lists it."""

    path: Path
    finished: bool
    live: bool
    steps: int | None = None  # summary.json's global_step, when finished
    stop_reason: str | None = None

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def state(self) -> str:
        if self.finished:
            return f"finished ({self.stop_reason})" if self.stop_reason else "finished"
        return "live" if self.live else "not finished (stopped or crashed)"


def runs_frame(runs: Sequence[RunListing]) -> pd.DataFrame:
    """The run list as a table: run, state, steps (finished runs)."""
    frame = pd.DataFrame(
        [{"run": r.id, "state": r.state, "steps": r.steps} for r in runs], columns=["run", "state", "steps"]
    )
    return frame.astype({"steps": "Int64"})  # blank, not NaN, for runs without a summary


def list_ppo_runs(root: Path, jobs: Sequence[ProcessJob] = (), now: float | None = None) -> list[RunListing]:
    """Every run folder under `root`, newest first (folder names start with their UTC start time)."""
    if not root.is_dir():
        return []
    owners: dict[Path, ProcessJob] = {}
    for j in jobs:  # newest first: the newest job writing a folder decides
        if (d := job_run_dir(j, root)) is not None:
            owners.setdefault(d, j)
    out = []
    for path in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True):
        summary_path = path / "summary.json"
        item = RunListing(path, finished=summary_path.exists(), live=False)
        if item.finished:
            try:
                s = read_json_file(summary_path)
            except ValueError:
                s = None
            if isinstance(s, dict):
                item.steps = s.get("global_step") if isinstance(s.get("global_step"), int) else None
                stop = s.get("stop")
                item.stop_reason = str(stop.get("reason")) if isinstance(stop, dict) and stop.get("reason") else None
        else:
            item.live = is_live(path, owners.get(path), now)
        out.append(item)
    return out


def is_live(path: Path, job: ProcessJob | None, now: float | None = None) -> bool:
    """Whether an unfinished run is being written: its app job runs, or (started outside the app, by
    the CLI) it wrote something within LIVE_WINDOW_S seconds."""
    if (path / "summary.json").exists():
        return False
    return job.active if job is not None else is_recently_written(path, now)


def is_recently_written(path: Path, now: float | None = None, window_s: float = LIVE_WINDOW_S) -> bool:
    """Whether the run folder (or its metrics log) changed within `window_s` seconds: a run started
    outside the app (the CLI) is taken to be live while it keeps writing."""
    now = time.time() if now is None else now
    times = []
    for p in (path, path / "metrics.jsonl"):
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            pass
    return bool(times) and now - max(times) < window_s


def job_run_dir(job: ProcessJob, root: Path) -> Path | None:
    """The run folder a PPO job writes: `runs/ppo/<UTC time>-<run_name>` (None until it exists)."""
    name = job.meta.get("run_name")
    if not name:
        return None
    found = sorted(p for p in root.glob(f"*-{name}") if p.is_dir())
    return found[-1] if found else None


def job_for_run(jobs: Sequence[ProcessJob], run_dir: Path, root: Path) -> ProcessJob | None:
    """The newest app job that writes `run_dir`, if any."""
    return next((j for j in jobs if job_run_dir(j, root) == run_dir), None)


# -- numbers ------------------------------------------------------------------------------------


def _step_of(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else -1


def train_rows(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The PPO steps (rows with `objective/kl`), in log order."""
    return [m for m in metrics if TRAIN_KEY in m and isinstance(m.get("step"), (int, float))]


def steps_done(metrics: list[dict[str, Any]]) -> int:
    """The last PPO step logged (0 before the first)."""
    return int(max((m["step"] for m in train_rows(metrics)), default=0))


def total_steps(run: PPORun | None, job: ProcessJob | None = None) -> int | None:
    """Steps the run will take: the job's --max-steps, else the resolved TRL config's batch count."""
    if job is not None and isinstance(job.meta.get("max_steps"), int):
        return job.meta["max_steps"]
    if run is not None and isinstance(run.trl.get("num_total_batches"), int):
        return run.trl["num_total_batches"]
    return None


def last_value(metrics: list[dict[str, Any]], key: str) -> tuple[int, float] | None:
    """(step, value) of the last finite `key` in the log."""
    for m in reversed(metrics):
        v = as_number(m.get(key))
        if v is not None and isinstance(m.get("step"), (int, float)):
            return int(m["step"]), v
    return None


def series(metrics: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of every finite `key`, in log order."""
    out = []
    for m in metrics:
        v = as_number(m.get(key))
        if v is not None and isinstance(m.get("step"), (int, float)):
            out.append((int(m["step"]), v))
    return out


def curves_frame(metrics: list[dict[str, Any]], keys: Sequence[str]) -> pd.DataFrame:
    """Long-form curves: step, metric, value (finite numbers only)."""
    rows = [{"step": s, "metric": k, "value": v} for k in keys for s, v in series(metrics, k)]
    return pd.DataFrame(rows, columns=["step", "metric", "value"])


def fmt_number(v: Any, digits: int = 3) -> str:
    n = as_number(v)
    if n is None:
        return "n/a"
    if n != 0 and (abs(n) >= 1e5 or abs(n) < 10**-(digits)):
        return f"{n:.{digits}g}"
    return f"{n:.{digits}f}"


def fmt_duration(seconds: float | None) -> str:
    """`75` -> "1 min 15 s"; `3725` -> "1 h 02 min"."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


# -- warning rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunWarning:
    rule: str  # kl_budget | kl_target | kl_rising | length_drift | length_at_max
    message: str


def kl_rise(values: Sequence[float], window: int = KL_RISE_WINDOW) -> tuple[float, float] | None:
    """(earlier mean, recent mean) when the mean KL of the last `window` steps is at least
    KL_RISE_FACTOR x that of the `window` steps before and KL_RISE_MIN nats above it; else None."""
    if len(values) < 2 * window:
        return None
    earlier = sum(values[-2 * window : -window]) / window
    recent = sum(values[-window:]) / window
    if recent - earlier >= KL_RISE_MIN and recent >= KL_RISE_FACTOR * earlier:
        return earlier, recent
    return None


def kl_warnings(
    metrics: list[dict[str, Any]], kl_target: float | None = None, kl_budget: float | None = None
) -> list[RunWarning]:
    """KL running away, judged on `objective/kl` (nats per response, what kl_target/kl_budget are in):
    the last step above the budget, or else above KL_TARGET_FACTOR x the target; and KL rising fast."""
    kl = series(train_rows(metrics), TRAIN_KEY)
    if not kl:
        return []
    step, last = kl[-1]
    out = []
    budget, target = as_number(kl_budget), as_number(kl_target)
    if budget is not None and last > budget:
        out.append(
            RunWarning(
                "kl_budget",
                f"KL {last:.2f} nats at step {step} is above the run's budget (kl_budget = {budget:g}): "
                "the run stops and keeps its last checkpoint measured within it.",
            )
        )
    elif target is not None and last > KL_TARGET_FACTOR * target:
        out.append(
            RunWarning(
                "kl_target",
                f"KL {last:.2f} nats at step {step} is over {KL_TARGET_FACTOR:g}x the target "
                f"(kl_target = {target:g}): the adaptive coefficient is not holding it. Lower the learning "
                "rate, or raise kl_coef.",
            )
        )
    if rise := kl_rise([v for _, v in kl]):
        earlier, recent = rise
        out.append(
            RunWarning(
                "kl_rising",
                f"KL is rising fast: {recent:.2f} nats on average over the last {KL_RISE_WINDOW} steps, "
                f"{earlier:.2f} over the {KL_RISE_WINDOW} before (up to step {step}).",
            )
        )
    return out


def length_warnings(metrics: list[dict[str, Any]], response_length: int | None = None) -> list[RunWarning]:
    """Response length running away, judged on `eval/response_length` (mean tokens on the held-out
    prompts): changed by more than LENGTH_DRIFT since the first evaluation (the reference, step 0), or
    at LENGTH_AT_MAX of `response_length` (responses cut off at the limit)."""
    lengths = series(metrics, "eval/response_length")
    if not lengths:
        return []
    (first_step, first), (step, last) = lengths[0], lengths[-1]
    out = []
    if step != first_step and first > 0 and abs(last - first) / first > LENGTH_DRIFT:
        change = (last - first) / first
        out.append(
            RunWarning(
                "length_drift",
                f"Responses {'grew' if change > 0 else 'shrank'} by {abs(change):.0%} since step {first_step}: "
                f"{first:.1f} -> {last:.1f} tokens on the held-out prompts at step {step}. A policy that games "
                "the reward model often does it through length.",
            )
        )
    limit = as_number(response_length)
    if limit and last >= LENGTH_AT_MAX * limit:
        out.append(
            RunWarning(
                "length_at_max",
                f"Responses hit the length limit: {last:.1f} tokens on average at step {step}, "
                f"response_length = {limit:g}. They are cut off before their end (see stop_token and "
                "missing_eos_penalty).",
            )
        )
    return out


def run_warnings(run: PPORun) -> list[RunWarning]:
    """All warning rules on a run, with the thresholds its config.json holds."""
    o = run.options
    return kl_warnings(run.metrics, o.get("kl_target"), o.get("kl_budget")) + length_warnings(
        run.metrics, run.trl.get("response_length")
    )


def stop_message(summary: dict[str, Any] | None) -> str | None:
    """Why a finished run stopped, in words (None for a plain completed run)."""
    stop = (summary or {}).get("stop")
    if not isinstance(stop, dict) or stop.get("reason") in (None, "completed"):
        return None
    if stop.get("reason") == "kl_budget":
        kept = stop.get("kept_checkpoint") or "the starting policy"
        return (
            f"Stopped by the KL budget at step {stop.get('step')}: KL {fmt_number(stop.get('kl'), 2)} > "
            f"{fmt_number(stop.get('kl_budget'), 2)}. Saved policy: {kept} (step {stop.get('kept_step', 0)})."
        )
    if stop.get("message"):  # the NaN / exploding-loss guard words its own stop (step, value, what to do)
        return f"Stopped: {stop['message']}"
    return f"Stopped: {stop.get('reason')}."


# -- samples ------------------------------------------------------------------------------------

SAMPLE_COLUMNS = ["step", "prompt", "response", "reward", "kl", "length"]


def sample_steps(samples: list[dict[str, Any]]) -> list[int]:
    """The evaluation steps that have samples, ascending."""
    return sorted({int(s["step"]) for s in samples if isinstance(s.get("step"), (int, float))})


def samples_at(samples: list[dict[str, Any]], step: int) -> pd.DataFrame:
    """One evaluation's responses: prompt, response, reward, kl, length (in prompt order)."""
    rows = [s for s in samples if s.get("step") == step]
    rows.sort(key=lambda s: s.get("prompt_index") if isinstance(s.get("prompt_index"), int) else 0)
    return _sample_frame(rows, ["prompt", "response", "reward", "kl", "length"])


def sample_prompts(samples: list[dict[str, Any]]) -> list[str]:
    """The held-out prompts, in prompt order (each evaluation uses the same ones)."""
    first: dict[str, tuple[int, int]] = {}
    for i, s in enumerate(samples):
        p = str(s.get("prompt", ""))
        idx = s.get("prompt_index") if isinstance(s.get("prompt_index"), int) else i
        first.setdefault(p, (idx, i))
    return sorted(first, key=first.get)


def prompt_history(samples: list[dict[str, Any]], prompt: str) -> pd.DataFrame:
    """One prompt's responses across evaluations: step, response, reward, kl, length (by step)."""
    rows = [s for s in samples if str(s.get("prompt", "")) == prompt]
    rows.sort(key=lambda s: s.get("step") if isinstance(s.get("step"), (int, float)) else -1)
    return _sample_frame(rows, ["step", "response", "reward", "kl", "length"])


def _sample_frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    text = {"prompt", "response"}
    data = [{c: (str(r.get(c, "")) if c in text else as_number(r.get(c))) for c in columns} for r in rows]
    frame = pd.DataFrame(data, columns=columns)
    for c in ("step", "length"):
        if c in frame and frame[c].notna().all():
            frame[c] = frame[c].astype(int)
    return frame


# -- comparing runs -----------------------------------------------------------------------------


def compare_frame(runs: Sequence[PPORun], keys: Sequence[str] = COMPARE_KEYS) -> pd.DataFrame:
    """Long-form curves of several runs: run, step, metric, value."""
    frames = [curves_frame(r.metrics, keys).assign(run=r.id) for r in runs]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["step", "metric", "value", "run"])
    return pd.concat(frames, ignore_index=True)


def _get(d: Any, *path: str) -> Any:
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d


def compare_table(runs: Sequence[PPORun]) -> pd.DataFrame:
    """Side by side: one row per quantity, one column per run, values as display text."""

    def status(r: PPORun) -> str:
        if not r.finished:
            return "not finished"
        reason = _get(r.summary, "stop", "reason")
        return f"finished ({reason})" if reason else "finished"

    def last(r: PPORun, key: str) -> str:
        lv = last_value(train_rows(r.metrics), key)
        return fmt_number(lv[1]) if lv else "n/a"

    def text(v: Any) -> str:
        return "n/a" if v is None else str(v)

    rows: list[tuple[str, Any]] = [
        ("status", status),
        ("steps", lambda r: text(_get(r.summary, "global_step") if r.finished else steps_done(r.metrics))),
        ("policy", lambda r: text(r.options.get("policy"))),
        ("learning_rate", lambda r: text(r.trl.get("learning_rate"))),
        ("kl_coef (start)", lambda r: text(r.trl.get("kl_coef"))),
        ("kl_coef (final)", lambda r: fmt_number(_get(r.summary, "kl_coef_final"), 4)),
        ("kl_target", lambda r: text(r.options.get("kl_target"))),
        ("kl_budget", lambda r: text(r.options.get("kl_budget"))),
        ("seconds per step", lambda r: fmt_number(_get(r.summary, "seconds_per_step"), 2)),
        ("last objective/scores", lambda r: last(r, "objective/scores")),
        ("last objective/kl", lambda r: last(r, "objective/kl")),
        ("reward, reference", lambda r: fmt_number(_get(r.report, "reference", "reward_mean"))),
        ("reward, tuned", lambda r: fmt_number(_get(r.report, "policy", "reward_mean"))),
        ("reward gain", lambda r: fmt_number(_get(r.report, "reward_gain"))),
        ("win rate vs reference", lambda r: _pct(_get(r.report, "win_rate"))),
        ("win rate, 95% interval", lambda r: fmt_win_rate(report_win_rate(r.report))),
        ("KL to reference (per token)", lambda r: fmt_number(_get(r.report, "policy", "kl_to_ref"))),
        ("length, reference", lambda r: fmt_number(_get(r.report, "reference", "response_length"), 1)),
        ("length, tuned", lambda r: fmt_number(_get(r.report, "policy", "response_length"), 1)),
    ]
    ids = _unique_ids(runs)
    return pd.DataFrame(
        [{"quantity": name, **{i: fn(r) for i, r in zip(ids, runs)}} for name, fn in rows],
        columns=["quantity", *ids],
    )


def _unique_ids(runs: Sequence[PPORun]) -> list[str]:
    ids: list[str] = []
    for r in runs:
        i = r.id
        while i in ids:
            i += "'"
        ids.append(i)
    return ids


def _pct(v: Any) -> str:
    n = as_number(v)
    return "n/a" if n is None else f"{100 * n:.1f}%"


def report_win_rate(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The tuned policy's win rate over the reference {value, n, low, high, wins, ties, losses}:
    report.json's `win_rate_interval`; for older reports computed from its pairs' rewards (ties count
    half), else from `win_rate` and `prompts` (no W/T/L then). None without a win rate."""
    if not report:
        return None
    iv = report.get("win_rate_interval")
    if isinstance(iv, dict) and all(as_number(iv.get(k)) is not None for k in ("value", "n", "low", "high")):
        return iv
    outcomes = []
    for p in report_pairs(report):
        ref, pol = as_number(p.get("reward_reference")), as_number(p.get("reward_policy"))
        if ref is None or pol is None:
            outcomes = []
            break
        outcomes.append(1.0 if pol > ref else 0.5 if pol == ref else 0.0)
    if outcomes:
        return win_rate(outcomes)
    rate, n = as_number(report.get("win_rate")), as_number(report.get("prompts"))
    if rate is None or not n or not 0 <= rate <= 1:
        return None
    return proportion(rate * int(n), int(n))


def fmt_win_rate(iv: dict[str, Any] | None) -> str:
    """'1.00 [0.34, 1.00] (n=2) · W/T/L 2/0/0' (without W/T/L when the report lacks them)."""
    if iv is None:
        return "n/a"
    counts = [iv.get(k) for k in ("wins", "ties", "losses")]
    wtl = f" · W/T/L {'/'.join(str(int(c)) for c in counts)}" if all(as_number(c) is not None for c in counts) else ""
    return fmt_proportion(iv) + wtl


def phase_times(metrics: list[dict[str, Any]]) -> pd.DataFrame:
    """Where a PPO step's time goes: per `time/<phase>` key of the steps (our PPO loop logs them), the
    median seconds over the steps, its share of the sum of the medians, and the steps it was logged in.
    Phases in the order a step runs them (unknown ones after, by name); empty for runs without them."""
    values: dict[str, list[float]] = {}
    for m in train_rows(metrics):
        for k, v in m.items():
            if k.startswith(TIME_PREFIX) and (x := as_number(v)) is not None:
                values.setdefault(k[len(TIME_PREFIX) :], []).append(x)
    columns = ["phase", "median s", "share", "steps"]
    if not values:
        return pd.DataFrame(columns=columns)
    order = sorted(values, key=lambda k: (PHASES.index(k) if k in PHASES else len(PHASES), k))
    medians = {k: _median(values[k]) for k in order}
    total = sum(medians.values())
    rows = [
        {"phase": k, "median s": medians[k], "share": medians[k] / total if total else None, "steps": len(values[k])}
        for k in order
    ]
    return pd.DataFrame(rows, columns=columns)


def _median(xs: Sequence[float]) -> float:
    s, n = sorted(xs), len(xs)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def phase_chart(frame: pd.DataFrame) -> alt.Chart:
    """Horizontal bars of the median seconds per phase, in step order."""
    return (
        alt.Chart(frame)
        .mark_bar(color="#4c78a8")
        .encode(
            y=alt.Y("phase:N", sort=None, title=None),
            x=alt.X("median s:Q", title="median seconds per step"),
            tooltip=["phase", alt.Tooltip("median s:Q", format=".3f"), alt.Tooltip("share:Q", format=".1%"), "steps"],
        )
        .properties(height=alt.Step(24))
    )


def report_pairs(report: dict[str, Any] | None) -> list[dict[str, Any]]:
    pairs = (report or {}).get("pairs")
    return [p for p in pairs if isinstance(p, dict)] if isinstance(pairs, list) else []


def human_eval_frame(results: dict[str, Any]) -> pd.DataFrame:
    """Per annotator (from `rlhf.human_eval.human_evaluation_results`): the tuned policy's win rate by
    that person, its 95% Wilson interval, the labels and W/T/L."""
    rows = [
        {
            "annotator": name,
            "win rate": w["value"],
            "95% interval": f"[{w['low']:.2f}, {w['high']:.2f}]",
            "labels": w["n"],
            "W/T/L": f"{w['wins']}/{w['ties']}/{w['losses']}",
        }
        for name, w in (results.get("by_annotator") or {}).items()
    ]
    return pd.DataFrame(rows, columns=["annotator", "win rate", "95% interval", "labels", "W/T/L"])


# -- charts -------------------------------------------------------------------------------------


def curves_chart(frame: pd.DataFrame, rules: dict[str, float] | None = None, color: str = "metric") -> alt.Chart:
    """One panel: a line per metric (training solid, `eval/` dashed with points); `rules` are
    labelled horizontal dashed lines (target, budget, limit)."""
    # One line: the panel title names it, so no legend. Streamlit fits the whole chart, legend included,
    # into `height`: each legend row gets its own room so the plots of a row keep one size.
    n_lines = frame[color].nunique()
    legend = None if n_lines <= 1 else alt.Legend(orient="bottom", title=None, columns=2, labelLimit=320)
    legend_rows = 0 if legend is None else (n_lines + 1) // 2
    line = (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=18))
        .encode(
            x=alt.X("step:Q", title="step", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False), axis=alt.Axis(format=".4~r")),
            color=alt.Color(f"{color}:N", legend=legend, scale=alt.Scale(scheme="tableau10")),
            strokeDash=alt.condition("indexof(datum.metric, 'eval/') == 0", alt.value([5, 3]), alt.value([1, 0])),
            tooltip=[*(["run"] if color == "run" else []), "step", "metric", alt.Tooltip("value:Q", format=".4g")],
        )
    )
    layers: list[Any] = [line]
    for label, value in (rules or {}).items():
        v = as_number(value)
        if v is None:
            continue
        rule = pd.DataFrame({"value": [v], "label": [f"{label} {v:g}"]})
        base = alt.Chart(rule).encode(y="value:Q")
        layers.append(base.mark_rule(color="#e45756", strokeDash=[4, 4]))
        layers.append(base.mark_text(align="left", dx=4, dy=-6, color="#e45756", x=0).encode(text="label:N"))
    return alt.layer(*layers).properties(height=220 + 24 * legend_rows)


def chart_rules(run: PPORun, keys: Sequence[str]) -> dict[str, float]:
    """The reference lines a panel of `keys` gets from the run's config: the KL target and budget
    (nats per response, as `objective/kl`), the response length limit."""
    o, rules = run.options, {}
    if "objective/kl" in keys:
        rules.update({k: o[k] for k in ("kl_target", "kl_budget") if as_number(o.get(k)) is not None})
    if "eval/response_length" in keys and as_number(run.trl.get("response_length")) is not None:
        rules["response_length"] = run.trl["response_length"]
    return rules


# -- starting a run -----------------------------------------------------------------------------


@dataclass
class PPORequest:
    """What the "start a run" form asks for; `build_ppo_command` turns it into the CLI call."""

    reward_run: str
    config: str | None = None  # a YAML file (None: the built-in defaults)
    policy: str | None = None  # None: the config's (else `default`)
    max_steps: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --set KEY=VALUE
    name: str = "app"
    run_name: str = ""  # name + a random suffix: the run folder ends with it (set by `with_run_name`)

    def with_run_name(self) -> PPORequest:
        self.run_name = f"{self.name}-{secrets.token_hex(3)}"
        return self


def list_ppo_configs(folder: Path = CONFIGS_DIR) -> list[Path]:
    """The PPO configs shipped with the project (`pipelines/configs/*_ppo.yaml`)."""
    return sorted(folder.glob("*_ppo.yaml")) if folder.is_dir() else []


def preview_config(path: Path) -> tuple[str, str]:
    """(the YAML's text, the policy it names) for the form; a broken file says so (starting refuses it)."""
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return f"# cannot read {path.name}: {e}", "default"
    policy = data.get("policy", "default") if isinstance(data, dict) else "default"
    return text, str(policy)


def yaml_scalar(value: Any) -> str:
    """A value as `--set` reads it back (YAML): 1e-5 -> "1.0e-05" (PyYAML reads "1e-05" as a string)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def parse_override_lines(text: str) -> tuple[dict[str, Any], list[str]]:
    """`KEY=VALUE` lines (blank lines and `#` comments skipped) -> (overrides, problems)."""
    from rlhf.configs import parse_sets
    from rlhf.errors import ValidationError

    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    try:
        return parse_sets(lines), []
    except ValidationError as e:
        return {}, list(e.problems)


def request_problems(req: PPORequest, trl_fields: set[str]) -> list[str]:
    """Everything wrong with a request, at once (empty: fine to start). `trl_fields`: TRL's PPOConfig
    field names (`rlhf.ppo.ppo_config_fields()`)."""
    from rlhf.configs import build_options, read_yaml
    from rlhf.errors import ValidationError, WorkbenchError
    from rlhf.ppo import PPOOptions

    problems = []
    reward = Path(req.reward_run)
    if not (reward / "model").is_dir():
        problems.append(f"reward run {reward.name} has no model/ folder (did it finish?)")
    config: dict[str, Any] = {}
    if req.config:
        try:
            config = read_yaml(Path(req.config))
        except WorkbenchError as e:
            problems.append(str(e))
    if req.policy is not None and req.policy not in ("default", "tiny"):
        p = Path(req.policy).expanduser()
        if not p.is_dir() or not (p / "config.json").exists():
            problems.append(f"policy folder {req.policy} does not exist or holds no model (config.json)")
    if req.max_steps is not None and req.max_steps < 1:
        problems.append(f"max steps must be >= 1, got {req.max_steps}")
    if not NAME_RE.match(req.name):
        problems.append(f"run name {req.name!r}: use 1-40 letters, digits, - or _")
    for key in RESERVED_OVERRIDES:
        if key in req.overrides:
            problems.append(f"`{key}` is set by the app; leave it out of the overrides")
    sets = {k: v for k, v in req.overrides.items() if k not in RESERVED_OVERRIDES}
    if req.policy is not None:
        sets["policy"] = req.policy
    try:
        build_options(PPOOptions, config, sets, trl_fields, "settings")
    except ValidationError as e:
        problems += e.problems
    except WorkbenchError as e:
        problems.append(str(e))
    return problems


def build_ppo_command(req: PPORequest, python: str = sys.executable) -> list[str]:
    """`python -m rlhf ppo ...` for a request (the same CLI a user would type)."""
    cmd = [python, "-m", "rlhf", "ppo", "--reward", str(req.reward_run)]
    if req.config:
        cmd += ["--config", str(req.config)]
    if req.policy is not None:
        cmd += ["--policy", str(req.policy)]
    if req.max_steps is not None:
        cmd += ["--max-steps", str(req.max_steps)]
    for key, value in req.overrides.items():
        cmd += ["--set", f"{key}={yaml_scalar(value)}"]
    if req.run_name:
        cmd += ["--set", f"name={req.run_name}"]
    return cmd


def describe_request(req: PPORequest) -> str:
    parts = [f"reward {Path(req.reward_run).name}", Path(req.config).name if req.config else "default settings"]
    if req.policy is not None:
        parts.append(f"policy {req.policy}")
    parts.append(f"{req.max_steps} steps" if req.max_steps else "all prompts")
    parts += [f"{k}={yaml_scalar(v)}" for k, v in req.overrides.items()]
    return " · ".join(parts)


def trl_field_names() -> set[str]:
    """TRL's PPOConfig fields that `--set` / `trl:` may name (imports TRL: ~5 s the first time)."""
    from rlhf.ppo import ppo_config_fields

    return ppo_config_fields()
