"""Reward training speed: our `train_reward` vs TRL's `RewardTrainer` with its default config.

Same export, same model, same number of pairs, same held-out split, each side in its own fresh
process (so peak RSS is its own). Prints pairs/s (median over the timed steps, after a warm-up),
the ratio, peak RSS and held-out accuracy for both.

Run:  .venv/bin/python benchmarks/reward.py [--model default] [--pairs 64] [--max-length 256]
Target (issue 4): ours >= 1.5x TRL defaults' pairs/s, held-out accuracy no lower.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELPFUL = [
    "Here is a clear answer.",
    "First, consider the main point.",
    "In short, it depends on the context.",
    "A practical approach is to start small.",
    "The key idea is simple.",
    "For example, you could try this.",
    "This works because of a well-known effect.",
    "To summarise, keep it brief and kind.",
]
UNHELPFUL = ["I don't know.", "Whatever.", "Not my problem.", "Figure it out yourself.", "No idea, sorry."]


def build_export(home: Path, n_pairs: int, seed: int = 0) -> Path:
    """A preference export with realistic length spread: chosen = helpful sentences (varied length),
    rejected = a dismissive reply padded with unrelated filler of varied length."""
    from rlhf.io import ExportOptions, export_preferences, import_preferences
    from rlhf.store import Store

    rnd = random.Random(seed)
    data = Path(__file__).resolve().parents[1] / "rlhf" / "data" / "demo_prompts.jsonl"
    prompts = [json.loads(x)["prompt"] for x in data.read_text(encoding="utf-8").splitlines()]
    rows = []
    for i in range(n_pairs):
        chosen = " ".join(rnd.choice(HELPFUL) for _ in range(rnd.randint(1, 12)))
        rejected = (
            rnd.choice(UNHELPFUL) + " " + " ".join(rnd.choice(HELPFUL).lower() for _ in range(rnd.randint(0, 10)))
        )
        rows.append({"prompt": prompts[i % len(prompts)], "chosen": chosen, "rejected": rejected.strip()})
    src = home / "bench_prefs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    store = Store()
    store.init()
    import_preferences(store, src)
    out = home / "bench_export"
    export_preferences(store, out, ExportOptions(test_fraction=0.2, format="conversational"), force=True)
    return out


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    return StepTimer()


def worker(kind: str, export: Path, model: str, max_length: int, batch: int, out: Path) -> None:
    import datasets
    from transformers import AutoModelForSequenceClassification

    from rlhf.models import load_tokenizer, resolve_model
    from rlhf.reward import build_eval_report, evaluate_pairs, hardware_has_bf16

    ds = datasets.load_from_disk(str(export))
    timer = step_timer()
    path = resolve_model(model)
    if kind == "trl":
        from trl import RewardConfig, RewardTrainer

        tok = load_tokenizer(path, padding_side="right")
        m = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        # TRL's defaults (bf16 autocast, gradient checkpointing, lr 1e-4 ...), only what a CPU run needs.
        args = RewardConfig(
            output_dir=str(out / "trl"),
            use_cpu=True,
            report_to=[],
            max_length=max_length,
            per_device_train_batch_size=batch,
            num_train_epochs=1,
            save_strategy="no",
        )
        trainer = RewardTrainer(model=m, args=args, train_dataset=ds["train"], processing_class=tok, callbacks=[timer])
        trainer.train()
        model_out, bf16 = trainer.model, bool(args.bf16)
    else:
        import rlhf.reward as reward

        # Add the step timer to the trainer our code builds.
        real_cls = reward._trainer_class

        def timed_cls():
            cls = real_cls()

            class Timed(cls):
                def __init__(self, *a, callbacks=None, **kw):
                    super().__init__(*a, callbacks=[*(callbacks or []), timer], **kw)

            return Timed

        reward._trainer_class = timed_cls
        opts = reward.RewardOptions(model=model, early_stopping_patience=0, freeze_backbone=False)
        run = reward.train_reward(
            export,
            opts,
            {
                "max_length": max_length,
                "per_device_train_batch_size": batch,
                "num_train_epochs": 1,
                "eval_strategy": "no",
                "load_best_model_at_end": False,
                "save_strategy": "no",
            },
        )
        from rlhf.reward import load_reward_model

        model_out, tok = load_reward_model(run)
        bf16 = hardware_has_bf16()
        tok = load_tokenizer(path, padding_side="right")
    from rlhf.reward import to_conversational

    acc = build_eval_report(evaluate_pairs(model_out, tok, to_conversational(ds["test"]), bf16=bf16))["accuracy"]
    timed = timer.times[2:] or timer.times  # the first steps are slower (warm-up)
    result = {
        "kind": kind,
        "steps": len(timer.times),
        "pairs_per_s": batch / statistics.median(timed),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "heldout_accuracy": acc,
        "train_pairs": len(ds["train"]),
    }
    (out / f"{kind}.json").write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--pairs", type=int, default=80)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--worker", choices=["ours", "trl"])
    ap.add_argument("--export")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, Path(a.export), a.model, a.max_length, a.batch, Path(a.out))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-reward-"))
    os.environ.setdefault("RLHF_HOME", str(Path("rlhf-data").resolve()))
    export = build_export(tmp, a.pairs)
    runs: dict[str, list[dict]] = {"trl": [], "ours": []}
    for rep in range(a.repeats):  # alternate the two, so drifting machine load hits both alike
        for kind in ("trl", "ours") if rep % 2 == 0 else ("ours", "trl"):
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                kind,
                "--export",
                str(export),
                "--out",
                str(tmp),
                "--model",
                a.model,
                "--max-length",
                str(a.max_length),
                "--batch",
                str(a.batch),
            ]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs[kind].append(json.loads((tmp / f"{kind}.json").read_text()))
    res = {}
    for kind, rs in runs.items():
        res[kind] = {
            **rs[-1],
            "pairs_per_s": statistics.median(r["pairs_per_s"] for r in rs),
            "peak_rss_gb": max(r["peak_rss_gb"] for r in rs),
            "heldout_accuracy": min(r["heldout_accuracy"] for r in rs),
        }
    t, o = res["trl"], res["ours"]
    print(
        f"reward training, model {a.model}, {o['train_pairs']} train pairs, batch {a.batch}, "
        f"max_length {a.max_length}, {a.repeats} run(s) each (median; lowest accuracy)"
    )
    for r in (t, o):
        print(
            f"  {r['kind']:5s}: {r['pairs_per_s']:.2f} pairs/s (median step after warm-up), "
            f"peak RSS {r['peak_rss_gb']:.1f} GB, held-out accuracy {r['heldout_accuracy']:.3f}"
        )
    print(
        f"  ratio ours/trl: {o['pairs_per_s'] / t['pairs_per_s']:.2f}x pairs/s; "
        f"accuracy {o['heldout_accuracy']:.3f} vs {t['heldout_accuracy']:.3f}"
    )


if __name__ == "__main__":
    main()
