"""What the Reward model page shows, without Streamlit: reward runs on disk, their report as tables and
Altair charts, and scoring typed text with a run's model. The page (`app_pages/reward.py`) only lays
these out, so everything here is tested directly.

Reads `runs/reward/<id>/` as `rlhf.reward.train_reward` writes it: summary.json (its presence marks a
finished run), eval_report.json (absent without a held-out split), metrics.jsonl, config.json, model/.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd

from rlhf.reward import encode_pair_side, score_prefixes, score_sequences
from rlhf.runs import MetricsLog
from rlhf.stats import fmt_proportion, learning_verdict, proportion

SLICES = {  # report key -> (title, what a slice is)
    "by_strength": ("By preference strength", "strength"),
    "by_category": ("By category", "category"),
    "by_agreement": ("By annotator agreement", "agreement"),
    "position": ("By side the chosen response was shown on", "chosen side"),
}
REPORT_KEYS = ("pairs", "accuracy", *SLICES, "calibration", "length_bias", "misranked", "misranked_total")
CURVES = {  # chart title -> metrics.jsonl keys drawn on it (TRL's names)
    "Loss": ("loss", "eval_loss"),
    "Pairwise accuracy": ("accuracy", "eval_accuracy"),
    "Margin (r_chosen - r_rejected)": ("margin", "eval_margin"),
    "Mean reward": ("mean_reward", "eval_mean_reward"),
}
MODES = {  # summary.json `mode` -> what was trained
    "head": "score head only, on the frozen base model's features",
    "full": "full fine-tune",
    "lora": "LoRA adapters (merged into model/)",
}
VERDICTS = {"learned": "learned", "learned_nothing": "LEARNED NOTHING", "too_small": "too few held-out pairs to tell"}


# -- runs on disk ----------------------------------------------------------------------------


@dataclass
class RunInfo:
    """One finished reward run as the run picker lists it."""

    path: Path
    finished: datetime  # when summary.json was written (local time)
    eval_accuracy: float | None = None
    interval: dict[str, Any] | None = None  # held-out accuracy with n and 95% interval (`accuracy_interval`)
    learning: str | None = None  # the verdict's status (`learning`), None when unknown
    error: str | None = None  # summary.json unreadable

    @property
    def id(self) -> str:
        return self.path.name

    def label(self) -> str:
        if self.error:
            acc = "summary unreadable"
        elif self.interval and self.interval.get("value") is not None:
            acc = f"held-out accuracy {fmt_proportion(self.interval)}"
        else:
            acc = f"held-out accuracy {pct(self.eval_accuracy)}"
        verdict = f" · {VERDICTS[self.learning]}" if self.learning in VERDICTS and self.learning != "learned" else ""
        return f"{self.id} · {acc}{verdict} · {self.finished:%Y-%m-%d %H:%M}"


def list_reward_runs(root: Path) -> list[RunInfo]:
    """Finished runs under `root` (folders holding summary.json), newest first."""
    if not root.is_dir():
        return []
    runs = []
    for summary_path in root.glob("*/summary.json"):
        finished = datetime.fromtimestamp(summary_path.stat().st_mtime)
        info = RunInfo(summary_path.parent, finished)
        try:
            summary = read_json_file(summary_path)
            if isinstance(summary, dict):
                info.eval_accuracy = as_number(summary.get("eval_accuracy"))
                if "test_pairs" in summary or "eval_accuracy_interval" in summary:  # else n is unknown
                    info.interval = accuracy_interval(summary)
                    info.learning = learning(summary)["status"]
        except ValueError as e:
            info.error = str(e)
        runs.append(info)
    return sorted(runs, key=lambda r: (r.finished, r.id), reverse=True)


def read_json_file(path: Path) -> Any:
    """A JSON file's content; ValueError with the file name and position when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.name} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path.name} cannot be read: {e}") from e


@dataclass
class RewardRun:
    """Everything the page shows about one run; `problems` holds one line per unreadable file."""

    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def has_model(self) -> bool:
        return (self.path / "model" / "config.json").exists()


def read_json_objects(run: Any, files: dict[str, str]) -> None:
    """Set `run.<attr>` from each `file name -> attr` JSON object in `run.path` that exists;
    an unreadable or non-object file becomes a message in `run.problems` instead of an exception."""
    for name, attr in files.items():
        file = run.path / name
        if not file.exists():
            continue
        try:
            data = read_json_file(file)
        except ValueError as e:
            run.problems.append(str(e))
            continue
        if not isinstance(data, dict):
            run.problems.append(f"{name} should hold a JSON object, not {type(data).__name__}")
            continue
        setattr(run, attr, data)


