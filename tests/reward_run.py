"""A reward run folder made by hand, for UI tests: a real (untrained-head) tiny reward model, and JSON
files in the format `rlhf.reward.train_reward` writes, with numbers small enough to check by hand.

Building it takes about a second (a real tiny training run takes 10-30 s): the page only reads the
folder, so what matters is the format, which `build_eval_report` itself produces here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rlhf.reward import build_eval_report
from rlhf.runs import write_json

XSS_PROMPT = "Rank <script>alert('p')</script> these **two** answers"
XSS_CHOSEN = "Chosen <img src=x onerror=alert('c')> answer"


def _row(cid, rc, rr, margin, category, agreement, num_labels, side, len_c, len_r, prompt, chosen, rejected):
    return {
        "comparison_id": cid,
        "r_chosen": rc,
        "r_rejected": rr,
        "margin": margin,
        "category": category,
        "agreement": agreement,
        "num_labels": num_labels,
        "chosen_side": side,
        "len_chosen": len_c,
        "len_rejected": len_r,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
    }


# Five held-out pairs. Right (r_chosen > r_rejected): 1, 2, 5; wrong: 3 (gap 1.5), 4 (gap 0.5).
#   accuracy 3/5 = 0.6; category advice {1,2,5} 3/3, code {3,4} 0/2
#   strength (margin 3,1,2,0,2): significantly 1/1, slightly 1/1, better {3,5} 1/2, negligibly 0/1
#   agreement: unanimous {1,2} 2/2, split {3} 0/1, single {4,5} 1/2; annotator agreement over the
#   items with 2+ labels {1,2,3} = (1 + 1 + 0.5) / 3 = 0.8333
#   position: A {1,3,5} 2/3, B {2,4} 1/2; length: chosen shorter {2,4} 1/2, longer {1,5} 2/2, equal {3}
ROWS = [
    _row(11, 2.0, 0.0, 3, "advice", 1.0, 2, "A", 10, 5, "How do I boil an egg?", "Simmer it 9 minutes.", "Dunno."),
    _row(12, 1.0, 0.5, 1, "advice", 1.0, 2, "B", 4, 8, "Best way to learn?", "Practice daily.", "Read a lot, maybe."),
    _row(13, 0.0, 1.5, 2, "code", 0.5, 2, "A", 6, 6, XSS_PROMPT, XSS_CHOSEN, "Rejected <b>bold</b> text"),
    _row(14, -1.0, -0.5, 0, "code", 1.0, 1, "B", 3, 9, "Sort a list?", "sorted(xs)", "Write a bubble sort by hand."),
    _row(15, 0.3, -0.3, 2, "advice", 1.0, 1, "A", 7, 2, "Sleep tips?", "Keep a fixed schedule.", "Nap."),
]

SUMMARY = {
    "train_pairs": 40,
    "test_pairs": 5,
    "dropped_too_long": {"train": 2, "test": 1},
    "global_step": 20,
    "train_seconds": 3.2,
    "pairs_per_second": 12.5,
    "train_loss": 0.41,
    "eval_accuracy": 0.6,
    "eval_accuracy_before": 0.4,
    "best_checkpoint": None,
    "bf16": False,
    "reward_mean": 0.25,
    "reward_std": 1.5,
    "n_responses": 80,
}


def metrics_lines() -> list[dict]:
    """Steps 2..20 of training logs (loss falling, accuracy rising), evaluations at 10 and 20."""
    lines = []
    for step in range(2, 21, 2):
        lines.append(
            {
                "step": step,
                "epoch": step / 10,
                "loss": round(0.7 - 0.03 * step, 4),
                "accuracy": min(1.0, 0.5 + 0.025 * step),
                "margin": 0.1 * step,
                "mean_reward": 0.01 * step,
            }
        )
        if step % 10 == 0:
            lines.append({"step": step, "eval_loss": 0.6 - 0.01 * step, "eval_accuracy": 0.4 + 0.01 * step})
    lines.append({"step": 20, "eval_loss": float("nan")})  # a NaN, kept as text by MetricsLog: skipped
    return lines


def write_fake_reward_run(run_dir: Path, tiny_model_dir: Path, seed: int = 0) -> Path:
    """A finished reward run at `run_dir`: model/ (tiny LLaMA + a random score head), config.json,
    metrics.jsonl, reward_stats.json, eval_report.json (from ROWS), summary.json (SUMMARY)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf.models import load_tokenizer

    run_dir.mkdir(parents=True)
    tok = load_tokenizer(tiny_model_dir, padding_side="right")
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    with torch.no_grad():
        model.score.weight.mul_(20)  # rewards of order 1, not 0.01: readable in charts
    model.config.pad_token_id = tok.pad_token_id
    model.config.reward_mean, model.config.reward_std = SUMMARY["reward_mean"], SUMMARY["reward_std"]
    model.save_pretrained(run_dir / "model")
    tok.save_pretrained(run_dir / "model")
    write_json(run_dir / "config.json", {"options": {"model": str(tiny_model_dir)}, "trl": {"learning_rate": 3e-3}})
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(m) + "\n" for m in metrics_lines()).replace("NaN", '"nan"'), encoding="utf-8"
    )
    write_json(run_dir / "reward_stats.json", {k: SUMMARY[k] for k in ("reward_mean", "reward_std", "n_responses")})
    write_json(run_dir / "eval_report.json", build_eval_report(ROWS))
    write_json(run_dir / "summary.json", SUMMARY)
    return run_dir


def copy_run(template: Path, runs_root: Path, name: str) -> Path:
    """A copy of a run folder under `runs_root` (each test gets its own, to break as it likes)."""
    runs_root.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(template, runs_root / name))


# A frozen-backbone ("head") run's `head` block, as `_train_head_run` writes it: the head reads
# [mean, max] of layer 12, chosen on 20 validation pairs among three feature kinds.
HEAD = {
    "features": "pool12",
    "candidates": {"last": 0.55, "pool8": 0.6, "pool12": 0.7},
    "l2": 0.01,
    "epochs": 40,
    "validation_accuracy": 0.7,
    "validation_pairs": 20,
    "seconds": 0.4,
}


def verdict_summary(accuracy: float, pairs: int, before: float | None, **extra) -> dict:
    """SUMMARY as a newer `train_reward` writes it: the held-out keys (accuracy with n and interval, the
    untrained accuracy, the learning verdict) from `held_out_summary` itself, for `pairs` held-out pairs."""
    from rlhf.reward import held_out_summary

    return {**SUMMARY, "test_pairs": pairs, **held_out_summary({"pairs": pairs, "accuracy": accuracy}, before), **extra}
