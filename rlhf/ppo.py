"""PPO fine-tuning of the policy against a reward run (TRL's `trl.experimental.ppo`), with the KL
divergence to the frozen reference tracked and controlled. The ONE module importing that package.

Reads a reward run (`runs/reward/<id>/model`: the reward model, which also initialises the value
model, and the reward mean / std it saved) and prompts (the store's, or a JSONL/CSV/dataset file).
Writes `runs/ppo/<id>/`:

    config.json    our options, TRL's PPOConfig as used, reward run + hash of its model, policy path,
                   prompt source + hash and counts
    metrics.jsonl  every PPO step as TRL logs it (objective/*, policy/*, loss/*, val/*, lr, eps) plus
                   `kl/coef` (the coefficient that step used); `eval/reward_mean`, `eval/kl_to_ref`,
                   `eval/response_length` at step 0 (the reference) and every `eval_steps`
    samples.jsonl  the held-out responses of every evaluation: step, prompt, response, reward, kl, length
    checkpoints/   checkpoint-<step>/: policy (or LoRA adapter), value/, optimizer, scheduler, RNG,
                   pass_rng.pt (the shuffle of the current pass over the prompts), trainer_state.json,
                   workbench_state.json (KL coefficient, counters; written last: marks it complete)
    policy/        the tuned policy (LoRA merged) + tokenizer: loads with AutoModelForCausalLM
    value/         the trained value model (AutoModelForSequenceClassification)
    report.json    reference vs tuned policy on the held-out prompts (see `build_ppo_report`)
    summary.json   written last: steps, why the run stopped, seconds per step, final metrics

Added to TRL's PPO (each in one place below):
  1. adaptive KL coefficient (Ziegler et al. 2019), updated every step: `AdaptiveKLController`;
  2. the reward normalised with the reward run's mean / std and clipped, read where the reward model
     was trained to read it (after the chat template's end-of-turn suffix): `PPOReward`;
  3. a KL budget: the run stops when `objective/kl` exceeds it and keeps the last checkpoint whose
     policy was measured within it: `kept_checkpoint_step`;
     the NaN / exploding-loss guard (`loss_explode_factor`, `rlhf.runs.LossGuard`) stops the same way
     and keeps the last finite checkpoint saved before the bad step, then raises `TrainingDiverged`;
  4. evaluation on a fixed held-out prompt set with the exact KL over the full next-token
     distribution (`token_kl`), not the sampled estimate: `Evaluator`;
  5. the value model saved beside the policy, and resume (TRL 1.12's PPOTrainer has none; its
     `train()` takes no checkpoint and restarts its counters): `_restore_checkpoint` puts back the
     weights, optimizer, LR schedule, KL coefficient, step counters, prompt order and RNG, so a
     resumed run logs the numbers the killed one would have (up to float noise).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import importlib.util
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.errors import TrainingDiverged, ValidationError, WorkbenchError
from rlhf.ppo_loop import is_shared_value, merged_adapters, reference_parts, reference_pass
from rlhf.reward import PRECISIONS, mixed_precision, reward_model_from
from rlhf.runs import (
    LossGuard,
    MetricsLog,
    divergence_message,
    folder_hash,
    metrics_callback,
    new_shared_run_dir,
    read_json,
    truncate_jsonl,
    weights_finite,
    write_json,
)
from rlhf.runs import load_weights as _load_weights
from rlhf.runs import read_weights as _read_weights
from rlhf.stats import win_rate

log = logging.getLogger(__name__)

STATE_FILE = "workbench_state.json"  # our part of a checkpoint, written last


@dataclass
class PPOOptions:
    """Our knobs for PPO. TRL's own knobs go in `trl` (any `PPOConfig` field: kl_coef, kl_estimator,
    cliprange, vf_coef, num_ppo_epochs, response_length, stop_token, missing_eos_penalty, ...)."""

    policy: str = field(default="default", metadata={"help": "Starting policy (also the frozen reference)."})
    lora: bool = field(
        default=True,
        metadata={
            "help": "Train LoRA adapters on the policy: the reference is the same weights with the adapter "
            "off (no second copy), the backward pass computes no weight gradients of the base and the "
            "optimizer steps only the adapters. false: full fine-tune, with a frozen copy as the reference."
        },
    )
    value_model: str = field(
        default="shared",
        metadata={
            "help": "shared: a value head on the policy's own trunk, trained in the same pass as the policy "
            "(our PPO step, rlhf/ppo_loop.py: ~3x fewer passes); separate: TRL's separate value model "
            "initialised from the reward model, and TRL's own loop."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank: higher = more capacity, more memory."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling (alpha / r multiplies the update)."})
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto | bf16 | fp16 | fp32. auto = bf16 autocast of the policy/value training passes where "
            "the hardware has it (AMX or AVX512-BF16 CPUs, recent GPUs), fp16 with loss scaling on a CUDA GPU "
            "without bf16, else fp32. The rollouts' sampling and the reference pass run under the same "
            "autocast (the weights stay fp32). fp16 needs a CUDA GPU."
        },
    )
    kl_target: float | None = field(
        default=6.0,
        metadata={
            "help": "Adaptive KL control (Ziegler et al. 2019): steer `objective/kl` (nats per response) toward "
            "this by scaling `kl_coef` every step. null = a fixed coefficient (TRL's behaviour)."
        },
    )
    kl_horizon: int = field(
        default=1000,
        metadata={
            "help": "Episodes over which the coefficient may change by about e^0.2 (x1.22). Smaller reacts "
            "faster and is noisier. Ziegler et al. used 10000 for runs of 100k+ episodes."
        },
    )
    kl_budget: float | None = field(
        default=None,
        metadata={
            "help": "Stop when `objective/kl` exceeds this and keep the last checkpoint measured within it "
            "(null = no limit). Needs save_total_limit >= 2 to keep one."
        },
    )
    loss_explode_factor: float | None = field(
        default=100.0,
        metadata={
            "help": "Stop when loss/policy_avg or loss/value_avg exceeds this x the median of its last 20 steps "
            "(medians below 0.1 count as 0.1), and keep the last checkpoint saved before that step. A NaN/inf "
            "loss or objective/kl always stops the run. null = only NaN/inf stop it."
        },
    )
    normalize_rewards: bool = field(
        default=True,
        metadata={"help": "Reward = (r - mean) / std with the reward run's saved statistics: unit scale for any RM."},
    )
    reward_clip: float | None = field(
        default=5.0,
        metadata={
            "help": "Clip the (normalised) reward to +-this: bounds what one exploited outlier response can earn. "
            "null = no clipping."
        },
    )
    token_rewards: bool = field(
        default=False,
        metadata={
            "help": "With a pooled frozen-backbone reward head (the default reward model) and value_model: shared, "
            "each response token gets its own share of the score as its reward: the head is linear in the sum "
            "(or the mean and max) of the tokens' hidden states, so the score splits exactly into per-token "
            "parts (the rest, e.g. the end-of-turn tokens', stays on the last token; a response's rewards add "
            "up to its score). The tokens that earned the score are the ones credited, instead of GAE "
            "carrying one end-of-response reward back over 64 tokens. false: the whole score on the last "
            "token, as TRL does."
        },
    )
    eval_steps: int = field(
        default=10,
        metadata={"help": "Evaluate on the held-out prompts every this many steps (0 = start and end only)."},
    )
    eval_prompts: int = field(
        default=16,
        metadata={
            "help": "Held-out prompts: the `test` split's first N, else N (at most half) drawn with the seed and "
            "kept out of training. 0 = no evaluation, no report."
        },
    )
    max_prompt_length: int = field(
        default=256, metadata={"help": "Prompts longer than this many tokens (chat template included) are skipped."}
    )
    name: str | None = field(default=None, metadata={"help": "Suffix of the run folder name."})
    resume: bool = field(default=False, metadata={"help": "Resume from the newest complete checkpoint in `run_dir`."})

    def problems(self) -> list[str]:
        p = []
        if self.precision not in PRECISIONS:
            p.append(f"`precision` must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if self.lora_r < 1:
            p.append(f"`lora_r` must be >= 1, got {self.lora_r}")
        if self.value_model not in ("shared", "separate"):
            p.append(f"`value_model` must be shared or separate, got {self.value_model!r}")
        if self.kl_target is not None and not self.kl_target > 0:
            p.append(f"`kl_target` must be > 0 (or null for a fixed coefficient), got {self.kl_target}")
        if self.kl_horizon < 1:
            p.append(f"`kl_horizon` must be >= 1, got {self.kl_horizon}")
        if self.kl_budget is not None and not self.kl_budget > 0:
            p.append(f"`kl_budget` must be > 0 (or null), got {self.kl_budget}")
        if self.loss_explode_factor is not None and not self.loss_explode_factor > 1:
            p.append(f"`loss_explode_factor` must be > 1 (or null), got {self.loss_explode_factor}")
        if self.reward_clip is not None and not self.reward_clip > 0:
            p.append(f"`reward_clip` must be > 0 (or null), got {self.reward_clip}")
        if self.eval_steps < 0:
            p.append(f"`eval_steps` must be >= 0, got {self.eval_steps}")
        if self.eval_prompts < 0:
            p.append(f"`eval_prompts` must be >= 0, got {self.eval_prompts}")
        if self.max_prompt_length < 1:
            p.append(f"`max_prompt_length` must be >= 1, got {self.max_prompt_length}")
        return p


# Our defaults for TRL's PPOConfig, for small models on CPU (run on the tiny model and SmolLM2-135M):
# 2 PPO epochs instead of TRL's 4 halve the training part of a step (most of its cost on CPU);
# responses end at EOS, with no penalty for running out of length (with 1 std of penalty, SmolLM2
# learned to answer in half the length instead of learning a content rule: README, the learning
# benchmark); lr 1e-5 for a full fine-tune of a 135M model (TRL's 3e-6 is for 1B+).
FAST_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-5,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "num_mini_batches": 1,
    "num_ppo_epochs": 2,
    "num_train_epochs": 1,
    "response_length": 64,
    "temperature": 0.7,
    "stop_token": "eos",
    "missing_eos_penalty": None,
    "kl_coef": 0.05,
    "kl_estimator": "k1",
    "local_rollout_forward_batch_size": 16,
    "per_device_eval_batch_size": 16,
    "num_sample_generations": 0,  # TRL's own sample tables print to stdout; our evaluation replaces them
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 25,
    "save_total_limit": 2,
    "report_to": [],
    "seed": 0,
}
LORA_LEARNING_RATE = 2e-4  # adapters need a larger step than full fine-tuning
# Fields TRL computes itself from the batch settings (setting them has no effect; refuse them).
COMPUTED_FIELDS = (
    "world_size",
    "num_total_batches",
    "micro_batch_size",
    "local_batch_size",
    "batch_size",
    "local_mini_batch_size",
    "mini_batch_size",
)


def _trl_ppo() -> Any:
    """`trl.experimental.ppo`, imported without TRL's "experimental API" warning: pinning TRL below
    1.13 is this project's answer to it (DESIGN.md)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        import trl.experimental.ppo as ppo
        import trl.experimental.utils  # noqa: F401

    return ppo