def load_reward_run(path: Path) -> RewardRun:
    """Read a run folder, collecting every unreadable or malformed file instead of raising."""
    run = RewardRun(Path(path))
    read_json_objects(run, {"summary.json": "summary", "config.json": "config", "eval_report.json": "report"})
    if run.report is not None and (problems := report_problems(run.report)):
        run.problems.append(f"eval_report.json: {'; '.join(problems)} (written by another version?)")
        run.report = None
    run.metrics = MetricsLog(run.path).read()  # skips lines cut by a crash
    return run


def report_problems(report: dict[str, Any]) -> list[str]:
    """What in an eval report does not have the shape `build_eval_report` gives it (empty: fine)."""
    missing = [k for k in REPORT_KEYS if k not in report]
    problems = [f"lacks {', '.join(missing)}"] if missing else []
    for key in SLICES:
        v = report.get(key, {})
        if not isinstance(v, dict) or not all(isinstance(x, dict) for x in v.values()):
            problems.append(f"`{key}` should map each slice to {{n, accuracy}}")
    for key in ("calibration", "length_bias"):
        if not isinstance(report.get(key, {}), dict):
            problems.append(f"`{key}` should be an object")
    lb = report.get("length_bias") if isinstance(report.get("length_bias"), dict) else {}
    for key in ("chosen_shorter", "chosen_longer"):
        if not isinstance(lb.get(key, {}), dict):
            problems.append(f"`length_bias.{key}` should be an object {{n, accuracy}}")
    bins = report.get("calibration", {}).get("bins", []) if isinstance(report.get("calibration"), dict) else []
    if not isinstance(bins, list) or not all(isinstance(b, dict) for b in bins):
        problems.append("`calibration.bins` should be a list of objects")
    misranked = report.get("misranked", [])
    if not isinstance(misranked, list) or not all(isinstance(m, dict) for m in misranked):
        problems.append("`misranked` should be a list of objects")
    return problems


# -- numbers and tables ----------------------------------------------------------------------


def as_number(v: Any) -> float | None:
    """A finite float, or None (missing, null, or a NaN kept as text in metrics.jsonl)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def pct(v: Any, digits: int = 1) -> str:
    n = as_number(v)
    return "n/a" if n is None else f"{100 * n:.{digits}f}%"


def accuracy_delta(summary: dict[str, Any]) -> str | None:
    """Held-out accuracy gained by training, in points ("+19.0 pts"), for st.metric's delta."""
    after, before = as_number(summary.get("eval_accuracy")), as_number(summary.get("eval_accuracy_before"))
    if after is None or before is None:
        return None
    return f"{100 * (after - before):+.1f} pts vs before training"


def _count(v: Any) -> int:
    n = as_number(v)
    return int(n) if n is not None and n >= 0 else 0


def _interval(p: Any, accuracy: Any, n: Any) -> dict[str, Any]:
    """A proportion dict {value, n, low, high}: `p` when it is one, else computed from accuracy and n
    (runs written before the intervals were recorded)."""
    if isinstance(p, dict) and all(as_number(p.get(k)) is not None for k in ("value", "low", "high")):
        return {"value": float(p["value"]), "n": _count(p.get("n")), "low": float(p["low"]), "high": float(p["high"])}
    acc, count = as_number(accuracy), _count(n)
    if acc is None or not count or not 0 <= acc <= 1:
        return proportion(0, 0)
    return proportion(round(acc * count), count)


def accuracy_interval(summary: dict[str, Any]) -> dict[str, Any]:
    """The held-out accuracy with its n and 95% Wilson interval (summary.json's `eval_accuracy_interval`,
    or computed from `eval_accuracy` and `test_pairs` for older runs)."""
    return _interval(summary.get("eval_accuracy_interval"), summary.get("eval_accuracy"), summary.get("test_pairs"))


def report_interval(report: dict[str, Any]) -> dict[str, Any]:
    """An eval report's overall accuracy with n and 95% interval (`accuracy_interval`, or computed)."""
    return _interval(report.get("accuracy_interval"), report.get("accuracy"), report.get("pairs"))


