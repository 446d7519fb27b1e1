"""Two CPU processes (torchrun, gloo) run the same reward training as one process would: one run
folder, metrics logged once per step, the model saved once, the loss going down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from reward_data import marker_export

CONFIG = Path(__file__).parents[1] / "pipelines" / "configs" / "tiny_reward.yaml"


def test_reward_training_with_two_processes(store, home, tmp_path):
    export = marker_export(store, tmp_path)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
        "-m",
        "rlhf",
        "train-reward",
        str(export),
        "--config",
        str(CONFIG),
        "--max-steps",
        "6",
        "--set",
        "logging_steps=1",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "RLHF_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("reward run:") == 1  # one report per launch
    runs = list((home / "runs" / "reward").iterdir())
    assert len(runs) == 1  # both processes wrote to one folder
    rows = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in rows if "loss" in m]
    assert [m["step"] for m in train] == [1, 2, 3, 4, 5, 6]  # each step logged once, not twice
    # 59 train pairs, batch 8 per process x 2 processes = 16 pairs a step: 4 steps an epoch.
    assert train[3]["epoch"] == 1.0
    assert train[-1]["loss"] < train[0]["loss"]
    assert len(list((runs[0] / "model").glob("*.safetensors"))) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["global_step"] == 6 and summary["eval_accuracy"] is not None
