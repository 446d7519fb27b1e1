"""PPO cost per episode: our `rlhf.ppo.train_ppo` vs TRL's `trl.experimental.ppo.PPOTrainer`
called plainly, on the same work.

Ours: the defaults (LoRA policy, a value head on the policy's trunk, our step in rlhf/ppo_loop.py).
Plain TRL: a full fine-tune of `AutoModelForCausalLM` (TRL makes the frozen reference copy itself),
the reward run's `model/` as the reward model and another copy of it as the value model.
Both: batch 8, one mini-batch, 64 response tokens, 2 PPO epochs, k1 KL, temperature 0.7, stop at
EOS, missing-EOS penalty 1.0, the same prompts (chat template, as `rlhf.ppo.encode_prompt`).

Each run is a fresh subprocess (`--child ...`, so its peak RSS is its own), ours and TRL
alternating, `--repeats` times each; the first step of every run is a warm-up and left out of
the medians. Then ours with held-out evaluation ON (16 prompts, every 5 steps) vs OFF, alternating:
the overhead of evaluation and tracking in total train seconds (target: <= 10%). Then where a step's
time goes: our `time/*` phases, and TRL's measured by wrapping its functions (TRL child only).

Run:  .venv/bin/python benchmarks/ppo.py [--model default|tiny] [--steps 6] [--repeats 2]
      [--reward RUN] [--precision auto|fp32|bf16] [--prompts 64] [--quick]
The last line of stdout is one JSON object with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rlhf.ppo_loop import PHASES

ROOT = Path(__file__).resolve().parents[1]
DEMO_PROMPTS = ROOT / "rlhf" / "data" / "demo_prompts.jsonl"
BATCH = 8
# The PPOConfig fields both sides share (TRL's other defaults stay as they are).
COMMON_TRL = {
    "per_device_train_batch_size": BATCH,
    "num_mini_batches": 1,
    "response_length": 64,
    "num_ppo_epochs": 2,
    "kl_estimator": "k1",
    "temperature": 0.7,
    "stop_token": "eos",
    "missing_eos_penalty": 1.0,
    "num_sample_generations": 0,
    "save_strategy": "no",
    "report_to": [],
}
TRL_LEARNING_RATE = 1e-5  # full fine-tune; ours keeps its LoRA default
MAX_PROMPT_TOKENS = 256  # ours skips longer prompts (PPOOptions.max_prompt_length); TRL gets the same list
# Phases of a step, ours (`time/*` in metrics.jsonl) and TRL's (timed wrappers), in display order.
OURS_PHASES = PHASES
TRL_PHASES = (
    "generation",
    "reference",
    "value",
    "reward",
    "train_forward",
    "train_backward",
    "optimizer",
    "gc_collect",
    "empty_cache",
)
# Rows of the side-by-side breakdown: (label, our phases, TRL's phases).
BREAKDOWN = (
    ("generation (ours: + value head)", ("generation",), ("generation",)),
    ("rollout value pass", (), ("value",)),
    ("reference (ours: + fused reward)", ("reference_and_reward",), ("reference",)),
    ("reward pass", ("reward",), ("reward",)),
    ("advantages", ("advantages",), ()),
    ("train forward", ("train_forward",), ("train_forward",)),
    ("train backward", ("train_backward",), ("train_backward",)),
    ("optimizer", ("optimizer",), ("optimizer",)),
    ("train stats", ("train_stats",), ()),
    ("gc.collect (TRL: 2 a step; ours: gc.freeze)", (), ("gc_collect",)),
    ("empty_cache (TRL: 7+ a step)", (), ("empty_cache",)),
)


# -- helpers shared by parent and children -------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def peak_rss_gb() -> float:
    """This process's own peak RSS (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def step_timer() -> Any:
    """A TrainerCallback recording the wall time of every PPO step: on_step_end to on_step_end
    (the first from on_train_begin; both loops call these, TRL's PPO never calls on_step_begin)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t = time.perf_counter()
            self.on_step: list[Any] = []  # extra hooks called with the step's time

        def on_train_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.times.append(now - self.t)
            for f in self.on_step:
                f(now - self.t)
            self.t = now

    return StepTimer()


def load_prompts(n: int) -> list[str]:
    rows = [json.loads(x) for x in DEMO_PROMPTS.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r["prompt"] for r in rows[:n]]


# -- children --------------------------------------------------------------------------------------


def child_reward(model: str, work: Path, out: Path) -> None:
    """A reward run in a hurry: pairs made from the demo prompts, our `train_reward` defaults
    (frozen backbone + trained head: the features once, then a small head)."""
    import random

    from rlhf.io import ExportOptions, export_preferences, import_preferences
    from rlhf.reward import RewardOptions, train_reward
    from rlhf.store import Store

    rnd = random.Random(0)
    good = ["Here is a clear answer.", "First, consider the main point.", "A practical approach is to start small."]
    bad = ["I don't know.", "Whatever.", "No idea, sorry."]
    rows = [
        {
            "prompt": p,
            "chosen": " ".join(rnd.choice(good) for _ in range(rnd.randint(1, 4))),
            "rejected": rnd.choice(bad),
        }
        for p in load_prompts(40)
    ]
    src = work / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    store = Store(f"sqlite:///{work / 'bench.db'}")  # a store of its own: the user's stays untouched
    store.init()
    import_preferences(store, src)
    export = work / "export"
    export_preferences(store, export, ExportOptions(test_fraction=0.2), force=True)
    run = train_reward(export, RewardOptions(model=model), run_dir=work / "reward")
    out.write_text(json.dumps({"reward": str(run)}))


def child_ours(a: argparse.Namespace, out: Path) -> None:
    import torch

    from rlhf.ppo import PPOOptions, train_ppo
    from rlhf.runs import MetricsLog

    timer = step_timer()
    run_dir = Path(a.work) / f"ours-{os.getpid()}"
    opts = PPOOptions(
        policy=a.model, precision=a.precision, eval_prompts=a.eval_prompts, eval_steps=a.eval_steps, name=None
    )
    t0 = time.perf_counter()
    train_ppo(
        Path(a.reward),
        opts,
        {"save_steps": 10**6, **COMMON_TRL},
        max_steps=a.steps,
        prompts=Path(a.prompts_file),
        run_dir=run_dir,
        callbacks=[timer],
    )
    wall = time.perf_counter() - t0
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    rows = [m for m in MetricsLog(run_dir).read() if "objective/kl" in m]
    phases = [{k[5:]: v for k, v in m.items() if k.startswith("time/")} for m in rows]
    result = {
        "kind": "ours",
        "step_times": timer.times,
        "phases": phases,
        "seconds_per_step_summary": summary.get("seconds_per_step"),
        "train_seconds": summary.get("train_seconds"),
        "wall_seconds": wall,
        "precision": summary.get("precision"),
        "train_prompts": config["prompts"]["train"],
        "eval_prompts": config["prompts"]["eval"],
        "reward_in_reference_pass": config.get("reward_in_reference_pass"),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_gb": peak_rss_gb(),
    }
    shutil.rmtree(run_dir, ignore_errors=True)  # policy/ + value/ of SmolLM2: ~1 GB a run
    out.write_text(json.dumps(result))


def child_trl(a: argparse.Namespace, out: Path) -> None:
    """Plain TRL: PPOTrainer as its docs use it, plus timers around its pieces (this process only)."""
    import gc
    import types
    import warnings
    from collections import defaultdict

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf.models import load_tokenizer, resolve_model
    from rlhf.ppo import encode_prompt
    from rlhf.reward import mixed_precision

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        import trl.experimental.ppo.ppo_trainer as pt
        from trl.experimental.ppo import PPOConfig, PPOTrainer

    mp = mixed_precision(a.precision)
    # TRL 1.12's PPOTrainer builds its Accelerator without a precision and reads this variable;
    # set it so that bf16=True does what it says (the same autocast ours uses).
    os.environ["ACCELERATE_MIXED_PRECISION"] = mp
    path = resolve_model(a.model)
    tok = load_tokenizer(path, padding_side="left")
    prompts = [json.loads(x)["prompt"] for x in Path(a.prompts_file).read_text(encoding="utf-8").splitlines()]
    ids = [encode_prompt(tok, p) for p in prompts]
    train_ds = datasets.Dataset.from_dict({"input_ids": [x for x in ids if len(x) <= MAX_PROMPT_TOKENS]})
    policy = AutoModelForCausalLM.from_pretrained(path)
    if policy.get_input_embeddings().num_embeddings < len(tok):
        policy.resize_token_embeddings(len(tok))
    policy.config.pad_token_id = policy.generation_config.pad_token_id = tok.pad_token_id
    reward_dir = Path(a.reward) / "model"
    reward = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)
    args = PPOConfig(
        output_dir=str(Path(a.work) / f"trl-{os.getpid()}"),
        learning_rate=TRL_LEARNING_RATE,
        total_episodes=a.steps * BATCH,
        use_cpu=not torch.cuda.is_available(),
        bf16=mp == "bf16",
        fp16=mp == "fp16",
        **COMMON_TRL,
    )
    timer = step_timer()
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=None,  # TRL makes a frozen copy of the policy
        reward_model=reward,
        train_dataset=train_ds,
        value_model=value,
        callbacks=[timer],
    )

    # Timers around TRL's pieces; phase seconds are summed per step and handed over at on_step_end.
    current: dict[str, float] = defaultdict(float)
    phases: list[dict[str, float]] = []

    def timed(fn: Any, name: Any) -> Any:
        def wrapper(*args: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                current[name(*args) if callable(name) else name] += time.perf_counter() - t

        return wrapper

    value_model = trainer.accelerator.unwrap_model(trainer.model).value_model
    pt.batch_generation = timed(pt.batch_generation, "generation")
    # forward(): the reference pass in the rollout (no grad), the policy + value pass in training.
    pt.forward = timed(pt.forward, lambda *_: "train_forward" if torch.is_grad_enabled() else "reference")
    pt.get_reward = timed(pt.get_reward, lambda m, *_: "value" if m is value_model else "reward")
    trainer.accelerator.backward = timed(trainer.accelerator.backward, "train_backward")
    trainer.optimizer.step = timed(trainer.optimizer.step, "optimizer")
    # Its loop calls gc.collect() twice and empty_cache() after every pass (names in its namespace).
    pt.gc = types.SimpleNamespace(collect=timed(gc.collect, "gc_collect"))
    pt.empty_cache = timed(pt.empty_cache, "empty_cache")

    def end_step(_: float) -> None:
        phases.append(dict(current))
        current.clear()

    timer.on_step.append(end_step)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    result = {
        "kind": "trl",
        "step_times": timer.times,
        "phases": phases,
        "train_seconds": wall,
        "wall_seconds": wall,
        "precision": trainer.accelerator.mixed_precision,
        "train_prompts": len(train_ds),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_gb": peak_rss_gb(),
    }
    shutil.rmtree(args.output_dir, ignore_errors=True)
    out.write_text(json.dumps(result))


# -- the parent ------------------------------------------------------------------------------------


def run_child(kind: str, a: argparse.Namespace, work: Path, extra: list[str], tag: str) -> dict[str, Any]:
    out = work / f"{tag}.json"
    log = work / f"{tag}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--out", str(out), "--work", str(work)]
    cmd += ["--model", a.model, "--steps", str(a.steps), "--precision", a.precision, "--threads", str(a.threads)]
    cmd += extra
    t = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not out.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise SystemExit(f"child {tag} failed (exit {rc}); last lines of {log}:\n{tail}")
    res = json.loads(out.read_text())
    print(f"  {tag}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return res


def timed_steps(runs: list[dict[str, Any]]) -> list[float]:
    """Every run's step times after its first (warm-up) step, pooled."""
    return [t for r in runs for t in (r["step_times"][1:] or r["step_times"])]