def learning(summary: dict[str, Any]) -> dict[str, str]:
    """The run's "did it learn" verdict {status, message}: summary.json's `learning`, or for older runs
    `learning_verdict` of its held-out accuracy, pairs and untrained accuracy."""
    v = summary.get("learning")
    if isinstance(v, dict) and isinstance(v.get("status"), str) and isinstance(v.get("message"), str):
        return {"status": v["status"], "message": v["message"]}
    acc = as_number(summary.get("eval_accuracy"))
    return learning_verdict(acc, _count(summary.get("test_pairs")), as_number(summary.get("eval_accuracy_before")))


def verdict_banner(verdict: dict[str, str]) -> str:
    """The red banner's text: '**Learning verdict: LEARNED NOTHING.** The reward model ...'."""
    words = VERDICTS.get(verdict["status"], verdict["status"])
    message = verdict["message"]
    return f"**Learning verdict: {words}.** {message[:1].upper()}{message[1:]}"


def held_out_line(summary: dict[str, Any]) -> str:
    """'Held-out accuracy 0.60 [0.23, 0.88] (n=5), 95% Wilson interval · untrained model 0.40 on the same
    pairs' (fmt_proportion: the one way the workbench prints a proportion)."""
    before = as_number(summary.get("eval_accuracy_before"))
    untrained = "n/a" if before is None else f"{before:.2f}"
    return (
        f"Held-out accuracy {fmt_proportion(accuracy_interval(summary))}, 95% Wilson interval · "
        f"untrained model {untrained} on the same pairs"
    )


def training_line(summary: dict[str, Any]) -> str | None:
    """What was trained (`mode`) and, for a head run, the features the head reads and why (`head`)."""
    mode = summary.get("mode")
    if not isinstance(mode, str):
        return None
    parts = [f"Mode: **{mode}** ({MODES[mode]})" if mode in MODES else f"Mode: **{mode}**"]
    head = summary.get("head")
    if isinstance(head, dict):
        parts.append(f"features: **{head_features(head.get('features'))}**")
        val, n = as_number(head.get("validation_accuracy")), _count(head.get("validation_pairs"))
        if val is not None:
            parts.append(f"validation accuracy {fmt_proportion(proportion(round(val * n), n)) if n else f'{val:.2f}'}")
        cands = head.get("candidates")
        if isinstance(cands, dict) and cands:
            parts.append(f"chosen among {len(cands)} feature kinds")
        for key, name in (("l2", "L2"), ("epochs", "epochs")):
            if as_number(head.get(key)) is not None:
                parts.append(f"{name} {head[key]:g}")
    return " · ".join(parts)


def head_features(kind: Any) -> str:
    """A head's feature kind in words: "last" / "pool<L>" (rlhf.reward_head.sequence_features)."""
    if kind == "last":
        return "last token of the final layer"
    if isinstance(kind, str) and kind.startswith("pool") and kind[4:].isdigit():
        return f"[mean, max] of layer {kind[4:]} over the response"
    return str(kind)


def candidates_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """A head run's feature kinds with their validation accuracy (best first; the chosen one marked)."""
    head = summary.get("head") if isinstance(summary.get("head"), dict) else {}
    cands = head.get("candidates") if isinstance(head.get("candidates"), dict) else {}
    rows = [
        {
            "features": head_features(k),
            "validation accuracy": as_number(v),
            "chosen": k == head.get("features"),
        }
        for k, v in cands.items()
    ]
    frame = pd.DataFrame(rows, columns=["features", "validation accuracy", "chosen"])
    return frame.sort_values("validation accuracy", ascending=False, na_position="last", ignore_index=True)


def fmt_interval(low: Any, high: Any) -> str:
    lo, hi = as_number(low), as_number(high)
    return "n/a" if lo is None or hi is None else f"[{lo:.2f}, {hi:.2f}]"


def slice_interval(v: dict[str, Any]) -> str:
    """A slice's 95% interval as text ('[0.23, 0.88]'): its `low`/`high`, else from accuracy and n."""
    iv = _interval(
        {"value": v.get("accuracy"), "low": v.get("low"), "high": v.get("high")}, v.get("accuracy"), v.get("n")
    )
    return fmt_interval(iv["low"], iv["high"]) if iv["value"] is not None else "n/a"


def dropped_too_long(summary: dict[str, Any]) -> int | None:
    d = summary.get("dropped_too_long")
    if isinstance(d, dict):
        return int(sum(v for v in d.values() if isinstance(v, (int, float))))
    return None


INTERVAL = "95% interval"


