"""The data behind the Rounds page: the store's labeling rounds, what closing one did, the `rlhf round`
command the page starts in the background, and its stage progress read from the job's log.
No Streamlit here (unit-tested directly)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.pipeline import store_rounds_dir
from rlhf.runs import read_json

REPO = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO / "pipelines" / "configs"
ROUND_STAGES = ("export", "reward", "ppo", "generate")  # in the order `rlhf round` runs them
STAGE_TITLES = {
    "export": "Export every label",
    "reward": "Train the reward model",
    "ppo": "PPO from the previous policy",
    "generate": "Candidates for the next round",
}
STOPPED_BEFORE_PPO = "pass --force to run PPO anyway"  # the end of `rlhf round`'s error when it stops
_PROGRESS = re.compile(r"^round (\d+) (\w+): (running|skipped|done) \(")


def pipeline_configs() -> list[Path]:
    """The shipped pipeline YAMLs (those with generation, reward and ppo sections), by name."""
    out = []
    for p in sorted(CONFIGS_DIR.glob("*.yaml")):
        text = p.read_text(encoding="utf-8")
        if all(re.search(rf"^{s}:", text, re.M) for s in ("generation", "reward", "ppo")):
            out.append(p)
    return out


@dataclass
class RoundRow:
    round: int
    comparisons: int
    labeled: int  # comparisons with at least one submitted label
    labels: int
    closed: dict[str, Any] | None  # rounds/round-N/round.json once `rlhf round` closed it


def round_rows(store: Any, root: Path | None = None) -> list[RoundRow]:
    """One row per round that has candidates, oldest first."""
    from sqlalchemy import distinct, func, select

    from rlhf.schema import Comparison, Label

    root = root or store_rounds_dir()
    with store.session() as s:
        comps = dict(s.execute(select(Comparison.round, func.count(Comparison.id)).group_by(Comparison.round)).all())
        q = (
            select(Comparison.round, func.count(distinct(Label.comparison_id)), func.count(Label.id))
            .join(Label, Label.comparison_id == Comparison.id)
            .where(Label.status == "submitted")
            .group_by(Comparison.round)
        )
        labeled = {r: (n_c, n_l) for r, n_c, n_l in s.execute(q).all()}
    rows = []
    for n in sorted(comps):
        summary = root / f"round-{n}" / "round.json"
        closed = read_json(summary) if summary.exists() else None
        rows.append(RoundRow(n, comps[n], *labeled.get(n, (0, 0)), closed))
    return rows


def table(rows: list[RoundRow]) -> list[dict[str, Any]]:
    """The rounds as table rows for the page."""
    out = []
    for r in rows:
        c = r.closed or {}
        ppo = c.get("ppo_eval") or {}
        out.append(
            {
                "round": r.round,
                "comparisons": r.comparisons,
                "labeled": r.labeled,
                "labels": r.labels,
                "closed": bool(c),
                "reward model accuracy": c.get("reward_eval_accuracy"),
                "PPO reward gain": ppo.get("reward_gain"),
                "KL to start": (ppo.get("policy") or {}).get("kl_to_ref"),
                "policy": c.get("policy"),
            }
        )
    return out


def round_command(config: Path, force: bool = False) -> list[str]:
    """`rlhf round CONFIG`; `force`: run PPO even if the reward model learned nothing (`--force`)."""
    return [sys.executable, "-m", "rlhf", "round", str(config), *(["--force"] if force else [])]


def read_log(path: Path) -> str:
    """A job's whole log ('' before it exists): the progress lines are near its start."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def stage_progress(log: str) -> dict[str, str]:
    """{stage: running | skipped | done} from `rlhf round`'s progress lines, the latest per stage."""
    out: dict[str, str] = {}
    for line in log.splitlines():
        if m := _PROGRESS.match(line.strip()):
            out[m.group(2)] = m.group(3)
    return out


def pipeline_reports(home: Path) -> list[Path]:
    """Every pipeline round's report.html under `<home>/pipeline/<name>/round-<N>/`, newest first."""
    found = (home / "pipeline").glob("*/round-*/report.html")
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def report_label(path: Path) -> str:
    """`<pipeline> round <N>` for a report path."""
    return f"{path.parent.parent.name} {path.parent.name.replace('-', ' ')}"
