"""The GPU path, checked on a CUDA machine with no code changes: device and precision choice, the
embedded model prepared and generating on CUDA, a fp16 round (tiny models) and a full bf16 round of
`pipelines/configs/round.yaml` (generation, simulated labels, reward model, PPO, evaluation).

Run (on a machine with a CUDA GPU, after `make setup TORCH_SPEC=torch`):
    .venv/bin/python benchmarks/gpu_check.py --out gpu-check
Writes gpu-check/gpu_check.json (every figure below) and the round's report.html, and prints a summary.
Each check runs on even if an earlier one failed; the exit status says whether all passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


def _check(results: dict, name: str, fn) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = {"ok": True, **fn()}
    except Exception as e:  # a check's failure is a finding: record it and go on
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
    results[name]["seconds"] = round(time.perf_counter() - t0, 2)
    print(f"[{name}] {json.dumps(results[name], default=str)[:1500]}", flush=True)


def environment() -> dict:
    import accelerate
    import peft
    import torch
    import transformers
    import trl

    from rlhf.models import pick_device, pick_dtype
    from rlhf.reward import mixed_precision

    dev = pick_device("auto")
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "capability": list(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None,
        "versions": {m.__name__: m.__version__ for m in (transformers, trl, accelerate, peft)},
        "device_auto": dev,
        "generation_dtype_auto": str(pick_dtype("auto", dev)),
        "training_precision_auto": mixed_precision("auto"),
        "passes": dev == "cuda" and mixed_precision("auto") in ("bf16", "fp16"),
    }


def prepare_default() -> dict:
    from rlhf.models import prepare_registry_model

    t0 = time.perf_counter()
    path = prepare_registry_model("default")
    return {"path": str(path), "prepare_seconds": round(time.perf_counter() - t0, 1)}


def generation(model: str, tokens: int) -> dict:
    import torch
    from generation import measure

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rates = measure(model, ["float32", "bfloat16", "float16"], [1, 8, 32], tokens, repeats=3)
    return {
        "new_tokens": tokens,
        "tokens_per_s": {f"{d} batch {b}": round(r, 1) for (d, b), r in rates.items()},
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def _pipeline(config: Path, home: Path, timeout_s: int) -> dict:
    import yaml

    env = dict(os.environ, RLHF_HOME=str(home), TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf", "pipeline", "run", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    wall = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode} after {wall} s: {(proc.stdout + proc.stderr)[-2500:]}")
    name = yaml.safe_load(config.read_text())["name"]
    report_path = home / "pipeline" / name / "round-0" / "report.json"
    report = json.loads(report_path.read_text())
    out = {"wall_seconds": wall, "stage_seconds": {k: round(v["seconds"], 1) for k, v in report["stages"].items()}}
    for name in ("reward", "ppo"):
        summaries = sorted(report_path.parent.glob(f"*-{name}/**/summary.json"))
        if summaries:
            s = json.loads(summaries[-1].read_text())
            keep = (
                "pairs_per_second",
                "train_seconds",
                "seconds_per_step",
                "first_step_seconds",
                "precision",
                "bf16",
                "global_step",
                "stop",
                "eval_accuracy",
                "eval_accuracy_before",
            )
            out[name] = {k: s[k] for k in keep if k in s}
    out["report_json"] = str(report_path)
    out["report_html"] = str(report_path.with_name("report.html"))
    return out


def quick_fp16(timeout_s: int) -> dict:
    import yaml

    cfg = yaml.safe_load((ROOT / "pipelines/configs/quick.yaml").read_text())
    cfg["name"] = "quick-fp16"
    cfg["reward"]["precision"] = cfg["ppo"]["precision"] = "fp16"
    tmp = Path(tempfile.mkdtemp())
    (tmp / "quick-fp16.yaml").write_text(yaml.safe_dump(cfg))
    out = _pipeline(tmp / "quick-fp16.yaml", tmp / "home", timeout_s)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("gpu-check"))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--model", default="default", help="the model the generation check measures")
    ap.add_argument("--round-timeout", type=int, default=360, help="seconds allowed for the SmolLM2 round")
    ap.add_argument("--skip", default="", help="comma-separated checks to skip")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    results: dict = {}
    home = Path(os.environ.setdefault("RLHF_HOME", tempfile.mkdtemp()))  # the round reuses the prepared model
    checks = {
        "environment": environment,
        "prepare_default": prepare_default,
        "generation": lambda: generation(args.model, args.tokens),
        "quick_fp16": lambda: quick_fp16(240),
        "round_bf16": lambda: _pipeline(ROOT / "pipelines/configs/round.yaml", home, args.round_timeout),
    }
    for name, fn in checks.items():
        if name not in skip:
            _check(results, name, fn)
            (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    for key, name in (("report_html", "round_report.html"), ("report_json", "round_report.json")):
        path = results.get("round_bf16", {}).get(key)
        if path and Path(path).exists():
            shutil.copy(path, args.out / name)
    failed = [k for k, v in results.items() if not v["ok"] or v.get("passes") is False]
    print("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