def slice_frame(report: dict[str, Any], key: str) -> pd.DataFrame:
    """One report slice as rows: slice, pairs, accuracy, 95% interval (+ annotator agreement for
    `by_agreement`)."""
    rows = []
    for name, v in (report.get(key) or {}).items():
        row = {
            "slice": str(name),
            "pairs": int(as_number(v.get("n")) or 0),
            "accuracy": as_number(v.get("accuracy")),
            INTERVAL: slice_interval(v),
        }
        if key == "by_agreement":
            row["annotator agreement"] = as_number(v.get("annotator_agreement"))
        rows.append(row)
    columns = ["slice", "pairs", "accuracy", INTERVAL] + (["annotator agreement"] if key == "by_agreement" else [])
    return pd.DataFrame(rows, columns=columns)


def slices_table(report: dict[str, Any]) -> pd.DataFrame:
    """Every slice of the report in one long table: group, slice, pairs, accuracy, 95% interval."""
    columns = ["group", "slice", "pairs", "accuracy", INTERVAL]
    frames = [slice_frame(report, key).assign(group=label) for key, (_, label) in SLICES.items()]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def calibration_frame(report: dict[str, Any]) -> pd.DataFrame:
    """Reliability-diagram bins: lo, hi, n, mean_predicted, observed (non-empty bins only)."""
    bins = (report.get("calibration") or {}).get("bins") or []
    return pd.DataFrame(bins, columns=["lo", "hi", "n", "mean_predicted", "observed"])


def misranked_frame(report: dict[str, Any]) -> pd.DataFrame:
    """The misranked pairs, worst first (as the report stores them), for an overview table."""
    cols = ["comparison_id", "category", "gap", "r_chosen", "r_rejected", "prompt"]
    return pd.DataFrame([{c: m.get(c) for c in cols} for m in report.get("misranked") or []], columns=cols)


def curves_frame(metrics: list[dict[str, Any]], keys: tuple[str, ...]) -> pd.DataFrame:
    """Long-form training curves: step, metric, value (only finite numbers; eval rows included)."""
    rows = [
        {"step": m["step"], "metric": k, "value": as_number(m.get(k))}
        for m in metrics
        if isinstance(m.get("step"), (int, float))
        for k in keys
        if as_number(m.get(k)) is not None
    ]
    return pd.DataFrame(rows, columns=["step", "metric", "value"])


# -- charts ----------------------------------------------------------------------------------


def accuracy_chart(frame: pd.DataFrame, overall: float | None) -> alt.Chart:
    """Horizontal bars of accuracy per slice, pair counts as labels; dashed rules: chance (0.5) and overall."""
    base = alt.Chart(frame).encode(
        y=alt.Y("slice:N", title=None, sort=None),
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title="accuracy"),
        tooltip=["slice", "pairs", alt.Tooltip("accuracy:Q", format=".1%"), alt.Tooltip(f"{INTERVAL}:N")],
    )
    bars = base.mark_bar(color="#4c78a8")
    counts = base.mark_text(align="left", dx=4, color="gray").encode(text=alt.Text("pairs:Q", format="d"))
    layers = [bars, counts, alt.Chart().mark_rule(color="gray", strokeDash=[2, 2]).encode(x=alt.datum(0.5))]
    if overall is not None:
        layers.append(alt.Chart().mark_rule(color="#e45756", strokeDash=[5, 3]).encode(x=alt.datum(overall)))
    # A band step, not a pixel height: Streamlit squeezes a fixed-height layered band chart to nothing.
    return alt.layer(*layers).properties(height=alt.Step(30))


