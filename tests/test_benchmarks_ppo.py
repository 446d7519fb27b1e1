"""benchmarks/ppo.py end to end on the tiny model (`--quick`): five fresh child processes
(reward run, ours, TRL, ours with and without evaluation), ~1 minute on two CPU cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = (
    "ratio_episodes_per_s",
    "ours_s_per_step",
    "trl_s_per_step",
    "ours_peak_rss_gb",
    "trl_peak_rss_gb",
    "overhead_eval_pct",
    "ours_phases",
    "trl_phases",
    "cpu",
    "model",
    "steps",
    "repeats",
)


@pytest.mark.slow
def test_quick_run_prints_one_json_line(tmp_path: Path) -> None:
    env = {**os.environ, "RLHF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ppo.py"), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(KEYS) <= set(res)
    assert res["model"] == "tiny" and res["steps"] == 3 and res["repeats"] == 1
    for side in ("ours", "trl"):
        assert res[f"{side}_s_per_step"] > 0 and res[f"{side}_peak_rss_gb"] > 0
    assert res["ratio_episodes_per_s"] == pytest.approx(res["trl_s_per_step"] / res["ours_s_per_step"])
    # Ours: the frozen-backbone reward comes from the reference pass; TRL: its separate passes.
    assert res["reward_in_reference_pass"] is True
    assert {"generation", "reference_and_reward", "train_forward", "train_backward", "optimizer"} <= set(
        res["ours_phases"]
    )
    assert {"generation", "reference", "value", "reward", "train_forward", "train_backward", "optimizer"} <= set(
        res["trl_phases"]
    )
    assert res["train_prompts"]["ours"] == res["train_prompts"]["trl"]  # the same prompts
