"""Generation throughput of the embedded model: batch 1 vs batch 8, fp32 vs bf16, same prompts.

Run: .venv/bin/python benchmarks/generation.py [--model default] [--tokens 64] [--repeats 3]
Prints tokens/s (median over repeats, after one warm-up) and the ratio to batch-1 fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from rlhf.generate import GenerationSettings, generate_responses
    from rlhf.models import load_causal_lm

    data = Path(__file__).resolve().parents[1] / "rlhf" / "data" / "demo_prompts.jsonl"
    prompts = [json.loads(line)["prompt"] for line in data.read_text(encoding="utf-8").splitlines()][:8]
    results = {}
    for dtype in ("float32", "bfloat16"):
        model, tok = load_causal_lm(args.model, dtype=dtype)
        for batch in (1, 8):
            s = GenerationSettings(max_new_tokens=args.tokens, num_candidates=1, batch_size=batch)
            # min_new_tokens-like fairness: count the tokens actually generated.
            generate_responses(model, tok, prompts[:batch], s, seed=0)  # warm-up
            rates = []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                out = generate_responses(model, tok, prompts[:batch], s, seed=r)
                dt = time.perf_counter() - t0
                rates.append(sum(g.num_tokens for row in out for g in row) / dt)
            results[(dtype, batch)] = statistics.median(rates)
    base = results[("float32", 1)]
    print(f"model {args.model}, {args.tokens} new tokens, sampling, median of {args.repeats}")
    for (dtype, batch), rate in results.items():
        print(f"  {dtype:9s} batch {batch}: {rate:7.1f} tokens/s  ({rate / base:.2f}x batch-1 fp32)")


if __name__ == "__main__":
    main()
