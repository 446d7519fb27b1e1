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


def free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def torchrun_rlhf(home: Path, *args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m rlhf ARGS` on a free rendezvous port, in the data home `home`."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", free_port(), "-m", "rlhf", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "RLHF_HOME": str(home)})


def test_reward_training_with_two_processes(store, home, tmp_path):
    export = marker_export(store, tmp_path)
    r = torchrun_rlhf(
        home,
        "train-reward",
        str(export),
        "--config",
        str(CONFIG),
        "--max-steps",
        "6",
        "--set",
        "logging_steps=1",
    )
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


def test_ppo_with_two_processes(store, home, tmp_path):
    from reward_data import write_marker_preferences

    from rlhf.io import ExportOptions, export_preferences, import_preferences, import_prompts
    from rlhf.reward import RewardOptions, train_reward

    configs = Path(__file__).parents[1] / "pipelines" / "configs"
    import_preferences(store, write_marker_preferences(tmp_path / "prefs.jsonl", 40))
    export_preferences(store, tmp_path / "export", ExportOptions(test_fraction=0.25))
    reward = train_reward(
        tmp_path / "export",
        RewardOptions(model="tiny", early_stopping_patience=0, freeze_backbone=False),
        {},
        max_steps=2,
    )
    import_prompts(store, Path(__file__).parents[1] / "rlhf" / "data" / "demo_prompts.jsonl")
    r = torchrun_rlhf(
        home,
        "ppo",
        "--reward",
        str(reward),
        "--config",
        str(configs / "tiny_ppo.yaml"),
        "--max-steps",
        "4",
        "--set",
        "save_steps=2",
    )
    assert r.returncode == 0, "\n".join(line for line in r.stderr.splitlines() if "Error" in line)[-3000:]
    assert r.stdout.count("PPO run:") == 1
    runs = list((home / "runs" / "ppo").iterdir())
    assert len(runs) == 1
    rows = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rows if "objective/kl" in m] == [1, 2, 3, 4]  # logged once per step
    assert all("kl/coef" in m for m in rows if "objective/kl" in m)
    assert len(list((runs[0] / "policy").glob("*.safetensors"))) == 1
    assert (runs[0] / "value").is_dir() and json.loads((runs[0] / "summary.json").read_text())
