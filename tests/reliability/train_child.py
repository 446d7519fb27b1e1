"""A training process for the kill -9 + resume tests (tests/reliability/test_train_resume.py); not a test module.

    python train_child.py reward EXPORT RUN_DIR MODEL STEPS [resume] [sleep=S]
    python train_child.py ppo REWARD_RUN RUN_DIR POLICY PROMPTS STEPS [resume] [sleep=S]

Trains on the tiny model with one torch thread, a checkpoint every 2 steps and a log row every step;
`sleep=S` waits S seconds after each optimizer step (a window for the parent's kill, nothing else).
Prints "done" at the end."""

from __future__ import annotations

import sys
import time
from pathlib import Path

REWARD_TRL = {"learning_rate": 3e-3, "logging_steps": 1, "save_steps": 2, "save_total_limit": 3}
PPO_TRL = {"learning_rate": 1e-3, "response_length": 16, "save_steps": 2, "save_total_limit": 3}


def sleeper(seconds: float):
    from transformers import TrainerCallback

    class Sleep(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            time.sleep(seconds)

    return Sleep()


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    flags = [a for a in argv if a == "resume" or a.startswith("sleep=")]
    args = [a for a in argv if a not in flags]
    resume = "resume" in flags
    sleep = next((float(a.split("=", 1)[1]) for a in flags if a.startswith("sleep=")), 0.0)
    if args[0] == "reward":
        from rlhf.reward import RewardOptions, _trainer_class, train_reward

        _, export, run_dir, model, steps = args
        if sleep:  # the sleep rides on the trainer's callbacks (train_reward takes none)
            import rlhf.reward as reward

            base = _trainer_class()

            class Slow(base):
                def __init__(self, *a, **kw):
                    super().__init__(*a, **kw)
                    self.add_callback(sleeper(sleep))

            reward._trainer_class = lambda: Slow
        opts = RewardOptions(
            model=model, early_stopping_patience=0, precision="fp32", resume=resume, freeze_backbone=False
        )
        train_reward(Path(export), opts, REWARD_TRL, max_steps=int(steps), run_dir=Path(run_dir))
    else:
        from rlhf.ppo import PPOOptions, train_ppo

        _, reward_run, run_dir, policy, prompts, steps = args
        opts = PPOOptions(policy=policy, precision="fp32", eval_prompts=4, eval_steps=4, resume=resume)
        train_ppo(
            Path(reward_run),
            opts,
            PPO_TRL,
            max_steps=int(steps),
            prompts=Path(prompts),
            run_dir=Path(run_dir),
            callbacks=[sleeper(sleep)] if sleep else None,
        )
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
