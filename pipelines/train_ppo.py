"""PPO fine-tuning of a policy against a reward run: the script form of `rlhf ppo`.

python pipelines/train_ppo.py REWARD_RUN --config pipelines/configs/smollm2_ppo.yaml [--prompts FILE] [--set K=V]
python pipelines/train_ppo.py REWARD_RUN --resume RUN_DIR   (a killed run goes on from its last checkpoint,
    with its own saved options unless --config is given)
accelerate launch --config_file pipelines/accelerate/<name>.yaml pipelines/train_ppo.py REWARD_RUN ...
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reward_run", type=Path, help="folder written by `rlhf train-reward` (runs/reward/<id>)")
    ap.add_argument("--config", type=Path, help="YAML with our options and a `trl:` section of PPOConfig fields")
    ap.add_argument("--prompts", type=Path, help="JSONL/CSV/dataset of prompts (default: the store's)")
    ap.add_argument("--max-steps", type=int, help="PPO steps (batches of rollouts) to run")
    ap.add_argument("--resume", type=Path, metavar="RUN_DIR", help="resume this run from its newest checkpoint")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE override")
    args = ap.parse_args()

    # Heavy imports after parsing, so --help is instant.
    from rlhf.configs import build_options, parse_sets, read_yaml
    from rlhf.ppo import PPOOptions, ppo_config_fields, saved_run_config, train_ppo

    if args.config:
        config = read_yaml(args.config)
    elif args.resume:  # as `rlhf ppo --resume`: the run goes on with the options it was started with
        config, _ = saved_run_config(args.resume)
    else:
        config = {}
    sets = parse_sets(args.sets) | ({"resume": True} if args.resume else {})
    options, trl = build_options(PPOOptions, config, sets, ppo_config_fields(), "ppo config")
    run_dir = train_ppo(args.reward_run, options, trl, args.max_steps, args.prompts, None, run_dir=args.resume)
    print(f"ppo run written to {run_dir}")


if __name__ == "__main__":
    main()
