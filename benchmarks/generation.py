"""Generation throughput of the embedded model: batch sizes x dtypes, same prompts.

Run: .venv/bin/python benchmarks/generation.py [--model default] [--tokens 64] [--repeats 3]
                                               [--batches 1,8] [--dtypes float32,bfloat16]
Prints tokens/s (median over repeats, after one warm-up) and the ratio to the first dtype at the
first batch size (fp32 batch 1 by default). On a GPU, `--batches 1,8,32 --dtypes float32,bfloat16`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def measure(model_name: str, dtypes: list[str], batches: list[int], tokens: int, repeats: int) -> dict:
    """{(dtype, batch): median tokens/s}; the tokens counted are the ones actually generated."""
    from rlhf.generate import GenerationSettings, generate_responses
    from rlhf.models import load_causal_lm

    data = Path(__file__).resolve().parents[1] / "rlhf" / "data" / "demo_prompts.jsonl"
    prompts = [json.loads(line)["prompt"] for line in data.read_text(encoding="utf-8").splitlines()]
    results = {}
    for dtype in dtypes:
        model, tok = load_causal_lm(model_name, dtype=dtype)
        for batch in batches:
            s = GenerationSettings(max_new_tokens=tokens, num_candidates=1, batch_size=batch)
            generate_responses(model, tok, prompts[:batch], s, seed=0)  # warm-up
            rates = []
            for r in range(repeats):
                t0 = time.perf_counter()
                out = generate_responses(model, tok, prompts[:batch], s, seed=r)
                dt = time.perf_counter() - t0
                rates.append(sum(g.num_tokens for row in out for g in row) / dt)
            results[(dtype, batch)] = statistics.median(rates)
        del model
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    results = measure(args.model, args.dtypes.split(","), batches, args.tokens, args.repeats)
    base = next(iter(results.values()))
    print(f"model {args.model}, {args.tokens} new tokens, sampling, median of {args.repeats}")
    for (dtype, batch), rate in results.items():
        print(f"  {dtype:9s} batch {batch:3d}: {rate:7.1f} tokens/s  ({rate / base:.2f}x the first row)")


if __name__ == "__main__":
    main()