def ppo_config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(_trl_ppo().PPOConfig)} - set(COMPUTED_FIELDS)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_ppo_config(
    options: PPOOptions, overrides: dict[str, Any], output_dir: Path, max_steps: int | None = None
) -> Any:
    """TRL's PPOConfig: FAST_DEFAULTS < LoRA/precision choices < user overrides, every problem at once.

    `max_steps` (ours, or TRL's `max_steps`, which TRL's PPO otherwise ignores) becomes
    `total_episodes` = steps x the batch across processes."""
    import torch

    PPOConfig = _trl_ppo().PPOConfig
    overrides = dict(overrides)
    problems = [f"unknown PPOConfig field `{k}`" for k in sorted(set(overrides) - ppo_config_fields())]
    trl_max_steps = overrides.pop("max_steps", None)
    if max_steps is None and _number(trl_max_steps) > 0:
        max_steps = trl_max_steps
    kw: dict[str, Any] = dict(FAST_DEFAULTS)
    if options.lora:
        kw["learning_rate"] = LORA_LEARNING_RATE
    kw.update({k: v for k, v in overrides.items() if k in ppo_config_fields()})
    try:
        mp = mixed_precision(options.precision)
    except WorkbenchError as e:  # named with the other problems
        mp = "no"
        problems.append(str(e))
    kw.update(bf16=mp == "bf16", fp16=mp == "fp16", use_cpu=not torch.cuda.is_available(), output_dir=str(output_dir))
    for key in ("learning_rate", "per_device_train_batch_size", "response_length", "num_ppo_epochs", "temperature"):
        if not _number(kw.get(key)) > 0:
            problems.append(f"`{key}` must be > 0, got {kw.get(key)!r}")
    for key in ("kl_coef", "missing_eos_penalty"):  # missing_eos_penalty may be null (no penalty)
        if kw.get(key) is not None and not _number(kw[key]) >= 0:
            problems.append(f"`{key}` must be >= 0, got {kw[key]!r}")
    reports = [kw["report_to"]] if isinstance(kw.get("report_to"), str) else list(kw.get("report_to") or [])
    if "tensorboard" in reports and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        problems.append("`report_to: tensorboard` needs the tensorboard package: pip install tensorboard")
    if kw.get("kl_estimator") not in ("k1", "k3"):
        problems.append(f"`kl_estimator` must be k1 or k3, got {kw.get('kl_estimator')!r}")
    if kw.get("stop_token") not in (None, "eos"):
        problems.append(f"`stop_token` must be eos or null, got {kw.get('stop_token')!r} (or set `stop_token_id`)")
    if kw.get("stop_token") and kw.get("stop_token_id") is not None:
        problems.append("`stop_token` and `stop_token_id` exclude each other; set one")
    local_batch = _as_int(kw.get("per_device_train_batch_size")) * _as_int(kw.get("gradient_accumulation_steps"))
    n_mini = _as_int(kw.get("num_mini_batches"))
    if n_mini < 1 or (local_batch and local_batch % n_mini):
        problems.append(
            f"`num_mini_batches` ({kw.get('num_mini_batches')}) must divide per_device_train_batch_size x "
            f"gradient_accumulation_steps ({local_batch})"
        )
    elif kw.get("whiten_rewards") and local_batch // n_mini < 8:
        problems.append(f"`whiten_rewards` needs mini-batches of >= 8 responses, got {local_batch // n_mini}")
    if max_steps is not None:
        if not (isinstance(max_steps, int) and max_steps >= 1):
            problems.append(f"`max_steps` must be >= 1, got {max_steps}")
        else:
            kw["total_episodes"] = max_steps * local_batch * _world_size()
    if problems:
        raise ValidationError("ppo config", problems)
    try:
        return PPOConfig(**kw)
    except (TypeError, ValueError) as e:
        raise WorkbenchError(f"ppo config: {e}") from e