def phase_medians(runs: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, float]:
    rows = [p for r in runs for p in (r["phases"][1:] or r["phases"])]
    out = {}
    for name in names:
        xs = [p[name] for p in rows if name in p]
        if xs:
            out[name] = statistics.median(xs)
    return out


def print_report(res: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=False, highlight=False)
    con.print(
        f"[bold]PPO cost per episode[/bold]: model {res['model']}, CPU {res['cpu']}, "
        f"torch threads {res['torch_threads']}, precision {res['precision']} (ours) / {res['trl_precision']} (TRL), "
        f"{res['steps']} steps x {res['repeats']} run(s) each, batch {BATCH}, 64 response tokens, 2 PPO epochs"
    )
    t = Table(title="median over steps (first step of each run excluded)")
    for c in ("", "s/step", "episodes/s", "peak RSS GB", "first step s", "runs (median s/step)"):
        t.add_column(c, justify="right" if c else "left")
    for side, label in (("ours", "ours (LoRA + shared value)"), ("trl", "plain TRL (full FT)")):
        rs = runs[side]
        t.add_row(
            label,
            f"{res[f'{side}_s_per_step']:.2f}",
            f"{res[f'{side}_episodes_per_s']:.3f}",
            f"{res[f'{side}_peak_rss_gb']:.2f}",
            f"{statistics.median(r['step_times'][0] for r in rs):.2f}",
            ", ".join(f"{median(r['step_times'][1:] or r['step_times']):.2f}" for r in rs),
        )
    con.print(t)
    con.print(f"ratio ours/TRL episodes/s: [bold]{res['ratio_episodes_per_s']:.2f}x[/bold]")

    b = Table(title="where a step goes (median s per phase)")
    for c in ("phase", "ours", "TRL"):
        b.add_column(c, justify="left" if c == "phase" else "right")
    op, tp = res["ours_phases"], res["trl_phases"]

    def cell(ph: dict[str, float], names: tuple[str, ...]) -> str:
        got = [ph[n] for n in names if n in ph]
        return f"{sum(got):.3f}" if got else "-"

    for label, o, tr in BREAKDOWN:
        b.add_row(label, cell(op, o), cell(tp, tr))
    b.add_row("other (step - phases)", f"{res['ours_other_s']:.3f}", f"{res['trl_other_s']:.3f}")
    b.add_row("step", f"{res['ours_s_per_step']:.3f}", f"{res['trl_s_per_step']:.3f}")
    con.print(b)

    oh = res["overhead"]
    verdict = "ok" if res["overhead_eval_pct"] <= 10 else "OVER the 10% target"
    con.print(
        f"evaluation + tracking overhead (ours, {oh['eval_prompts']} held-out prompts every {oh['eval_steps']} steps "
        f"vs none): train seconds {oh['on_train_s']:.1f} vs {oh['off_train_s']:.1f} = "
        f"[bold]{res['overhead_eval_pct']:+.1f}%[/bold] ({verdict}); whole train_ppo call "
        f"{oh['on_wall_s']:.1f} vs {oh['off_wall_s']:.1f} s = {oh['wall_pct']:+.1f}% (adds the step-0 reference "
        "evaluation, the report and the saves)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="tiny | default (SmolLM2) | a path")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--reward", help="a reward run folder (default: build one quickly)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--prompts", type=int, default=64, help="how many demo prompts")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each run (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny model, 3 steps, 1 repeat, 1 thread")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, results)")
    # children
    ap.add_argument("--child", choices=["ours", "trl", "reward"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", help=argparse.SUPPRESS)
    ap.add_argument("--eval-prompts", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--eval-steps", type=int, default=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("RLHF_HOME", str((ROOT / "rlhf-data").resolve()))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if a.child:
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        out = Path(a.out)
        if a.child == "reward":
            child_reward(a.model, Path(a.work), out)
        elif a.child == "ours":
            child_ours(a, out)
        else:
            child_trl(a, out)
        return
    if a.quick:
        # One thread: a tiny model's ops are too small to split, and on a shared machine a second
        # thread waiting for a busy core slows every op many times over.
        a.model, a.steps, a.repeats, a.threads = "tiny", 3, 1, a.threads or 1
    if a.steps < 2 or a.repeats < 1:
        ap.error("--steps must be >= 2 (the first is a warm-up) and --repeats >= 1")

    work = Path(tempfile.mkdtemp(prefix="bench-ppo-"))
    try:
        prompts = load_prompts(a.prompts)
        if len(prompts) < 16 + 2 * BATCH:
            ap.error(f"--prompts must be >= {16 + 2 * BATCH} (16 are held out in the evaluation runs)")
        pfile = work / "prompts.jsonl"
        pfile.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
        print(f"work folder {work}", file=sys.stderr, flush=True)
        reward = a.reward
        if reward is None:
            reward = run_child("reward", a, work, [], "reward")["reward"]
        reward = str(Path(reward).resolve())
        common = ["--reward", reward, "--prompts-file", str(pfile)]
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
        for rep in range(a.repeats):  # alternating: drifting machine load hits both alike
            for kind in ("ours", "trl"):
                runs[kind].append(run_child(kind, a, work, common, f"{kind}-{rep}"))
        # Evaluation ON vs OFF on the same training prompts: the last 16 are the `test` split, held out
        # in both runs (OFF: eval_prompts=0 evaluates none of them). Evaluation draws its random
        # numbers in a forked RNG, so both runs train on the same batches in the same order.
        ev_prompts, ev_steps = 16, 5
        hfile = work / "prompts_heldout.jsonl"
        held = [
            {"prompt": p, **({"split": "test"} if i >= len(prompts) - ev_prompts else {})}
            for i, p in enumerate(prompts)
        ]
        hfile.write_text("".join(json.dumps(r) + "\n" for r in held), encoding="utf-8")
        overhead: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for rep in range(a.repeats):
            for mode in ("on", "off"):
                extra = ["--reward", reward, "--prompts-file", str(hfile), "--eval-steps", str(ev_steps)]
                extra += ["--eval-prompts", str(ev_prompts if mode == "on" else 0)]
                overhead[mode].append(run_child("ours", a, work, extra, f"ours-eval-{mode}-{rep}"))

        ours_s, trl_s = median(timed_steps(runs["ours"])), median(timed_steps(runs["trl"]))
        ours_ph, trl_ph = phase_medians(runs["ours"], OURS_PHASES), phase_medians(runs["trl"], TRL_PHASES)
        on_t = statistics.median(r["train_seconds"] for r in overhead["on"])
        off_t = statistics.median(r["train_seconds"] for r in overhead["off"])
        on_w = statistics.median(r["wall_seconds"] for r in overhead["on"])
        off_w = statistics.median(r["wall_seconds"] for r in overhead["off"])
        res: dict[str, Any] = {
            "ratio_episodes_per_s": trl_s / ours_s,
            "ours_s_per_step": ours_s,
            "trl_s_per_step": trl_s,
            "ours_episodes_per_s": BATCH / ours_s,
            "trl_episodes_per_s": BATCH / trl_s,
            "ours_peak_rss_gb": max(r["peak_rss_gb"] for r in runs["ours"]),
            "trl_peak_rss_gb": max(r["peak_rss_gb"] for r in runs["trl"]),
            "overhead_eval_pct": 100 * (on_t - off_t) / off_t,
            "overhead": {
                "eval_prompts": overhead["on"][0]["eval_prompts"],  # the test split's prompts that fit
                "eval_steps": ev_steps,
                "on_train_s": on_t,
                "off_train_s": off_t,
                "on_wall_s": on_w,
                "off_wall_s": off_w,
                "wall_pct": 100 * (on_w - off_w) / off_w,
            },
            "ours_phases": ours_ph,
            "trl_phases": trl_ph,
            "ours_other_s": ours_s - sum(ours_ph.values()),
            "trl_other_s": trl_s - sum(trl_ph.values()),
            "ours_step_times": [r["step_times"] for r in runs["ours"]],
            "trl_step_times": [r["step_times"] for r in runs["trl"]],
            "ours_summary_s_per_step": [r["seconds_per_step_summary"] for r in runs["ours"]],
            "reward_in_reference_pass": runs["ours"][0].get("reward_in_reference_pass"),
            "train_prompts": {"ours": runs["ours"][0]["train_prompts"], "trl": runs["trl"][0]["train_prompts"]},
            "cpu": cpu_name(),
            "torch_threads": runs["ours"][0]["torch_threads"],
            "precision": runs["ours"][0]["precision"],
            "trl_precision": runs["trl"][0]["precision"],
            "model": a.model,
            "steps": a.steps,
            "repeats": a.repeats,
            "reward_run": reward,
        }
        print_report(res, runs)
        print(json.dumps(res), flush=True)
    finally:
        if a.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
