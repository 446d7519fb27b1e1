"""Faults: kill -9 of a training process (reward model, PPO) in the middle of a run, then resume.

A child process (train_child.py) trains the tiny model with a checkpoint every 2 steps; once a
checkpoint at step >= 4 is complete the parent SIGKILLs it, leaves a half-written checkpoint beside
the real ones (as a kill during a save does), and resumes in a new process. After the resume: the run
completed, metrics.jsonl holds every step exactly once, and (reward) the numbers equal an
uninterrupted run's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reward_data import marker_export
from reward_run import write_fake_reward_run

from rlhf.runs import MetricsLog, read_json, read_weights

CHILD = Path(__file__).with_name("train_child.py")
STEPS = 12


def run_child(*args: str, timeout: float = 120) -> None:
    r = subprocess.run([sys.executable, str(CHILD), *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0 and r.stdout.strip().endswith("done"), r.stderr[-3000:]


def kill_after_checkpoint(args: list[str], run_dir: Path, complete, key: str, min_step: int = 4) -> tuple[int, float]:
    """Start a child; SIGKILL it once a complete checkpoint at step >= `min_step` exists and a later
    step was logged (rows the resume must drop). The child sleeps 0.5 s at each step's end, before
    that step's checkpoint is saved: the kill lands between two checkpoints.
    Returns (the newest complete checkpoint's step at the kill, seconds from start to kill)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        while True:
            done = complete(run_dir)
            if done and max(done) >= min_step and any(m["step"] > max(done) for m in step_rows(run_dir, key)):
                break
            assert proc.poll() is None, f"child ended before the kill: {proc.stderr.read()[-3000:]}"
            assert time.perf_counter() - t0 < 120, "no checkpoint within 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no atexit, no flush in the child
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert "done" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return max(complete(run_dir)), time.perf_counter() - t0


def half_written_checkpoint(run_dir: Path, after: int, weights: str = "model.safetensors") -> Path:
    """A checkpoint folder as a kill during its save leaves it: the weights written, the trainer state
    (written last) not yet; numbered after every real one."""
    ckpts = run_dir / "checkpoints"
    newest = max(int(d.name.split("-")[1]) for d in ckpts.glob("checkpoint-*"))
    fake = ckpts / f"checkpoint-{max(newest, after) + 1}"
    fake.mkdir()
    shutil.copy(ckpts / f"checkpoint-{after}" / weights, fake / weights)
    return fake


def step_rows(run_dir: Path, key: str) -> list[dict]:
    return [m for m in MetricsLog(run_dir).read() if key in m]


@pytest.mark.slow
def test_kill_9_during_reward_training_then_resume(tiny_model_dir, tmp_path, store):
    import torch
    from transformers.trainer_utils import get_last_checkpoint

    from rlhf.reward import complete_checkpoints

    export = marker_export(store, tmp_path, n=64, test_fraction=0.0)  # 48 train pairs: 6 steps an epoch
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    t0 = time.perf_counter()
    run_child("reward", str(export), str(whole), str(tiny_model_dir), str(STEPS))
    whole_s = time.perf_counter() - t0
    args = ["reward", str(export), str(killed), str(tiny_model_dir), str(STEPS)]
    at, kill_s = kill_after_checkpoint([*args, "sleep=0.5"], killed, complete_checkpoints, "loss")
    assert not (killed / "summary.json").exists()
    logged = [m["step"] for m in step_rows(killed, "loss")]
    assert max(logged) > at  # rows after the checkpoint exist: the resume must drop them
    fake = half_written_checkpoint(killed, at)
    # transformers alone would resume from the half-written folder (it picks the highest number):
    assert get_last_checkpoint(str(killed / "checkpoints")) == str(fake)
    t1 = time.perf_counter()
    run_child(*args, "resume")
    resume_s = time.perf_counter() - t1

    s = read_json(killed / "summary.json")
    assert s["stop"] == {"reason": "completed"} and s["global_step"] == STEPS and s["resumed_from_step"] == at
    assert not fake.exists()  # removed on resume, not trained on
    a, b = step_rows(whole, "loss"), step_rows(killed, "loss")
    assert [m["step"] for m in b] == list(range(1, STEPS + 1))  # each step once: none missing, none twice
    # The resumed run logs the numbers the uninterrupted one did: transformers restores weights,
    # optimizer, scheduler, RNG and the data position (float noise allowed, as for PPO).
    keys = ["loss", "accuracy", "margin", "mean_reward", "grad_norm", "learning_rate"]
    for x, y in zip(a, b):
        assert [x[k] for k in keys] == pytest.approx([y[k] for k in keys], rel=1e-4, abs=1e-6), x["step"]
    worst = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in keys)
    w1, w2 = read_weights(whole / "model"), read_weights(killed / "model")
    assert all(torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6) for k in w1)
    assert read_json(whole / "reward_stats.json")["reward_mean"] == pytest.approx(
        read_json(killed / "reward_stats.json")["reward_mean"], rel=1e-4, abs=1e-6
    )
    print(
        f"\nreward: killed at {kill_s:.1f} s with checkpoint-{at} complete and steps up to {max(logged)} "
        f"logged; resume {resume_s:.1f} s; uninterrupted run {whole_s:.1f} s; {STEPS} steps, all logged once; "
        f"largest difference from the uninterrupted run's metrics {worst:.3g}"
    )


@pytest.mark.slow
def test_kill_9_during_ppo_then_resume(tiny_model_dir, tmp_path, home):
    from rlhf.ppo import complete_checkpoints

    reward = write_fake_reward_run(tmp_path / "reward", tiny_model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: say hi."}) + "\n" for i in range(36)))
    run = tmp_path / "ppo"
    args = ["ppo", str(reward), str(run), str(tiny_model_dir), str(prompts), str(STEPS)]
    at, kill_s = kill_after_checkpoint([*args, "sleep=0.5"], run, complete_checkpoints, "objective/kl")
    logged = [m["step"] for m in step_rows(run, "objective/kl")]
    assert max(logged) > at and not (run / "summary.json").exists()
    # The default PPO trains LoRA adapters: a checkpoint's policy weights are the adapter's.
    fake = half_written_checkpoint(run, at, "adapter_model.safetensors")  # no workbench_state.json: skipped
    t1 = time.perf_counter()
    run_child(*args, "resume")
    resume_s = time.perf_counter() - t1

    s = read_json(run / "summary.json")
    assert s["stop"] == {"reason": "completed"} and s["global_step"] == STEPS and s["resumed_from_step"] == at
    assert [m["step"] for m in step_rows(run, "objective/kl")] == list(range(1, STEPS + 1))
    assert [m["step"] for m in step_rows(run, "eval/reward_mean")] == [0, 4, 8, 12]
    samples = [json.loads(x)["step"] for x in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted(set(samples)) == [0, 4, 8, 12] and all(samples.count(k) == 4 for k in (0, 4, 8, 12))
    assert (run / "policy" / "model.safetensors").exists()
    print(
        f"\nppo: killed at {kill_s:.1f} s with checkpoint-{at} complete and steps up to {max(logged)} logged "
        f"(half-written {fake.name} left beside it); resume {resume_s:.1f} s; {STEPS} steps, all logged once"
    )