def _number(v: Any) -> float:
    """v as a number for range checks; NaN (fails every comparison) for anything else."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _as_int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


# -- 1) adaptive KL control ------------------------------------------------------------------


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019 (arXiv:1909.08593, section 2.2): after each batch,

        e = clip(KL / target - 1, -0.2, 0.2);   coef <- coef * (1 + e * n_episodes / horizon)

    so the coefficient rises while the measured KL is above the target and falls while below,
    by at most 20% of the batch's share of the horizon per step."""

    value: float
    target: float
    horizon: int

    def update(self, kl: float, n_episodes: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_episodes / self.horizon
        return self.value


def kept_checkpoint_step(saved_steps: Sequence[int], over_budget_step: int) -> int | None:
    """The newest checkpoint whose policy was measured within the KL budget, or None (the start).

    Step t's `objective/kl` measures the policy that generated its rollouts: the one saved after
    step t - 1. So when step t is over budget, checkpoint t - 1 is over too, and t - 2 is the newest
    one measured within it (at step t - 1)."""
    good = [s for s in saved_steps if s <= over_budget_step - 2]
    return max(good) if good else None


# What the NaN / exploding-loss guard watches (`LossGuard`; the explosion rule on the two losses only).
GUARDED = ("loss/policy_avg", "loss/value_avg", "objective/kl")
DIVERGED = ("non_finite", "loss_explosion")  # stop reasons of the guard
PPO_ADVICE = (
    "Lower `learning_rate` (TRL's PPOTrainer does not clip gradients: `max_grad_norm` has no effect there), "
    "or keep the reward bounded (`normalize_rewards`, `reward_clip`); then start a new run. If the step was "
    "a false alarm, raise `loss_explode_factor` (null = stop on NaN/inf only)."
)


def last_good_checkpoint_step(saved: dict[int, Path], bad_step: int, lora: bool = False) -> int | None:
    """The newest complete checkpoint saved before `bad_step` whose policy and value weights are all
    finite, or None (the starting policy). Step t's losses come from updates made during step t,
    so checkpoint t - 1 (saved before them) is the first candidate."""
    for step in sorted((s for s in saved if s < bad_step), reverse=True):
        folder = saved[step]
        policy = _read_weights(folder, "adapter_model" if lora else "model")
        if weights_finite(policy) and weights_finite(_read_weights(folder / "value")):
            return step
    return None


# -- 2) the reward as PPO sees it ------------------------------------------------------------


def chat_suffix_ids(tok: Any) -> list[int]:
    """Token ids the chat template puts after an assistant turn's EOS (ChatML: "\\n").

    The reward model was trained on whole conversations, so it reads its score after them; PPO's
    responses stop at EOS. Empty for tokenizers without a chat template (their pairs end at EOS)."""
    if not getattr(tok, "chat_template", None) or tok.eos_token_id is None:
        return []
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    ids = list(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    if tok.eos_token_id not in ids:
        return []
    last = len(ids) - 1 - ids[::-1].index(tok.eos_token_id)
    return ids[last + 1 :]


@functools.cache
def _ppo_reward_classes() -> tuple[type, type, type]:
    import torch
    import torch.nn as nn
    from transformers.modeling_outputs import BaseModelOutputWithPast

    class NormalizedScore(nn.Module):
        """The reward head, then (r - mean) / std, clipped to +-clip (None: no clipping)."""

        def __init__(self, score: Any, mean: float, std: float, clip: float | None):
            super().__init__()
            self.inner, self.mean, self.std, self.clip = score, float(mean), float(std), clip

        def forward(self, hidden: Any) -> Any:
            r = (self.inner(hidden) - self.mean) / self.std
            return r.clamp(-self.clip, self.clip) if self.clip is not None else r

    class EndOfTurnBackbone(nn.Module):
        """Runs the reward model's backbone with the chat template's end-of-turn suffix appended
        after each sequence's final EOS, and returns that suffix's last hidden state at the EOS
        position: TRL's `get_reward` reads the score at the last non-pad token, and this makes that
        the score the reward model was trained to give. Other positions are unchanged."""

        def __init__(self, backbone: Any, eos_id: int, suffix: Sequence[int]):
            super().__init__()
            self.inner, self.eos_id = backbone, eos_id
            self.register_buffer("suffix", torch.tensor(list(suffix), dtype=torch.long), persistent=False)

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any = None, **kw: Any) -> Any:
            from rlhf.ppo_loop import append_end_of_turn

            b, n = input_ids.shape
            rows = torch.arange(b, device=input_ids.device)
            ids, ext_mask, pos, read = append_end_of_turn(input_ids, attention_mask, self.eos_id, self.suffix.tolist())
            last = n - 1 - torch.argmax(attention_mask.long().flip(1), dim=1)
            kw.pop("output_hidden_states", None)
            out = self.inner(input_ids=ids, attention_mask=ext_mask, position_ids=pos, output_hidden_states=True, **kw)
            h = out.hidden_states[-1]
            hidden = h[:, :n].clone()
            hidden[rows, last] = h[rows, read]  # the score TRL reads at the last real token
            return BaseModelOutputWithPast(last_hidden_state=hidden, hidden_states=(hidden,))

    class PPOReward(nn.Module):
        """The reward model in the shape TRL's `get_reward` calls (`base_model_prefix` backbone +
        `score`): normalised, clipped, read after the end-of-turn suffix."""

        base_model_prefix = "backbone"

        def __init__(
            self,
            reward_model: Any,
            mean: float = 0.0,
            std: float = 1.0,
            clip: float | None = None,
            eos_id: int | None = None,
            suffix: Sequence[int] = (),
        ):
            super().__init__()
            self.config = reward_model.config
            backbone = getattr(reward_model, reward_model.base_model_prefix)
            self.backbone = (
                EndOfTurnBackbone(backbone, eos_id, suffix) if len(suffix) and eos_id is not None else backbone
            )
            self.score = NormalizedScore(reward_model.score, mean, std, clip)

    return NormalizedScore, EndOfTurnBackbone, PPOReward


def build_ppo_reward(
    reward_model: Any,
    tok: Any,
    mean: float = 0.0,
    std: float = 1.0,
    clip: float | None = None,
    end_of_turn: bool = True,
) -> Any:
    """`PPOReward` around a reward model (see there). std must be > 0."""
    if not std > 0:
        raise WorkbenchError(
            f"reward std must be > 0, got {std}; retrain the reward model or set normalize_rewards=false"
        )
    _, _, cls = _ppo_reward_classes()
    suffix = chat_suffix_ids(tok) if end_of_turn else []
    return cls(reward_model, mean, std, clip, tok.eos_token_id, suffix)


def reward_stats(reward_run: Path, model_config: Any) -> tuple[float, float]:
    """(mean, std) the reward run saved: in the model config, else reward_stats.json."""
    mean, std = getattr(model_config, "reward_mean", None), getattr(model_config, "reward_std", None)
    if (mean is None or std is None) and (reward_run / "reward_stats.json").exists():
        stats = read_json(reward_run / "reward_stats.json")
        mean, std = stats.get("reward_mean"), stats.get("reward_std")
    if mean is None or std is None:
        raise WorkbenchError(
            f"{reward_run} has no reward statistics (reward_mean/reward_std); retrain it with `rlhf train-reward` "
            "or set normalize_rewards=false"
        )
    return float(mean), float(std)


def load_value_model(reward_model_dir: Path, mean: float = 0.0, std: float = 1.0) -> Any:
    """The value model: the reward model, its head rescaled to the normalised reward's units
    (weight / std; a bias, if any, becomes (bias - mean) / std), so its first predictions are on
    the scale of the returns it must learn. Reward runs centre their rewards, so a bias-free head
    is off by only mean / std."""
    import torch
    from transformers import AutoModelForSequenceClassification

    value = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
    with torch.no_grad():
        value.score.weight.div_(std)
        if getattr(value.score, "bias", None) is not None:
            value.score.bias.sub_(mean).div_(std)
    for key in ("reward_mean", "reward_std"):  # the reward's statistics, not the value model's
        value.config.__dict__.pop(key, None)
    return value


# -- prompts ---------------------------------------------------------------------------------


@dataclass
class PromptSplit:
    train: list[Any]  # prompt contents: text or chat messages
    eval: list[Any]
    source: str
    sha256: str


def load_prompt_rows(prompts: Path | None, store: Any | None) -> tuple[list[tuple[Any, str | None]], str]:
    """[(content, split)] from a prompt file (rlhf.io.read_prompts) or the store, and where from."""
    if prompts is not None:
        from rlhf.io import read_prompts

        return [(r.content, r.split) for r in read_prompts(Path(prompts))], str(Path(prompts).resolve())
    from sqlalchemy import select

    from rlhf.schema import Prompt
    from rlhf.store import Store

    store = store or Store()
    store.require_ready()
    with store.session() as s:
        rows = [(p.content, p.split) for p in s.scalars(select(Prompt).order_by(Prompt.id))]
    return rows, f"store:{store.display_url}"


def split_prompts(rows: Sequence[tuple[Any, str | None]], n_eval: int, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, held-out) prompt contents. The `test` split's first `n_eval` are held out (the rest
    of the test split is not trained on either); without a test split, min(n_eval, half) prompts
    drawn with `seed` are."""
    import random

    test = [c for c, s in rows if s == "test"]
    rest = [c for c, s in rows if s != "test"]
    if test:
        return rest, test[:n_eval]
    k = min(n_eval, len(rest) // 2)
    order = list(range(len(rest)))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [c for i, c in enumerate(rest) if i not in held], [rest[i] for i in sorted(held)]


def prompt_text(content: Any) -> str:
    """A prompt for display: its text, or its last user message."""
    if isinstance(content, str):
        return content
    users = [m["content"] for m in content if m.get("role") == "user"]
    return users[-1] if users else content[-1]["content"]


def encode_prompt(tok: Any, content: Any) -> list[int]:
    """Token ids of the prompt as the policy sees it: chat template + generation prompt, no extra
    special tokens (the template has them; the reward model was trained on the same ids)."""
    from rlhf.models import format_prompt

    return list(tok(format_prompt(tok, content), add_special_tokens=False)["input_ids"])


# -- 4) evaluation ---------------------------------------------------------------------------


def token_kl(policy_logits: Any, ref_logits: Any) -> Any:
    """KL(policy || reference) of the next-token distributions, summed over the whole vocabulary:
    sum_v p(v) (log p(v) - log q(v)) at every position.

    policy_logits, ref_logits: [B, T, V] (already divided by the sampling temperature) -> [B, T] nats."""
    import torch

    logp = torch.log_softmax(policy_logits.float(), dim=-1)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> Any:
    import torch

    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
    return out


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """A fixed seed inside, the caller's RNG untouched outside (training stays reproducible)."""
    import torch

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class Evaluator:
    """Generates on the fixed held-out prompts as the rollouts do (same temperature, length, stop
    token, seeded: the reference and the policy draw the same random numbers), and measures each
    response: reward (the normalised, clipped score PPO sees, without TRL's missing-EOS penalty),
    length (tokens up to and including the stop token), and the exact per-token KL to the reference."""

    def __init__(self, tok: Any, contents: Sequence[Any], args: Any, seed: int):
        self.tok = tok
        self.contents = list(contents)
        self.queries = [encode_prompt(tok, c) for c in self.contents]
        self.args = args
        self.seed = seed

    def run(self, trainer: Any, reference: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """(eval/* metrics, one row per prompt). `reference`: the frozen starting policy (KL 0)."""
        import torch
        from transformers import GenerationConfig

        _trl_ppo()
        from trl.experimental.ppo.ppo_trainer import batch_generation, truncate_response
        from trl.experimental.utils import first_true_indices, get_reward
        from trl.models.utils import unwrap_model_for_generation

        args, tok, pad = self.args, self.tok, self.tok.pad_token_id
        temp = args.temperature + 1e-7
        gen = GenerationConfig(
            max_new_tokens=args.response_length, temperature=temp, top_k=0, top_p=1.0, do_sample=True
        )
        stop_id = trainer.stop_token_id
        rows: list[dict[str, Any]] = []
        with unwrap_model_for_generation(
            trainer.model, trainer.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation
        ) as unwrapped:
            policy = unwrapped.policy
            ref_trunk, ref_head, ref_ctx, fused = reference_parts(trainer, policy)
            bs = args.per_device_eval_batch_size
            for start in range(0, len(self.queries), bs):
                query = _left_pad(self.queries[start : start + bs], pad).to(trainer.accelerator.device)
                ctx = query.shape[1]
                with torch.no_grad():
                    # The policy's logits come with its samples (divided by the temperature, as the
                    # generation config samples them); one reference pass gives the reference's
                    # logits at the response positions and, when fused, the reward too.
                    with (
                        _seeded(self.seed + start),
                        ref_ctx() if reference else merged_adapters(policy),
                        trainer.accelerator.autocast(),  # as the rollouts: the distributions it samples
                    ):
                        query_response, p_logits = batch_generation(
                            (trainer.ref_model or policy) if reference else policy, query, query.shape[0], pad, gen
                        )
                    response = query_response[:, ctx:]
                    post = truncate_response(stop_id, pad, response) if stop_id is not None else response
                    post_qr = torch.cat((query, post), 1)
                    last = first_true_indices(post == pad) - 1  # index of the last response token
                    valid = torch.arange(post.shape[1], device=post.device)[None, :] <= last[:, None]
                    with ref_ctx(), trainer.accelerator.autocast():
                        r_logits, score, _ = reference_pass(
                            ref_trunk, ref_head, fused, post_qr, query_response, ctx, pad, tok.eos_token_id, temp
                        )
                    if reference:
                        kl = torch.zeros(post.shape, device=post.device)
                    else:
                        kl = token_kl(p_logits, r_logits)
                    del p_logits, r_logits
                    if score is None:
                        _, score, _ = get_reward(trainer.reward_model, post_qr, pad, ctx)
                for i in range(post.shape[0]):
                    n = int(valid[i].sum())
                    rows.append(
                        {
                            "prompt_index": start + i,
                            "prompt": prompt_text(self.contents[start + i]),
                            "response": tok.decode(post[i, :n], skip_special_tokens=True),
                            "reward": float(score[i]),
                            "kl": float(kl[i, :n].sum() / max(n, 1)),
                            "kl_sum": float(kl[i, :n].sum()),
                            "length": n,
                        }
                    )
        n_tokens = sum(r["length"] for r in rows)
        metrics = {
            "eval/reward_mean": sum(r["reward"] for r in rows) / len(rows),
            # Token-weighted: the mean KL of one generated token.
            "eval/kl_to_ref": sum(r["kl_sum"] for r in rows) / max(n_tokens, 1),
            "eval/response_length": n_tokens / len(rows),
        }
        return metrics, rows


def build_ppo_report(reference: list[dict[str, Any]], policy: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """Reference vs tuned policy on the same held-out prompts (rows from `Evaluator.run`, in the
    same prompt order). Win rate by the reward model, ties counting half."""
    if [r["prompt_index"] for r in reference] != [r["prompt_index"] for r in policy]:
        raise ValueError("reference and policy rows must cover the same prompts in the same order")
    n = len(policy)

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return sum(r[key] for r in rows) / n

    outcomes = [
        1.0 if p["reward"] > r["reward"] else 0.5 if p["reward"] == r["reward"] else 0.0
        for r, p in zip(reference, policy)
    ]
    wins = sum(outcomes)
    n_tokens = sum(p["length"] for p in policy)
    return {
        "step": step,
        "prompts": n,
        "reference": {"reward_mean": mean(reference, "reward"), "response_length": mean(reference, "length")},
        "policy": {
            "reward_mean": mean(policy, "reward"),
            "response_length": mean(policy, "length"),
            "kl_to_ref": sum(p["kl_sum"] for p in policy) / max(n_tokens, 1),
        },
        "reward_gain": mean(policy, "reward") - mean(reference, "reward"),
        "win_rate": wins / n,
        "win_rate_interval": win_rate(outcomes),  # value, n, 95% Wilson low/high, wins/ties/losses
        "length_change": mean(policy, "length") - mean(reference, "length"),
        "pairs": [
            {
                "prompt": p["prompt"],
                "reference": r["response"],
                "policy": p["response"],
                "reward_reference": r["reward"],
                "reward_policy": p["reward"],
                "kl": p["kl"],
                "length_reference": r["length"],
                "length_policy": p["length"],
            }
            for r, p in zip(reference, policy)
        ],
    }


# -- the trainer: TRL's PPOTrainer + our per-step hooks ----------------------------------------


class _StopRun(Exception):
    """Raised from a step's log to end TRL's loop (it has no stop signal of its own)."""


@dataclass
class _StepHooks:
    """What runs at every PPO step, between TRL computing the metrics and the callbacks seeing them."""

    run_dir: Path
    controller: AdaptiveKLController | None
    kl_budget: float | None
    evaluator: Evaluator | None
    eval_steps: int
    guard: LossGuard | None = None
    stop: dict[str, Any] | None = None
    step_seconds: list[float] = field(default_factory=list)
    last_eval: tuple[int, dict[str, float], list[dict[str, Any]]] | None = None
    _t: float = field(default_factory=time.perf_counter)

    def start_clock(self) -> None:
        self._t = time.perf_counter()

    def on_step(self, trainer: Any, logs: dict[str, Any]) -> None:
        step = trainer.state.global_step
        self.step_seconds.append(time.perf_counter() - self._t)
        kl = float(logs["objective/kl"])
        logs["kl/coef"] = float(trainer.args.kl_coef)  # the coefficient this step's rewards used
        if self.controller is not None and math.isfinite(kl):
            # TRL reads args.kl_coef when it builds the next step's rewards.
            trainer.args.kl_coef = self.controller.update(kl, trainer.args.batch_size)
        diverged = self.guard.check(step, {k: float(logs[k]) for k in GUARDED if k in logs}) if self.guard else None
        if diverged is not None:
            self.stop = diverged
        elif self.kl_budget is not None and not kl <= self.kl_budget:
            self.stop = {"reason": "kl_budget", "step": step, "kl": kl, "kl_budget": self.kl_budget}
        elif self.evaluator is not None and (
            (self.eval_steps and step % self.eval_steps == 0) or step >= trainer.state.max_steps
        ):
            self.evaluate(trainer, logs, step)
        self._t = time.perf_counter()

    def evaluate(self, trainer: Any, logs: dict[str, Any], step: int, reference: bool = False) -> None:
        metrics, rows = self.evaluator.run(trainer, reference=reference)
        logs.update(metrics)
        if trainer.is_world_process_zero():
            _append_jsonl(self.run_dir / "samples.jsonl", [{"step": step, **r} for r in rows])
        self.last_eval = (step, metrics, rows)

    def state_dict(self, trainer: Any) -> dict[str, Any]:
        return {
            "global_step": trainer.state.global_step,
            "episode": trainer.state.episode,
            "kl_coef": trainer.args.kl_coef,  # the coefficient the next step uses
        }


def _append_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()


def _trainer_class() -> Any:
    import torch

    PPOTrainer = _trl_ppo().PPOTrainer

    class WorkbenchPPOTrainer(PPOTrainer):
        """TRL's PPOTrainer; every step's metrics pass through `_StepHooks` before any callback sees
        them, and every checkpoint also holds the value model and our state."""

        def __init__(self, *args: Any, hooks: _StepHooks, **kwargs: Any):
            super().__init__(*args, **kwargs)
            # Set by transformers.Trainer.__init__, which TRL's PPOTrainer never calls; Trainer._save
            # reads it on non-main processes of a multi-process run.
            self.is_distributed_loading_by_transformers = False
            self.hooks = hooks
            self.dataloader = _PromptPasses(self.dataloader)  # TRL's loop reads self.dataloader
            if not hasattr(self.model, "policy"):
                # DistributedDataParallel: TRL's loop reads `model.policy` (the LoRA reference pass,
                # null_ref_context) on it. Plain attributes, not submodules: DDP's state is unchanged.
                inner = self.accelerator.unwrap_model(self.model)
                object.__setattr__(self.model, "policy", inner.policy)
                object.__setattr__(self.model, "value_model", inner.value_model)

        def train(self, *args: Any, **kwargs: Any) -> None:
            from rlhf.ppo_loop import train

            # Our PPO step (fewer passes, rlhf/ppo_loop.py) on one process; TRL's loop otherwise.
            value = self.accelerator.unwrap_model(self.model).value_model
            if is_shared_value(value) and self.accelerator.num_processes == 1:
                return train(self)
            return super().train(*args, **kwargs)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "objective/kl" in logs:  # TRL logs one PPO step's metrics exactly once per step
                self.hooks.on_step(self, logs)
            super().log(logs, start_time)
            if self.hooks.stop is not None:
                raise _StopRun(self.hooks.stop["reason"])

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            # TRL saves `self.model.policy`; under DistributedDataParallel that sits in `.module`,
            # and TRL would try to save the whole wrapper (policy + value) and fail.
            wrapped = self.model
            if not hasattr(wrapped, "policy") and hasattr(wrapped, "module"):
                self.model = wrapped.module
            try:
                super().save_model(output_dir, _internal_call)
            finally:
                self.model = wrapped

        def create_model_card(self, *args: Any, **kwargs: Any) -> None:
            # A hub model card is not needed in a local checkpoint, and TRL's reads `model.config`,
            # which a DistributedDataParallel-wrapped model (multi-process runs) does not have.
            return None

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            super()._save_checkpoint(model, trial)
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            if self.args.should_save and folder.is_dir():
                value = self.accelerator.unwrap_model(self.model).value_model
                value.save_pretrained(folder / "value")
                torch.save(self.dataloader.pass_rng, folder / "pass_rng.pt")
                write_json(folder / STATE_FILE, self.hooks.state_dict(self))

    return WorkbenchPPOTrainer


def _resume_callback(step: int, episode: int, total_steps: int) -> Any:
    from transformers import TrainerCallback

    class _Resume(TrainerCallback):
        """TRL's loop restarts its counters at 0: move them to the checkpoint's once it has begun."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            state.global_step, state.episode, state.max_steps = step, episode, total_steps

    return _Resume()


class _PromptPasses:
    """The PPO dataloader, remembering the torch RNG state each pass over the prompts began with
    (the pass's shuffle is drawn from it), so that a resumed run replays the killed run's order:
    it redraws the interrupted pass, skips the batches already used, then restores the
    checkpoint's RNG state (the next rollouts then sample as the killed run's would have)."""

    def __init__(self, loader: Any):
        self.loader = loader
        self.pass_rng: Any = None  # torch RNG state at the start of the current pass
        self.resume: tuple[Any, int, Any] | None = None  # (pass RNG state, batches to skip, restore RNG)

    def __iter__(self) -> Iterator[Any]:
        import torch

        if self.resume is None:
            self.pass_rng = torch.random.get_rng_state()
            yield from self.loader
            return
        pass_rng, skip, restore_rng = self.resume
        self.resume = None
        if skip:  # mid-pass: redraw that pass's shuffle (at a pass boundary the next one is drawn fresh)
            torch.random.set_rng_state(pass_rng)
        self.pass_rng = pass_rng if skip else None
        it = iter(self.loader)
        for _ in range(skip):
            next(it)
        restore_rng()
        if self.pass_rng is None:
            self.pass_rng = torch.random.get_rng_state()
        yield from it

    def __len__(self) -> int:
        return len(self.loader)


# -- checkpoints -----------------------------------------------------------------------------


def complete_checkpoints(run_dir: Path) -> dict[int, Path]:
    """{step: folder} of the checkpoints that finished saving (our state file is written last)."""
    out = {}
    for d in (Path(run_dir) / "checkpoints").glob("checkpoint-*"):
        if (d / STATE_FILE).exists() and d.name.split("-")[-1].isdigit():
            out[int(d.name.split("-")[-1])] = d
    return dict(sorted(out.items()))


def _restore_weights(
    trainer: Any, folder: Path | None, reward_model_dir: Path, initial_adapter: Any, initial_value_head: Any = None
) -> None:
    """Policy and value weights from a checkpoint folder, or (folder None) the starting ones."""
    import torch

    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    policy, value = wrapper.policy, wrapper.value_model
    with torch.no_grad():
        if trainer.is_peft_model:
            from peft import set_peft_model_state_dict

            state = _read_weights(folder, "adapter_model") if folder else initial_adapter
            set_peft_model_state_dict(policy, state)
        elif folder:
            _load_weights(policy, _read_weights(folder))
        else:
            _load_weights(policy, trainer.ref_model.state_dict())
        if is_shared_value(value):  # the trunk is the policy's; the head alone is the value's own
            value.load_state_dict(_read_weights(folder / "value") if folder else initial_value_head)
        else:
            _load_weights(value, _read_weights(folder / "value" if folder else reward_model_dir))


def _restore_checkpoint(trainer: Any, folder: Path, reward_model_dir: Path) -> tuple[int, int]:
    """Everything a killed run needs to go on from `folder`: weights, optimizer, LR schedule, KL
    coefficient, step counters, data position and RNG. Returns (step, episode)."""
    import torch

    state = read_json(folder / STATE_FILE)
    _restore_weights(trainer, folder, reward_model_dir, None)
    trainer.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    trainer.lr_scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    trainer.args.kl_coef = state["kl_coef"]
    if trainer.hooks.controller is not None:
        trainer.hooks.controller.value = state["kl_coef"]
    step, episode = int(state["global_step"]), int(state["episode"])
    total = trainer.args.num_total_batches
    # The schedule was built for the whole run; the loop runs what is left.
    trainer.args.num_total_batches = total - step
    trainer.add_callback(_resume_callback(step, episode, total))
    per_pass = len(trainer.dataloader)
    pass_rng = torch.load(folder / "pass_rng.pt", weights_only=True)
    trainer.dataloader.resume = (pass_rng, step % per_pass, lambda: trainer._load_rng_state(str(folder)))
    return step, episode


@contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


# -- the run ---------------------------------------------------------------------------------


@dataclass
class PPORun:
    """A PPO run ready to train: the trainer (TRL's, with our hooks) and what the run needs beside it."""

    trainer: Any
    tok: Any
    hooks: _StepHooks
    run_dir: Path
    config: dict[str, Any]  # what config.json records
    reward_model_dir: Path
    resume_from: Path | None = None
    initial_adapter: dict[str, Any] | None = None  # LoRA: the adapter at the start (a KL stop may restore it)
    initial_value_head: dict[str, Any] | None = None  # shared value: the head at the start


def build_ppo_trainer(
    reward_run: Path,
    options: PPOOptions | None = None,
    trl_overrides: dict[str, Any] | None = None,
    max_steps: int | None = None,
    prompts: Path | None = None,
    store: Any | None = None,
    run_dir: Path | None = None,
    callbacks: Sequence[Any] | None = None,
) -> PPORun:
    """Check every input, then load the models and build the trainer (arguments as `train_ppo`).

    The run folder is made only once the inputs checked out: a refused run leaves nothing behind."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.models import load_tokenizer, resolve_model

    options = options or PPOOptions()
    if problems := options.problems():
        raise ValidationError("ppo options", problems)
    reward_run = Path(reward_run).resolve()
    reward_model_dir = reward_run / "model"
    if not (reward_model_dir / "config.json").exists():
        raise WorkbenchError(f"{reward_run} holds no trained reward model (no model/ folder); did the run finish?")
    if options.resume and run_dir is None:
        raise WorkbenchError("`resume` needs the run folder to resume (run_dir)")
    policy_path = resolve_model(options.policy)
    args = build_ppo_config(options, dict(trl_overrides or {}), Path(run_dir or "pending") / "checkpoints", max_steps)

    # 1) prompts: chat template, left padding (the collator pads), the held-out set kept apart.
    tok = load_tokenizer(policy_path, padding_side="left")
    rows, source = load_prompt_rows(prompts, store)
    if not rows:
        raise WorkbenchError("no prompts: import some with `rlhf prompts import FILE`, or pass a prompt file")
    fits = [(c, s) for c, s in rows if len(encode_prompt(tok, c)) <= options.max_prompt_length]
    too_long = len(rows) - len(fits)
    if too_long:
        log.warning("%d prompts longer than max_prompt_length=%d skipped", too_long, options.max_prompt_length)
    train_contents, eval_contents = split_prompts(fits, options.eval_prompts, args.seed)
    local_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
    if len(train_contents) < local_batch:
        raise WorkbenchError(
            f"{len(train_contents)} training prompts (after {len(eval_contents)} held out, {too_long} too long) "
            f"are fewer than one batch ({local_batch}); add prompts or lower `per_device_train_batch_size`"
        )
    train_ds = datasets.Dataset.from_dict({"input_ids": [encode_prompt(tok, c) for c in train_contents]})
    run_dir = Path(run_dir) if run_dir is not None else new_shared_run_dir("ppo", options.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    args.output_dir = str(run_dir / "checkpoints")
    checkpoints = complete_checkpoints(run_dir) if options.resume else {}

    # 2) models: policy (+ LoRA), reward (normalised, clipped), value from the reward model.
    torch.manual_seed(args.seed)
    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    if policy.get_input_embeddings().num_embeddings < len(tok):
        policy.resize_token_embeddings(len(tok))
    policy.config.pad_token_id = policy.generation_config.pad_token_id = tok.pad_token_id
    reward_model = reward_model_from(reward_model_dir).eval()
    mean, std = reward_stats(reward_run, reward_model.config) if options.normalize_rewards else (0.0, 1.0)
    reward = build_ppo_reward(reward_model, tok, mean, std, options.reward_clip).eval().requires_grad_(False)
    shared = options.value_model == "shared"
    fused_reward = None
    if shared:
        from rlhf.ppo_loop import shared_trunk_value

        # The head starts as the reward head in normalised units (as load_value_model does) when it
        # reads the same features; a pooled reward head does not: zeros.
        head = reward_model.score.weight.detach().float()
        value = shared_trunk_value(policy, head / std if head.shape[-1] == policy.config.hidden_size else None)
        if _same_trunk(reward_model, policy):  # frozen-backbone reward on the reference's weights
            spec = getattr(reward_model.config, "reward_head", None) or {}
            fused_reward = (reward.score, chat_suffix_ids(tok), spec.get("layer"), spec.get("pooling", "mean_max"))
    else:
        value = load_value_model(reward_model_dir, mean, std)
    value.config.pad_token_id = tok.pad_token_id
    initial_value_head = {k: v.detach().clone() for k, v in value.state_dict().items()} if shared else None
    vocab_v, vocab_p = reward_model.get_input_embeddings().num_embeddings, policy.get_input_embeddings().num_embeddings
    if vocab_v != vocab_p:
        raise WorkbenchError(
            f"the reward model's vocabulary ({vocab_v}) differs from the policy's ({vocab_p}): "
            "train the reward model on the policy's base (`model:` of the reward config)"
        )
    peft_config = None
    if options.lora:
        from peft import LoraConfig

        # Dropout off: TRL disables dropout in every model it trains anyway.
        peft_config = LoraConfig(
            task_type="CAUSAL_LM", r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=0.0,
            target_modules="all-linear",
        )  # fmt: skip

    # 3) the trainer, with our per-step hooks.
    controller = (
        AdaptiveKLController(args.kl_coef, options.kl_target, options.kl_horizon) if options.kl_target else None
    )
    evaluator = Evaluator(tok, eval_contents, args, args.seed) if eval_contents else None
    guard = LossGuard(options.loss_explode_factor, ("loss/policy_avg", "loss/value_avg"))
    hooks = _StepHooks(run_dir, controller, options.kl_budget, evaluator, options.eval_steps, guard)
    # TRL's PPOTrainer builds its Accelerator without a precision: it reads this variable.
    with _env("ACCELERATE_MIXED_PRECISION", "bf16" if args.bf16 else "fp16" if args.fp16 else "no"):
        trainer = _trainer_class()(
            args=args,
            processing_class=tok,
            model=policy,
            ref_model=None,  # full fine-tune: TRL copies the starting policy; LoRA: the adapter off
            reward_model=reward,
            train_dataset=train_ds,
            value_model=value,
            peft_config=peft_config,
            callbacks=[metrics_callback(run_dir), *(callbacks or [])],
            hooks=hooks,
        )
    trainer.fused_reward = fused_reward
    trainer.token_rewards = options.token_rewards
    for cb in trainer.callback_handler.callbacks:  # TensorBoard (when asked) writes into the run folder
        if type(cb).__name__ == "TensorBoardCallback" and getattr(cb, "logging_dir", None) is None:
            cb.logging_dir = str(run_dir / "tensorboard")
    initial_adapter = None
    if trainer.is_peft_model:
        from peft import get_peft_model_state_dict

        start_policy = trainer.accelerator.unwrap_model(trainer.model).policy
        initial_adapter = {k: v.detach().clone() for k, v in get_peft_model_state_dict(start_policy).items()}
    prompts_hash = hashlib.sha256(
        json.dumps([train_contents, eval_contents], sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()
    config = {
        "options": dataclasses.asdict(options),
        "trl_overrides": dict(trl_overrides or {}),  # what was asked (resume re-applies these)
        "trl": args.to_dict(),
        "reward_run": str(reward_run),
        "reward_model_sha256": folder_hash(reward_model_dir),
        "reward_normalization": {"mean": mean, "std": std, "clip": options.reward_clip},
        "policy_path": str(policy_path),
        "prompts": {
            "source": source,
            "sha256": prompts_hash,
            "train": len(train_contents),
            "eval": len(eval_contents),
            "skipped_too_long": too_long,
        },
        "precision": trainer.accelerator.mixed_precision,
        "reference": "the policy with its LoRA adapter off" if options.lora else "a frozen copy of the starting policy",
        "value": "a head on the policy's trunk" if shared else "a separate model initialised from the reward model",
        "reward_in_reference_pass": fused_reward is not None,
        "token_rewards": options.token_rewards and fused_reward is not None and fused_reward[2] is not None,
        "end_of_turn_suffix": chat_suffix_ids(tok),
    }
    resume_from = checkpoints[max(checkpoints)] if checkpoints else None
    return PPORun(
        trainer, tok, hooks, run_dir, config, reward_model_dir, resume_from, initial_adapter, initial_value_head
    )


def _same_trunk(reward_model: Any, policy: Any) -> bool:
    """Whether a frozen-backbone reward model's trunk holds exactly the policy's starting weights
    (then the reference pass can give the reward too)."""
    import torch

    if not getattr(reward_model.config, "reward_backbone_frozen", False):
        return False
    trunk = getattr(reward_model, reward_model.base_model_prefix)
    a = getattr(trunk, "backbone", trunk).state_dict()  # a pooled head's trunk keeps only its first layers
    b = getattr(policy, policy.base_model_prefix).state_dict()
    return a.keys() <= b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def saved_run_config(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """A run's own options and TRL overrides (its config.json) as a config dict, and its reward run:
    what a resume without a new --config goes on with. ({}, None) for a run without config.json."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return {}, None
    saved = json.loads(path.read_text(encoding="utf-8"))
    return {**saved.get("options", {}), "trl": saved.get("trl_overrides", {})}, saved.get("reward_run")


def train_ppo(
    reward_run: Path,
    options: PPOOptions | None = None,
    trl_overrides: dict[str, Any] | None = None,
    max_steps: int | None = None,
    prompts: Path | None = None,
    store: Any | None = None,
    run_dir: Path | None = None,
    callbacks: Sequence[Any] | None = None,
) -> Path:
    """Fine-tune the policy with PPO against a reward run; returns the run folder (see module doc).

    Prompts come from `prompts` (a file) or else the store (`store`, default: the data home's).
    `options.resume` with `run_dir`: go on from that run's newest complete checkpoint.
    `callbacks`: extra transformers TrainerCallbacks (progress, tests)."""
    run = build_ppo_trainer(reward_run, options, trl_overrides, max_steps, prompts, store, run_dir, callbacks)
    trainer, hooks, run_dir = run.trainer, run.hooks, run.run_dir
    main = trainer.is_world_process_zero()

    # 1) the reference's evaluation (step 0): the "before" of the report; then resume, or start clean.
    ref_rows = None
    if hooks.evaluator is not None:
        ref_metrics, ref_rows = hooks.evaluator.run(trainer, reference=True)
    resumed_step = None
    if run.resume_from is not None:
        resumed_step, _ = _restore_checkpoint(trainer, run.resume_from, run.reward_model_dir)
        truncate_jsonl(run_dir / "metrics.jsonl", resumed_step)
        truncate_jsonl(run_dir / "samples.jsonl", resumed_step)
        if hooks.guard is not None:  # the explosion rule's running median goes on from the logged steps
            for m in MetricsLog(run_dir).read():
                if "objective/kl" in m:
                    hooks.guard.check(m["step"], {k: m[k] for k in GUARDED if isinstance(m.get(k), (int, float))})
        log.info("resuming %s from %s", run_dir, run.resume_from.name)
    else:
        for stale in ("metrics.jsonl", "samples.jsonl", "report.json", "summary.json"):
            (run_dir / stale).unlink(missing_ok=True)
        if main:
            write_json(run_dir / "config.json", run.config)
        if ref_rows is not None:
            hooks.last_eval = (0, ref_metrics, ref_rows)
            if main:
                _append_jsonl(run_dir / "samples.jsonl", [{"step": 0, **r} for r in ref_rows])
            trainer.log({"kl/coef": float(trainer.args.kl_coef), **ref_metrics})

    # 2) train (TRL's loop), stopping early on the KL budget.
    start = time.perf_counter()
    stop: dict[str, Any] = {"reason": "completed"}
    # TRL's loop calls gc.collect() twice per step; with everything alive now frozen, each collect
    # walks only the step's new objects (0.13 s -> ~0 per call with transformers + TRL loaded).
    gc.freeze()
    hooks.start_clock()
    try:
        trainer.train()
    except _StopRun:
        stop = dict(hooks.stop or {})
        trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
        saved = complete_checkpoints(run_dir)
        if stop["reason"] == "kl_budget":
            kept = kept_checkpoint_step(list(saved), stop["step"])
        else:  # diverged: the newest checkpoint saved before the bad step whose weights are finite
            kept = last_good_checkpoint_step(saved, stop["step"], trainer.is_peft_model)
        _restore_weights(trainer, saved.get(kept), run.reward_model_dir, run.initial_adapter, run.initial_value_head)
        stop.update(kept_checkpoint=saved[kept].name if kept is not None else None, kept_step=kept or 0)
        if stop["reason"] == "kl_budget":
            msg = "KL %.3g > budget %.3g at step %d: keeping step %d"
            log.warning(msg, stop["kl"], stop["kl_budget"], stop["step"], kept or 0)
        else:
            where = f"{saved[kept].name} (step {kept})" if kept else "the starting policy (step 0)"
            stop["message"] = divergence_message(stop, f"{where} as the saved policy and value model", PPO_ADVICE)
            log.error("%s", stop["message"])
    finally:
        gc.unfreeze()
    train_s = time.perf_counter() - start
    final_step = stop.get("kept_step", trainer.state.global_step)

    # 3) the "after" of the report: the policy being saved, on the same prompts and seeds.
    report = None
    if ref_rows is not None:
        last = hooks.last_eval
        if last is not None and last[0] == final_step == trainer.state.global_step:
            policy_rows = last[2]
        else:
            _, policy_rows = hooks.evaluator.run(trainer, reference=final_step == 0)
        report = build_ppo_report(ref_rows, policy_rows, final_step)

    # 4) save: policy (LoRA merged: a plain model), value model, tokenizer with both; summary last.
    if main:
        wrapper = trainer.accelerator.unwrap_model(trainer.model)
        out_policy = wrapper.policy.merge_and_unload() if trainer.is_peft_model else wrapper.policy
        out_policy.save_pretrained(run_dir / "policy")
        run.tok.save_pretrained(run_dir / "policy")
        if is_shared_value(wrapper.value_model):  # the trunk is the (merged) policy's
            wrapper.value_model.save_full(run_dir / "value", out_policy.base_model_prefix)
        else:
            wrapper.value_model.save_pretrained(run_dir / "value")
        run.tok.save_pretrained(run_dir / "value")
        if report is not None:
            write_json(run_dir / "report.json", report)
        steps = [m for m in MetricsLog(run_dir).read() if "objective/kl" in m]
        step_s = hooks.step_seconds[1:] or hooks.step_seconds  # the first step warms up
        summary = {
            "global_step": trainer.state.global_step,
            "saved_step": final_step,
            "episodes": trainer.state.episode,
            "stop": stop,
            "resumed_from_step": resumed_step,
            "train_seconds": train_s,
            "seconds_per_step": statistics.median(step_s) if step_s else None,
            "first_step_seconds": hooks.step_seconds[0] if hooks.step_seconds else None,
            "precision": run.config["precision"],
            "kl_coef_final": float(trainer.args.kl_coef),
            "final_metrics": steps[-1] if steps else None,
            "eval": {k: v for k, v in report.items() if k != "pairs"} if report else None,
        }
        write_json(run_dir / "summary.json", summary)
    if stop["reason"] in DIVERGED:
        raise TrainingDiverged(stop["message"])
    return run_dir
