"""Train a reward model on an export folder: the script form of `rlhf train-reward`.

python pipelines/train_reward.py EXPORT_DIR --config pipelines/configs/smollm2_reward.yaml [--set KEY=VALUE ...]
accelerate launch --config_file pipelines/accelerate/<name>.yaml pipelines/train_reward.py EXPORT_DIR ...
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir", type=Path, help="folder written by `rlhf export`")
    ap.add_argument("--config", type=Path, help="YAML with our options and a `trl:` section")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE override")
    args = ap.parse_args()

    # Heavy imports after parsing, so --help is instant.
    from rlhf.configs import build_options, parse_sets, read_yaml
    from rlhf.reward import RewardOptions, reward_config_fields, train_reward

    config = read_yaml(args.config) if args.config else {}
    options, trl = build_options(RewardOptions, config, parse_sets(args.sets), reward_config_fields(), "reward config")
    run_dir = train_reward(args.export_dir, options, trl, max_steps=args.max_steps)
    print(f"reward run written to {run_dir}")


if __name__ == "__main__":
    main()