def reliability_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Predicted P(preferred) against how often that response was the preferred one; the diagonal is
    perfect calibration. Point size = responses in the bin."""
    unit = alt.Scale(domain=[0, 1])
    diagonal = (
        alt.Chart(pd.DataFrame({"p": [0.0, 1.0]}))
        .mark_line(color="gray", strokeDash=[4, 4])
        .encode(x=alt.X("p:Q", scale=unit), y=alt.Y("p:Q", scale=unit))
    )
    base = alt.Chart(frame).encode(
        x=alt.X("mean_predicted:Q", scale=unit, axis=alt.Axis(format="%"), title="predicted P(preferred)"),
        y=alt.Y("observed:Q", scale=unit, axis=alt.Axis(format="%"), title="observed frequency"),
        tooltip=[
            alt.Tooltip("lo:Q", title="bin from", format=".1f"),
            alt.Tooltip("hi:Q", title="bin to", format=".1f"),
            "n",
            alt.Tooltip("mean_predicted:Q", format=".3f"),
            alt.Tooltip("observed:Q", format=".3f"),
        ],
    )
    line = base.mark_line(color="#4c78a8")
    points = base.mark_circle(color="#4c78a8", opacity=0.9).encode(size=alt.Size("n:Q", legend=None))
    return alt.layer(diagonal, line, points).properties(height=320)


def curves_chart(frame: pd.DataFrame) -> alt.Chart:
    """One training-curve panel: a line per metric (train solid, eval dashed)."""
    return (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=20))
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
            color=alt.Color("metric:N", legend=alt.Legend(orient="right", title=None)),
            strokeDash=alt.condition("indexof(datum.metric, 'eval_') == 0", alt.value([5, 3]), alt.value([1, 0])),
            tooltip=["step", "metric", alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(height=220)
    )


def scores_chart(frame: pd.DataFrame) -> alt.Chart:
    """Rewards of the typed responses side by side."""
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("response:N", sort=None, title=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("reward:Q"),
            color=alt.condition("datum.reward >= 0", alt.value("#4c78a8"), alt.value("#e45756")),
            tooltip=["response", alt.Tooltip("reward:Q", format=".4f"), "tokens"],
        )
        .properties(height=220)
    )


def prefix_chart(points: list[dict[str, Any]], reward_mean: float | None = None) -> alt.LayerChart:
    """Reward of prompt + each response prefix against the prefix length; dashed: the training mean."""
    frame = pd.DataFrame(
        [{"tokens": p["tokens"], "reward": p["reward"], "ends with": p["text"][-60:]} for p in points],
        columns=["tokens", "reward", "ends with"],
    )
    line = (
        alt.Chart(frame)
        .mark_line(point=True, color="#4c78a8")
        .encode(
            x=alt.X("tokens:Q", title="response tokens so far"),
            y=alt.Y("reward:Q", title="reward", scale=alt.Scale(zero=False)),
            tooltip=["tokens", alt.Tooltip("reward:Q", format=".4f"), "ends with"],
        )
    )
    layers = [line]
    if reward_mean is not None:
        layers.append(alt.Chart().mark_rule(color="gray", strokeDash=[4, 4]).encode(y=alt.datum(reward_mean)))
    return alt.layer(*layers).properties(height=300)


# -- scoring typed text ----------------------------------------------------------------------


def model_prompt(tok: Any, prompt: str) -> str | list[dict[str, str]]:
    """The prompt as training showed it: chat messages when the tokenizer has a chat template (as
    `train_reward` converts text pairs for chat models), else plain text."""
    return [{"role": "user", "content": prompt}] if getattr(tok, "chat_template", None) else prompt


def score_responses(model: Any, tok: Any, prompt: str, responses: list[str], bf16: bool = False) -> pd.DataFrame:
    """Reward of each response to `prompt`: response, tokens, reward (input order)."""
    p = model_prompt(tok, prompt)
    seqs = [encode_pair_side(tok, p, r) for r in responses]
    rewards = score_sequences(model, seqs, tok.pad_token_id, bf16=bf16)
    return pd.DataFrame(
        {
            "response": [f"Response {i + 1}" for i in range(len(responses))],
            "tokens": [len(tok(r, add_special_tokens=False)["input_ids"]) for r in responses],
            "reward": rewards,
        }
    )


def normalised(frame: pd.DataFrame, mean: Any, std: Any) -> pd.DataFrame:
    """Add `normalised` = (reward - training mean) / training std: what PPO will see."""
    m, s = as_number(mean), as_number(std)
    if m is None or not s:
        return frame
    return frame.assign(normalised=(frame["reward"] - m) / s)


def preference_probability(r_a: float, r_b: float) -> float:
    """Bradley-Terry P(a preferred over b) = sigmoid(r_a - r_b), the reward model's training objective."""
    d = float(r_a) - float(r_b)
    return 1 / (1 + math.exp(-d)) if d >= 0 else math.exp(d) / (1 + math.exp(d))


def trace_prefixes(
    model: Any, tok: Any, prompt: str, response: str, max_points: int = 48, bf16: bool = False
) -> list[dict[str, Any]]:
    """How the reward builds up along `response` (see `rlhf.reward.score_prefixes`)."""
    return score_prefixes(model, tok, model_prompt(tok, prompt), response, max_points=max_points, bf16=bf16)
