"""PPO run folders made by hand, for UI tests: the files `rlhf.ppo.train_ppo` writes (config.json,
metrics.jsonl, samples.jsonl, report.json, summary.json, checkpoints/), with numbers small enough to
check by hand. report.json comes from `build_ppo_report` itself, so its format is the real one.

    healthy run (STEADY_KL, STEADY_LENGTH): no warning fires
    runaway run (RUNAWAY_KL, RUNAWAY_LENGTH): KL over the budget and rising fast, length +95% and at the limit
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhf.ppo import build_ppo_report
from rlhf.runs import write_json

XSS_PROMPT = "Explain <script>alert('p')</script> **RLHF** briefly"
XSS_RESPONSE = "It is <img src=x onerror=alert('r')> fine-tuning"
PROMPTS = [XSS_PROMPT, "Name a colour."]
EVAL_STEPS = (0, 2, 4, 6)

KL_TARGET, KL_BUDGET, RESPONSE_LENGTH = 4.0, 10.0, 20
# objective/kl at steps 1..6. Steady: last 2.5 < budget 10 and < 2 x target 8; the last 3 steps'
# mean (2.4+2.3+2.5)/3 = 2.4 is not 2x the 3 before (2.0+2.2+2.1)/3 = 2.1.
STEADY_KL = [2.0, 2.2, 2.1, 2.4, 2.3, 2.5]
# Runaway: last 12 > budget 10; mean of the last 3 (3+5+12)/3 = 6.667 >= 2 x 1.0 and 5.667 nats above it.
RUNAWAY_KL = [1.0, 1.0, 1.0, 3.0, 5.0, 12.0]
# eval/response_length at steps 0, 2, 4, 6. Steady: +30% (< 50%), 13 < 0.95 x 20 = 19.
STEADY_LENGTH = [10.0, 11.0, 12.0, 13.0]
# Runaway: (19.5 - 10) / 10 = +95% > 50%, and 19.5 >= 19.
RUNAWAY_LENGTH = [10.0, 14.0, 18.0, 19.5]


# time/<phase> seconds at steps 1..6, as our PPO loop logs them (rlhf.ppo_loop.StepTimer; TRL's loop and
# older runs log none). Medians: generation 1.0 (the 9.0 outlier at step 6 does not move it), reward
# (0.3 + 0.3) / 2 = 0.3, train_backward (0.5 + 0.5) / 2 = 0.5, optimizer 0.1; their sum 1.9.
TIMES = {
    "generation": [1.0, 1.0, 1.0, 1.0, 1.0, 9.0],
    "reward": [0.2, 0.2, 0.3, 0.3, 0.3, 0.3],
    "train_backward": [0.5, 0.4, 0.6, 0.5, 0.5, 0.5],
    "optimizer": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
}


def eval_reward(step: int) -> float:
    return 0.1 + 0.1 * step  # 0.1, 0.3, 0.5, 0.7


def sample_reward(step: int, i: int) -> float:
    return round(0.1 * step - 0.5 * i, 3)  # prompt 0: 0, 0.2, 0.4, 0.6; prompt 1: -0.5, -0.3, -0.1, 0.1


def metrics_lines(
    kl: list[float], lengths: list[float], coef0: float = 0.05, times: dict[str, list[float]] | None = None
) -> list[dict[str, Any]]:
    """Step 0: the reference's evaluation; steps 1..6: TRL's keys + kl/coef (+ `time/<phase>` from
    `times`); eval keys at 2, 4, 6."""
    evals = dict(zip(EVAL_STEPS, lengths))
    lines = [
        {
            "step": 0,
            "epoch": 0,
            "kl/coef": coef0,
            "eval/reward_mean": eval_reward(0),
            "eval/kl_to_ref": 0.0,
            "eval/response_length": evals[0],
        }
    ]
    for step, k in enumerate(kl, start=1):
        row = {
            "step": step,
            "epoch": step / 4,
            "objective/kl": k,
            "objective/entropy": 100.0 - step,
            "objective/non_score_reward": -coef0 * k,
            "objective/rlhf_reward": 0.1 * step - coef0 * k,
            "objective/scores": 0.1 * step,
            "policy/approxkl_avg": 0.001 * step,
            "policy/clipfrac_avg": 0.01 * step,
            "loss/policy_avg": -0.01,
            "loss/value_avg": 0.5,
            "val/ratio": 1.0,
            "val/num_eos_tokens": 2,
            "kl/coef": coef0,
        }
        row.update({f"time/{phase}": t[step - 1] for phase, t in (times or {}).items()})
        if step in evals:
            row.update(
                {
                    "eval/reward_mean": eval_reward(step),
                    "eval/kl_to_ref": 0.01 * step,
                    "eval/response_length": evals[step],
                }
            )
        lines.append(row)
    return lines


def sample_rows(step: int) -> list[dict[str, Any]]:
    return [
        {
            "step": step,
            "prompt_index": i,
            "prompt": p,
            "response": (XSS_RESPONSE if i == 0 else "Blue.") + f" (step {step})",
            "reward": sample_reward(step, i),
            "kl": 0.01 * step,
            "kl_sum": 0.01 * step * (5 + i),
            "length": 5 + i,
        }
        for i, p in enumerate(PROMPTS)
    ]


def write_fake_ppo_run(
    run_dir: Path,
    kl: list[float] | None = None,
    lengths: list[float] | None = None,
    finished: bool = True,
    stop: dict[str, Any] | None = None,
    learning_rate: float = 1e-3,
    times: dict[str, list[float]] | None = None,
) -> Path:
    """A PPO run folder at `run_dir` (steady numbers unless `kl` / `lengths` say otherwise; `time/*`
    metrics from `times`, e.g. TIMES)."""
    kl, lengths = kl or STEADY_KL, lengths or STEADY_LENGTH
    run_dir.mkdir(parents=True)
    write_json(
        run_dir / "config.json",
        {
            "options": {"policy": "tiny", "kl_target": KL_TARGET, "kl_budget": KL_BUDGET, "eval_steps": 2},
            "trl": {
                "learning_rate": learning_rate,
                "kl_coef": 0.05,
                "response_length": RESPONSE_LENGTH,
                "num_total_batches": 6,
            },
            "reward_run": "runs/reward/20260101-000000-fake",
            "policy_path": "models/tiny",
        },
    )
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(m) + "\n" for m in metrics_lines(kl, lengths, times=times)), encoding="utf-8"
    )
    (run_dir / "samples.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for s in EVAL_STEPS for r in sample_rows(s)), encoding="utf-8"
    )
    for step in (4, 6):
        ckpt = run_dir / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        write_json(ckpt / "workbench_state.json", {"step": step})
    if finished:
        report = build_ppo_report(sample_rows(0), sample_rows(6), 6)
        write_json(run_dir / "report.json", report)
        write_json(
            run_dir / "summary.json",
            {
                "global_step": 6,
                "saved_step": 6,
                "episodes": 48,
                "stop": stop or {"reason": "completed"},
                "train_seconds": 3.0,
                "seconds_per_step": 0.5,
                "kl_coef_final": 0.0512,
                "precision": "no",
                "eval": {k: v for k, v in report.items() if k != "pairs"},
            },
        )
    return run_dir


def write_fake_reward_folder(run_dir: Path) -> Path:
    """A reward run as the start form lists it (summary.json + model/); nothing loads it."""
    (run_dir / "model").mkdir(parents=True)
    write_json(run_dir / "summary.json", {"eval_accuracy": 0.75})
    return run_dir
