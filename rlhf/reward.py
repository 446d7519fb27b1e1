"""Reward-model training (TRL `RewardTrainer`) and evaluation: what the reward model really learned.

Reads an export folder (`rlhf export`: a DatasetDict with TRL's prompt/chosen/rejected columns plus
provenance, and manifest.json). Writes `runs/reward/<id>/`:

    config.json        our options, TRL's RewardConfig as used, the export folder and its rows hash
    metrics.jsonl      every logged step (loss, accuracy, margin, mean_reward, eval_accuracy, ...)
    model/             AutoModelForSequenceClassification (LoRA merged), tokenizer; config carries
                       reward_mean / reward_std over the training responses (PPO normalises with them)
    reward_stats.json  the same mean / std, and over how many responses
    eval_report.json   held-out accuracy by strength, category, agreement; calibration; length bias;
                       position; misranked pairs (see `build_eval_report`)
    summary.json       final metrics, pairs dropped as too long, pairs/s, `stop` (completed, or why the
                       NaN / exploding-loss guard stopped the run and which checkpoint became model/);
                       written last

The base model is the policy's (same tokenizer, as PPO needs) with a scalar `score` head.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.errors import TrainingDiverged, ValidationError, WorkbenchError
from rlhf.runs import (
    LossGuard,
    divergence_message,
    folder_hash,
    is_main_process,
    load_weights,
    metrics_callback,
    new_shared_run_dir,
    read_json,
    read_weights,
    truncate_jsonl,
    weights_finite,
    write_json,
)
from rlhf.schema import STRENGTHS
from rlhf.stats import learning_verdict, proportion

log = logging.getLogger(__name__)


@dataclass
class RewardOptions:
    """Our knobs for reward training. TRL's own knobs go in `trl` (any `RewardConfig` field)."""

    model: str = field(default="default", metadata={"help": "Base model: the policy's (same tokenizer as PPO)."})
    lora: bool = field(
        default=False,
        metadata={
            "help": "Train LoRA adapters + the score head instead of all weights: less memory, "
            "about the same speed here."
        },
    )
    freeze_backbone: bool = field(
        default=True,
        metadata={
            "help": "Train only the score head on the frozen base model's features (computed once; "
            "see rlhf/reward_head.py): minutes instead of hours on a CPU, and with a few hundred labels more "
            "accurate than a full fine-tune. False: fine-tune through TRL's RewardTrainer (all weights, or "
            "LoRA with `lora: true`, which implies false)."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank: higher = more capacity, more memory."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling (alpha / r multiplies the update)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    use_margin: bool = field(
        default=True, metadata={"help": "Use the export's `margin` (preference strength) in the loss, Llama 2 style."}
    )
    margin_scale: float = field(
        default=1 / 3,
        metadata={
            "help": "Margin = strength x this. 1/3 maps 'significantly better' (3) to 1 (Llama 2's small-margin scale)."
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto | bf16 | fp16 | fp32. auto = bf16 autocast where the hardware has it (GPU with bf16, "
            "CPU with AMX/AVX512-BF16: several times faster than fp32 there), fp16 with loss scaling on a "
            "CUDA GPU without bf16 (V100, T4), else fp32. fp16 needs a CUDA GPU."
        },
    )
    group_by_length: bool = field(
        default=True, metadata={"help": "Batch pairs of similar length: less padding, faster."}
    )
    early_stopping_patience: int = field(
        default=3,
        metadata={
            "help": "Stop after this many evaluations without a better held-out accuracy (0 = off). "
            "The best checkpoint is kept."
        },
    )
    max_pairs: int | None = field(default=None, metadata={"help": "Use at most this many training pairs (quick runs)."})
    name: str | None = field(default=None, metadata={"help": "Suffix of the run folder name."})
    loss_explode_factor: float | None = field(
        default=100.0,
        metadata={
            "help": "Stop when a step's training loss exceeds this x the median of the last 20 steps' losses "
            "(medians below 0.1 count as 0.1), and keep the last checkpoint saved before that step. A NaN/inf "
            "loss always stops the run. null = only NaN/inf stop it."
        },
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Resume from the newest complete checkpoint in `run_dir` (half-written ones are skipped)."},
    )

    def problems(self) -> list[str]:
        p = []
        if self.precision not in PRECISIONS:
            p.append(f"`precision` must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if self.lora_r < 1:
            p.append(f"`lora_r` must be >= 1, got {self.lora_r}")
        if not 0 <= self.lora_dropout < 1:
            p.append(f"`lora_dropout` must be in [0, 1), got {self.lora_dropout}")
        if self.margin_scale < 0:
            p.append(f"`margin_scale` must be >= 0, got {self.margin_scale}")
        if self.early_stopping_patience < 0:
            p.append(f"`early_stopping_patience` must be >= 0, got {self.early_stopping_patience}")
        if self.loss_explode_factor is not None and not self.loss_explode_factor > 1:
            p.append(f"`loss_explode_factor` must be > 1 (or null), got {self.loss_explode_factor}")
        if self.max_pairs is not None and self.max_pairs < 1:
            p.append(f"`max_pairs` must be >= 1, got {self.max_pairs}")
        return p


# Our defaults for TRL's RewardConfig, chosen for speed on small models (see benchmarks/reward.py):
# no gradient checkpointing (a 135M model fits easily; checkpointing costs ~1/3 more compute).
FAST_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "learning_rate": 2e-5,
    "num_train_epochs": 1,
    "max_length": 512,
    "gradient_checkpointing": False,
    "logging_steps": 5,
    "eval_steps": 25,
    "save_steps": 25,
    "save_total_limit": 2,
    "center_rewards_coefficient": 0.01,  # keeps rewards near zero mean (Eisenstein et al. 2023)
    "disable_dropout": True,
    "report_to": [],
    "seed": 0,
    "warmup_steps": 0,
}
LORA_LEARNING_RATE = 2e-4  # adapters need a larger step than full fine-tuning


def hardware_has_bf16() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        if cpu is not None and hasattr(cpu, probe) and getattr(cpu, probe)():
            return True
    return False


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def mixed_precision(precision: str) -> str:
    """The mixed precision a training run uses: "bf16", "fp16" or "no" (fp32), for reward and PPO alike.

    auto: bf16 where the hardware has it, fp16 (with loss scaling) on a CUDA GPU without bf16, else fp32.
    An explicit choice the hardware cannot run is refused here, before any work."""
    import torch

    if precision == "auto":
        if hardware_has_bf16():
            return "bf16"
        return "fp16" if torch.cuda.is_available() else "no"
    if precision == "fp16" and not torch.cuda.is_available():
        raise WorkbenchError("`precision: fp16` needs a CUDA GPU (no GPU here); use auto, bf16 or fp32")
    return {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[precision]


def reward_config_fields() -> set[str]:
    from trl import RewardConfig

    return {f.name for f in dataclasses.fields(RewardConfig)}


def build_reward_config(
    options: RewardOptions, overrides: dict[str, Any], output_dir: Path, has_eval: bool, max_steps: int | None = None
) -> Any:
    """TRL's RewardConfig: FAST_DEFAULTS < LoRA/precision/eval choices < user overrides."""
    import torch
    from trl import RewardConfig

    unknown = sorted(set(overrides) - reward_config_fields())
    if unknown:
        raise ValidationError("reward config", [f"unknown RewardConfig field `{k}`" for k in unknown])
    kw: dict[str, Any] = dict(FAST_DEFAULTS)
    if options.lora:
        kw["learning_rate"] = LORA_LEARNING_RATE
    try:
        mp = mixed_precision(options.precision)
    except WorkbenchError as e:  # named with the other problems below
        mp, precision_problem = "no", [str(e)]
    else:
        precision_problem = []
    kw.update(bf16=mp == "bf16", fp16=mp == "fp16", use_cpu=not torch.cuda.is_available())
    if has_eval:
        kw.update(
            eval_strategy="steps",
            save_strategy="steps",
            load_best_model_at_end=True,
            metric_for_best_model="eval_accuracy",
            greater_is_better=True,
        )
    else:
        kw.update(eval_strategy="no", save_strategy="steps")
    if options.group_by_length:
        kw.update(train_sampling_strategy="group_by_length", length_column_name="length")
    if max_steps is not None:
        kw["max_steps"] = max_steps
    kw.update(overrides)
    kw["output_dir"] = str(output_dir)
    problems = list(precision_problem)
    for key in ("learning_rate", "per_device_train_batch_size", "max_length"):
        v = kw.get(key)
        if v is not None and not (isinstance(v, (int, float)) and v > 0):
            problems.append(f"`{key}` must be > 0, got {v!r}")
    if problems:
        raise ValidationError("reward config", problems)
    try:
        return RewardConfig(**kw)
    except (TypeError, ValueError) as e:
        raise WorkbenchError(f"reward config: {e}") from e


# -- data ------------------------------------------------------------------------------------


def load_export(export_dir: Path) -> tuple[Any, dict[str, Any]]:
    """(DatasetDict, manifest) from an `rlhf export` folder, with a clear error for anything else."""
    import datasets

    export_dir = Path(export_dir)
    if not (export_dir / "manifest.json").exists():
        raise WorkbenchError(f"{export_dir} is not an export folder (no manifest.json); create one with `rlhf export`")
    ds = datasets.load_from_disk(str(export_dir))
    if not isinstance(ds, datasets.DatasetDict) or "train" not in ds or len(ds["train"]) == 0:
        raise WorkbenchError(f"{export_dir} has no training pairs; label more comparisons and export again")
    return ds, read_json(export_dir / "manifest.json")


def tied(ex: dict[str, Any]) -> bool:
    """A kept tie or 'both bad' verdict (the export's `is_tie` / `is_both_bad`): no side preferred."""
    return bool(ex.get("is_tie")) or bool(ex.get("is_both_bad"))


def without_ties(ds: Any) -> Any:
    """The decisive pairs of an export split."""
    if not {"is_tie", "is_both_bad"} & set(ds.column_names):
        return ds
    return ds.filter(lambda ex: not tied(ex))


def is_chat_dataset(ds: Any) -> bool:
    return not isinstance(ds[0]["prompt"], str)


def to_conversational(ds: Any) -> Any:
    """Wrap text-format pairs as chat messages, so a chat model scores them with its template
    (the way PPO will show it prompts and responses)."""
    if len(ds) == 0 or is_chat_dataset(ds):
        return ds

    def wrap(ex: dict[str, Any]) -> dict[str, Any]:
        return {
            "prompt_m": [{"role": "user", "content": ex["prompt"]}],
            "chosen_m": [{"role": "assistant", "content": ex["chosen"].lstrip("\n")}],
            "rejected_m": [{"role": "assistant", "content": ex["rejected"].lstrip("\n")}],
        }

    ds = ds.map(wrap, remove_columns=["prompt", "chosen", "rejected"])
    return ds.rename_columns({"prompt_m": "prompt", "chosen_m": "chosen", "rejected_m": "rejected"})


def response_text(x: str | list[dict[str, str]]) -> str:
    return x if isinstance(x, str) else "".join(m["content"] for m in x if m["role"] == "assistant")


def encode_pair_side(tok: Any, prompt: str | list[dict[str, str]], response: str | list[dict[str, str]]) -> list[int]:
    """Token ids of prompt + response exactly as TRL's RewardTrainer builds them for training
    (chat template for conversational pairs; text + EOS otherwise)."""
    if isinstance(prompt, list) or isinstance(response, list):
        p = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        r = [{"role": "assistant", "content": response}] if isinstance(response, str) else response
        return list(tok.apply_chat_template(p + r, tokenize=True, return_dict=True)["input_ids"])
    text = prompt + response
    if not text.endswith(tok.eos_token):
        text += tok.eos_token
    return list(tok(text=text)["input_ids"])


def score_sequences(
    model: Any, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int = 16, bf16: bool = False
) -> list[float]:
    """Reward of each token sequence (right-padded batches, sorted by length for speed).

    Returns one float per sequence, in the input order."""
    import torch

    from rlhf.reward_head import right_padded_batches

    out = [0.0] * len(seqs)
    model.eval()
    device = next(model.parameters()).device
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)
    with torch.inference_mode(), ctx:
        for _, idx, ids, mask in right_padded_batches(seqs, pad_id, batch_size):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            for row, i in enumerate(idx):
                out[i] = float(logits[row, 0])
    return out


def score_prefixes(
    model: Any, tok: Any, prompt: str | list[dict[str, str]], response: str, max_points: int = 64, bf16: bool = False
) -> list[dict[str, Any]]:
    """How the reward builds up along one response: the score of prompt + each response prefix.

    Returns [{"tokens": n, "text": prefix, "reward": r}], at most `max_points` evenly spaced prefixes."""
    ids = tok(response, add_special_tokens=False)["input_ids"]
    if not ids:
        return []
    step = max(1, math.ceil(len(ids) / max_points))
    cuts = sorted(set(list(range(step, len(ids), step)) + [len(ids)]))
    texts = [tok.decode(ids[:c]) for c in cuts]
    seqs = [encode_pair_side(tok, prompt, t) for t in texts]
    rewards = score_sequences(model, seqs, tok.pad_token_id, bf16=bf16)
    return [{"tokens": c, "text": t, "reward": r} for c, t, r in zip(cuts, texts, rewards)]


# -- evaluation report -----------------------------------------------------------------------


def _acc(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{"n", "accuracy", "low", "high"}: pairwise accuracy with its 95% Wilson interval."""
    n = len(rows)
    p = proportion(sum(r["r_chosen"] > r["r_rejected"] for r in rows), n)
    return {"n": n, "accuracy": p["value"], "low": p["low"], "high": p["high"]}


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def strength_bucket(margin: float | None) -> str:
    """The Llama 2 strength name of an export row's margin (mean strength, rounded half up)."""
    if margin is None:
        return "unknown"
    return STRENGTHS[min(3, max(0, int(math.floor(margin + 0.5))))]


def build_eval_report(rows: list[dict[str, Any]], bins: int = 10, worst: int = 50) -> dict[str, Any]:
    """The held-out evaluation report from scored pairs.

    Each row: r_chosen, r_rejected (rewards), margin (mean strength or None), category,
    agreement (share of labels agreeing), num_labels, chosen_side ("A"/"B"), len_chosen,
    len_rejected (tokens), and comparison_id, prompt, chosen, rejected for the misranked list.
    Calibration uses both orders of each pair: P(chosen) = sigmoid(r_c - r_r) is observed 1, and
    P(rejected) = 1 - that is observed 0, so the diagram is symmetric and needs no side labels."""
    report: dict[str, Any] = {"pairs": len(rows), **_acc(rows)}
    by: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by["by_strength"][strength_bucket(r.get("margin"))].append(r)
        by["by_category"][r.get("category") or "(none)"].append(r)
        n = r.get("num_labels") or 1
        kind = "single" if n < 2 else ("unanimous" if r.get("agreement", 1.0) >= 1.0 else "split")
        by["by_agreement"][kind].append(r)
        by["position"][r.get("chosen_side") or "?"].append(r)
    for key in ("by_strength", "by_category", "by_agreement", "position"):
        report[key] = {k: _acc(v) for k, v in sorted(by[key].items())}
    for kind, group in by["by_agreement"].items():
        report["by_agreement"][kind]["annotator_agreement"] = sum(r.get("agreement", 1.0) for r in group) / len(group)
    multi = [r for r in rows if (r.get("num_labels") or 1) >= 2]
    report["annotator_agreement"] = sum(r["agreement"] for r in multi) / len(multi) if multi else None

    # Calibration (reliability diagram) and expected calibration error.
    points = []
    for r in rows:
        p = _sigmoid(r["r_chosen"] - r["r_rejected"])
        points += [(p, 1.0), (1 - p, 0.0)]
    cal = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(p, y) for p, y in points if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if inside:
            cal.append(
                {
                    "lo": lo,
                    "hi": hi,
                    "n": len(inside),
                    "mean_predicted": sum(p for p, _ in inside) / len(inside),
                    "observed": sum(y for _, y in inside) / len(inside),
                }
            )
    ece = sum(c["n"] * abs(c["mean_predicted"] - c["observed"]) for c in cal) / len(points) if points else None
    report["calibration"] = {"bins": cal, "ece": ece}

    # Length bias: does the reward just count tokens?
    lengths = [r["len_chosen"] for r in rows] + [r["len_rejected"] for r in rows]
    rewards = [r["r_chosen"] for r in rows] + [r["r_rejected"] for r in rows]
    shorter = [r for r in rows if r["len_chosen"] < r["len_rejected"]]
    longer = [r for r in rows if r["len_chosen"] > r["len_rejected"]]
    report["length_bias"] = {
        "pearson_reward_length": _pearson(lengths, rewards),
        "chosen_shorter": _acc(shorter),
        "chosen_longer": _acc(longer),
        "equal_length": len(rows) - len(shorter) - len(longer),
    }
    mis = sorted((r for r in rows if r["r_chosen"] <= r["r_rejected"]), key=lambda r: r["r_chosen"] - r["r_rejected"])
    report["misranked"] = [
        {k: r.get(k) for k in ("comparison_id", "category", "prompt", "chosen", "rejected", "r_chosen", "r_rejected")}
        | {"gap": r["r_rejected"] - r["r_chosen"]}
        for r in mis[:worst]
    ]
    report["misranked_total"] = len(mis)
    return report


def evaluate_pairs(model: Any, tok: Any, ds: Any, bf16: bool = False, batch_size: int = 16) -> list[dict[str, Any]]:
    """Score every pair of a (raw, untokenized) export split; rows ready for `build_eval_report`."""
    chosen = [encode_pair_side(tok, ex["prompt"], ex["chosen"]) for ex in ds]
    rejected = [encode_pair_side(tok, ex["prompt"], ex["rejected"]) for ex in ds]
    scores = score_sequences(model, chosen + rejected, tok.pad_token_id, batch_size=batch_size, bf16=bf16)
    return pair_rows(tok, ds, scores[: len(chosen)], scores[len(chosen) :])


def pair_rows(tok: Any, ds: Any, r_chosen: Sequence[float], r_rejected: Sequence[float]) -> list[dict[str, Any]]:
    """`build_eval_report` rows of an export split whose pairs were scored r_chosen / r_rejected."""
    rows = []
    for i, ex in enumerate(ds):
        c_text, r_text = response_text(ex["chosen"]), response_text(ex["rejected"])
        rows.append(
            {
                "comparison_id": ex.get("comparison_id"),
                "prompt": ex["prompt"] if isinstance(ex["prompt"], str) else ex["prompt"][-1]["content"],
                "chosen": c_text,
                "rejected": r_text,
                "r_chosen": float(r_chosen[i]),
                "r_rejected": float(r_rejected[i]),
                "margin": ex.get("margin"),
                "category": ex.get("category"),
                "agreement": ex.get("agreement", 1.0),
                "num_labels": ex.get("num_labels", 1),
                "chosen_side": ex.get("chosen_side"),
                "len_chosen": len(tok(c_text, add_special_tokens=False)["input_ids"]),
                "len_rejected": len(tok(r_text, add_special_tokens=False)["input_ids"]),
            }
        )
    return rows


# -- training --------------------------------------------------------------------------------


def _trainer_class() -> Any:
    from trl import RewardTrainer

    class WorkbenchRewardTrainer(RewardTrainer):
        """TRL's RewardTrainer, keeping the `length` column so batches can be grouped by length, and
        adding up each optimizer step's loss for the divergence guard (`_LossGuardCallback`):
        transformers hands callbacks no loss, and logs a NaN one as the window's average instead
        (`logging_nan_inf_filter`)."""

        step_loss: Any = None

        def _set_signature_columns_if_needed(self) -> None:
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "length"]

        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            loss = super().training_step(*args, **kwargs)  # already divided by the accumulation steps
            self.step_loss = loss if self.step_loss is None else self.step_loss + loss
            return loss

    return WorkbenchRewardTrainer


class _Diverged(Exception):
    """Raised from the guard's `on_step_end` to end the training loop at the bad step (before it is
    logged, evaluated or saved)."""


def _loss_guard_callback(guard: LossGuard) -> Any:
    from transformers import TrainerCallback

    class _LossGuardCallback(TrainerCallback):
        """Checks every optimizer step's loss (NaN/inf, explosion) and stops the run at the first bad one."""

        trainer: Any = None  # set once the trainer exists

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            t = self.trainer
            if t is None or t.step_loss is None:
                return
            loss, t.step_loss = t.step_loss.detach(), None
            if t.accelerator.num_processes > 1:  # every process must take the same decision
                loss = t.accelerator.reduce(loss, "mean")
            stop = guard.check(state.global_step, {"loss": float(loss)})
            if stop is not None:
                guard.stop = stop
                raise _Diverged(stop["reason"])

    return _LossGuardCallback()


REWARD_ADVICE = (
    "Lower `learning_rate`, keep gradient clipping on (`max_grad_norm`, 1.0 by default; 0 turns it off), "
    "or use `precision: fp32`; then start a new run. If the step was a false alarm, raise "
    "`loss_explode_factor` (null = stop on NaN/inf only)."
)


def complete_checkpoints(run_dir: Path) -> dict[int, Path]:
    """{step: folder} of the reward run's checkpoints that finished saving: transformers writes
    trainer_state.json last, after the weights (a folder killed mid-save lacks one or the other)."""
    out = {}
    for d in (Path(run_dir) / "checkpoints").glob("checkpoint-*"):
        step = d.name.split("-")[-1]
        weights = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
        if step.isdigit() and (d / "trainer_state.json").exists() and any((d / w).exists() for w in weights):
            out[int(step)] = d
    return dict(sorted(out.items()))


def _checkpoint_weights(folder: Path, lora: bool) -> dict[str, Any]:
    return read_weights(folder, "adapter_model" if lora else "model")


def _restore_checkpoint_weights(trainer: Any, folder: Path, lora: bool) -> None:
    import torch

    model = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad():
        if lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, _checkpoint_weights(folder, lora))
        else:
            load_weights(model, _checkpoint_weights(folder, lora))


def train_reward(
    export_dir: Path,
    options: RewardOptions | None = None,
    trl_overrides: dict[str, Any] | None = None,
    max_steps: int | None = None,
    run_dir: Path | None = None,
) -> Path:
    """Train a reward model on an export folder; returns the run folder (see module doc)."""
    import torch
    from transformers import AutoModelForSequenceClassification, EarlyStoppingCallback

    from rlhf.models import load_tokenizer, resolve_model

    options = options or RewardOptions()
    overrides = dict(trl_overrides or {})
    if problems := options.problems():
        raise ValidationError("reward options", problems)
    export_dir = Path(export_dir).resolve()
    ds, manifest = load_export(export_dir)
    train_raw, eval_raw = ds["train"], ds.get("test")
    if options.max_pairs:
        train_raw = train_raw.select(range(min(options.max_pairs, len(train_raw))))
    # Ties (an export with `ties: keep`) teach the frozen-backbone head which differences do not
    # matter (`rlhf.reward_head.pair_losses`); TRL's RewardTrainer has no tie loss, so a fine-tune
    # drops them, and held-out accuracy is over decisive pairs only.
    head_mode = options.freeze_backbone and not options.lora
    if eval_raw is not None:
        eval_raw = without_ties(eval_raw)
    if not head_mode:
        n_before = len(train_raw)
        train_raw = without_ties(train_raw)
        if len(train_raw) < n_before:
            log.warning(
                "dropped %d tied training pairs: only the frozen-backbone head learns from ties",
                n_before - len(train_raw),
            )
    has_eval = eval_raw is not None and len(eval_raw) > 0
    model_path = resolve_model(options.model)
    # The config first: creating it joins the process group of a distributed launch, which
    # new_shared_run_dir needs to give every process the same folder.
    args = build_reward_config(options, overrides, Path("pending"), has_eval, max_steps)
    if options.resume and run_dir is None:
        raise WorkbenchError("`resume` needs the run folder to resume (run_dir)")
    run_dir = Path(run_dir) if run_dir is not None else new_shared_run_dir("reward", options.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    args.output_dir = str(run_dir / "checkpoints")

    # 1) data: chat format for chat models, margin scaled (or dropped).
    tok = load_tokenizer(model_path, padding_side="right")
    if getattr(tok, "chat_template", None):
        train_raw = to_conversational(train_raw)
        eval_raw = to_conversational(eval_raw) if has_eval else None

    def fix_margin(d: Any) -> Any:
        if d is None or "margin" not in d.column_names:
            return d
        if not options.use_margin:
            return d.remove_columns("margin")
        return d.map(lambda ex: {"margin": ex["margin"] * options.margin_scale})

    train_in, eval_in = fix_margin(train_raw), fix_margin(eval_raw)

    config = {
        "options": dataclasses.asdict(options),
        "trl": args.to_dict(),
        "export_dir": str(export_dir),
        "export_rows_sha256": folder_hash(export_dir),
        "export_counts": manifest.get("counts"),
        "model_path": str(model_path),
    }
    if is_main_process():  # one writer in a multi-process launch
        write_json(run_dir / "config.json", config)

    # 2) model: the policy base + a scalar head (InstructGPT style).
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    bf16 = bool(args.bf16)
    if options.freeze_backbone and not options.lora:
        return _train_head_run(model, tok, train_in, eval_raw, args, options, run_dir)
    # The untrained head's held-out accuracy (about chance): the baseline the run must beat.
    accuracy_before = _acc(evaluate_pairs(model, tok, eval_raw, bf16=bf16))["accuracy"] if has_eval else None
    peft_config = None
    if options.lora:
        from peft import LoraConfig

        # modules_to_save: the freshly initialised score head must train in full (TRL docs).
        peft_config = LoraConfig(
            task_type="SEQ_CLS",
            r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            target_modules="all-linear",
            modules_to_save=["score"],
        )
    guard = LossGuard(options.loss_explode_factor, ("loss",))
    guard_cb = _loss_guard_callback(guard)
    callbacks = [metrics_callback(run_dir), guard_cb]
    if has_eval and options.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=options.early_stopping_patience))
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_in,
        eval_dataset=eval_in if has_eval else None,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    guard_cb.trainer = trainer
    # 3) TRL drops (does not truncate) pairs longer than max_length: count them.
    dropped = {
        "train": len(train_in) - len(trainer.train_dataset),
        "test": (len(eval_in) - len(trainer.eval_dataset)) if has_eval else 0,
    }
    if dropped["train"] or dropped["test"]:
        log.warning("pairs longer than max_length=%s dropped: %s", args.max_length, dropped)
    if len(trainer.train_dataset) == 0:
        raise WorkbenchError(f"every training pair is longer than max_length={args.max_length}; raise `max_length`")

    def add_length(ex: dict[str, Any]) -> dict[str, Any]:
        return {"length": max(len(ex["chosen_ids"]), len(ex["rejected_ids"]))}

    trainer.train_dataset = trainer.train_dataset.map(add_length)
    if has_eval:
        trainer.eval_dataset = trainer.eval_dataset.map(add_length)

    # 4) train: from the newest complete checkpoint (resume), else from scratch; stop on divergence.
    done = complete_checkpoints(run_dir) if options.resume else {}
    resume_from = done[max(done)] if done else None
    if is_main_process():
        if resume_from is not None:
            # Rows logged after the checkpoint are logged again; a half-written checkpoint (killed while
            # saving) is removed: transformers would pick it as the newest, and its rotation count it.
            truncate_jsonl(run_dir / "metrics.jsonl", max(done))
            for d in (run_dir / "checkpoints").glob("checkpoint-*"):
                if d.is_dir() and d not in done.values():
                    log.warning("removing the incomplete checkpoint %s", d)
                    shutil.rmtree(d)
        else:
            for stale in ("metrics.jsonl", "summary.json", "eval_report.json", "reward_stats.json"):
                (run_dir / stale).unlink(missing_ok=True)
    start = time.perf_counter()
    stop: dict[str, Any] = {"reason": "completed"}
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
        global_step, train_loss = result.global_step, result.training_loss
    except _Diverged:
        stop = dict(guard.stop or {})
        global_step, train_loss = trainer.state.global_step, None
        # The newest checkpoint saved before the bad step whose weights are finite (the bad step's
        # update already went into the live weights).
        saved = complete_checkpoints(run_dir)
        candidates = sorted((s for s in saved if s < stop["step"]), reverse=True)
        kept = next((s for s in candidates if weights_finite(_checkpoint_weights(saved[s], options.lora))), None)
        stop.update(kept_checkpoint=saved[kept].name if kept is not None else None, kept_step=kept or 0)
        where = (
            f"{saved[kept].name} (step {kept}) as the saved model"
            if kept is not None
            else "no model (no checkpoint was saved before that step; lower `save_steps` to keep one)"
        )
        stop["message"] = divergence_message(stop, where, REWARD_ADVICE)
        log.error("%s", stop["message"])
        if kept is None:
            if trainer.is_world_process_zero():
                write_json(run_dir / "summary.json", {"global_step": global_step, "saved_step": 0, "stop": stop})
            raise TrainingDiverged(stop["message"]) from None
        _restore_checkpoint_weights(trainer, saved[kept], options.lora)
    train_s = time.perf_counter() - start
    pairs_seen = (
        global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    )

    # 5) save a plain seq-cls model (adapters merged) + reward statistics for PPO normalisation.
    model = trainer.model
    if options.lora:
        model = model.merge_and_unload()
    train_scores = score_sequences(
        model,
        list(trainer.train_dataset["chosen_ids"]) + list(trainer.train_dataset["rejected_ids"]),
        tok.pad_token_id,
        bf16=bf16,
    )
    mean = sum(train_scores) / len(train_scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in train_scores) / max(1, len(train_scores) - 1))
    stats = {"reward_mean": mean, "reward_std": std, "n_responses": len(train_scores)}
    model.config.reward_mean, model.config.reward_std = mean, std
    if trainer.is_world_process_zero():
        model.save_pretrained(run_dir / "model")
        tok.save_pretrained(run_dir / "model")
        write_json(run_dir / "reward_stats.json", stats)

    # 6) held-out report.
    report = build_eval_report(evaluate_pairs(model, tok, eval_raw, bf16=bf16)) if has_eval else None
    summary = {
        "train_pairs": len(trainer.train_dataset),
        "test_pairs": len(eval_raw) if has_eval else 0,
        "dropped_too_long": dropped,
        "global_step": global_step,
        "saved_step": stop.get("kept_step", global_step),
        "stop": stop,
        "resumed_from_step": max(done) if resume_from is not None else None,
        "train_seconds": train_s,
        "pairs_per_second": pairs_seen / train_s if train_s else None,
        "train_loss": train_loss,
        **held_out_summary(report, accuracy_before),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "bf16": bf16,
        "mode": "lora" if options.lora else "full",
        **stats,
    }
    if trainer.is_world_process_zero():
        if report is not None:
            write_json(run_dir / "eval_report.json", report)
        write_json(run_dir / "summary.json", summary)
    if summary["learning"]["status"] != "learned":
        log.warning("%s", summary["learning"]["message"])
    if stop["reason"] != "completed":
        raise TrainingDiverged(stop["message"])
    return run_dir


def held_out_summary(report: dict[str, Any] | None, accuracy_before: float | None) -> dict[str, Any]:
    """The summary's held-out keys: accuracy with n and its 95% interval, the untrained accuracy,
    and the `learning` verdict (also put into `report`, the eval_report.json)."""
    n = report["pairs"] if report else 0
    acc = report["accuracy"] if report else None
    interval = proportion(round(acc * n) if acc is not None else 0, n)
    verdict = learning_verdict(acc, n, accuracy_before)
    if report is not None:
        report["accuracy_interval"] = interval
        report["accuracy_before"] = accuracy_before
        report["learning"] = verdict
    return {
        "eval_accuracy": acc,
        "eval_accuracy_interval": interval,
        "eval_accuracy_before": accuracy_before,
        "learning": verdict,
    }


def _train_head_run(
    model: Any, tok: Any, train_in: Any, eval_raw: Any, args: Any, options: RewardOptions, run_dir: Path
) -> Path:
    """`train_reward` with a frozen backbone: features once, then the head (rlhf/reward_head.py).
    Writes the same run folder as a RewardTrainer run; `args` (the RewardConfig) gives max_length,
    the eval batch size and precision."""
    import torch
    from safetensors.torch import save_file

    from rlhf.reward_head import HEAD_FILE, fit_head, pool_layer, pooling_of, sequence_features
    from rlhf.runs import MetricsLog

    has_eval = eval_raw is not None and len(eval_raw) > 0
    for stale in ("metrics.jsonl", "summary.json", "eval_report.json", "reward_stats.json"):
        (run_dir / stale).unlink(missing_ok=True)
    start = time.perf_counter()
    pairs = [
        (encode_pair_side(tok, ex["prompt"], ex["chosen"]), encode_pair_side(tok, ex["prompt"], ex["rejected"]), ex)
        for ex in train_in
    ]
    kept = [p for p in pairs if max(len(p[0]), len(p[1])) <= args.max_length]  # as TRL: drop, not truncate
    dropped = {"train": len(pairs) - len(kept), "test": 0}
    if not kept:
        raise WorkbenchError(f"every training pair is longer than max_length={args.max_length}; raise `max_length`")
    test_c = [encode_pair_side(tok, ex["prompt"], ex["chosen"]) for ex in eval_raw] if has_eval else []
    test_r = [encode_pair_side(tok, ex["prompt"], ex["rejected"]) for ex in eval_raw] if has_eval else []
    backbone = getattr(model, model.base_model_prefix)
    seqs = [p[0] for p in kept] + [p[1] for p in kept] + test_c + test_r
    marker = assistant_marker(tok)
    feats = sequence_features(
        backbone, seqs, tok.pad_token_id, marker, args.per_device_eval_batch_size, bool(args.bf16)
    )
    n, m = len(kept), len(test_c)
    fc = {k: v[:n] for k, v in feats.items()}
    fr = {k: v[n : 2 * n] for k, v in feats.items()}
    feature_s = time.perf_counter() - start
    w0 = model.score.weight.detach()[0].float()  # the untrained head: the baseline to beat
    t_last_c, t_last_r = feats["last"][2 * n : 2 * n + m], feats["last"][2 * n + m :]
    accuracy_before = float(((t_last_c @ w0) > (t_last_r @ w0)).float().mean()) if has_eval else None
    ties = [tied(p[2]) for p in kept]
    margins = [0.0 if t else float(p[2].get("margin") or 0.0) for p, t in zip(kept, ties)]
    groups = [str(p[2]["prompt"]) for p in kept]
    fit = fit_head(fc, fr, margins, groups, seed=args.seed, ties=ties)
    layer = pool_layer(fit.kind)
    fc, fr = fc[fit.kind], fr[fit.kind]
    tc, tr = feats[fit.kind][2 * n : 2 * n + m], feats[fit.kind][2 * n + m :]
    if layer is None:  # the sequence-classification head itself
        with torch.no_grad():
            model.score.weight.copy_(fit.weight.to(model.score.weight.dtype)[None, :])
    else:  # model/ keeps the plain seq-cls layout; the pooled head lives beside it (load_reward_model)
        model.config.reward_head = {
            "type": "pooled",
            "layer": layer,
            "marker": list(marker),
            "pooling": pooling_of(fit.kind),
        }
    metrics = MetricsLog(run_dir)
    for epoch, row in enumerate(fit.history, 1):
        metrics.append({"step": epoch, "epoch": epoch, **row})
    train_scores = torch.cat([fc @ fit.weight, fr @ fit.weight]).tolist()
    mean = sum(train_scores) / len(train_scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in train_scores) / max(1, len(train_scores) - 1))
    stats = {"reward_mean": mean, "reward_std": std, "n_responses": len(train_scores)}
    model.config.reward_mean, model.config.reward_std = mean, std
    model.config.reward_backbone_frozen = True
    model.save_pretrained(run_dir / "model")
    tok.save_pretrained(run_dir / "model")
    if layer is not None:
        save_file({"weight": fit.weight.contiguous()}, str(run_dir / "model" / HEAD_FILE))
    write_json(run_dir / "reward_stats.json", stats)
    report = None
    if has_eval:
        report = build_eval_report(pair_rows(tok, eval_raw, (tc @ fit.weight).tolist(), (tr @ fit.weight).tolist()))
        metrics.append({"step": len(fit.history), "epoch": len(fit.history), "eval_accuracy": report["accuracy"]})
    train_s = time.perf_counter() - start
    summary = {
        "train_pairs": n - sum(ties),
        "train_ties": sum(ties),
        "test_pairs": len(test_c),
        "dropped_too_long": dropped,
        "global_step": len(fit.history),
        "saved_step": len(fit.history),
        "stop": {"reason": "completed"},
        "resumed_from_step": None,
        "train_seconds": train_s,
        "feature_seconds": feature_s,
        "pairs_per_second": n / train_s if train_s else None,
        "train_loss": fit.history[-1]["loss"] if fit.history else None,
        **held_out_summary(report, accuracy_before),
        "best_checkpoint": None,
        "bf16": bool(args.bf16),
        "mode": "head",
        "head": {
            "features": fit.kind,
            "candidates": fit.candidates,
            "l2": fit.l2,
            "epochs": fit.epochs,
            "validation_accuracy": fit.validation_accuracy,
            "validation_pairs": fit.validation_pairs,
            "seconds": fit.seconds,
        },
        **stats,
    }
    if report is not None:
        write_json(run_dir / "eval_report.json", report)
    write_json(run_dir / "summary.json", summary)
    if summary["learning"]["status"] != "learned":
        log.warning("%s", summary["learning"]["message"])
    return run_dir


def load_reward_model(run_dir: Path, device: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) of a finished reward run, in eval mode."""
    from transformers import AutoTokenizer

    from rlhf.models import fix_tokenizer, pick_device

    path = Path(run_dir) / "model"
    if not (path / "config.json").exists():
        raise WorkbenchError(f"{run_dir} holds no trained reward model (no model/ folder); did the run finish?")
    tok = fix_tokenizer(AutoTokenizer.from_pretrained(path), padding_side="right")
    return reward_model_from(path).to(pick_device(device)).eval(), tok


def reward_model_from(model_dir: Path) -> Any:
    """The reward model saved in a run's model/ folder: a sequence-classification model, or the
    pooled-head model of a frozen-backbone run whose head reads layer L (rlhf/reward_head.py).
    Either returns `.logits` (batch, 1) and has `base_model_prefix` + `score` for PPO."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    if getattr(model.config, "reward_head", None):
        from rlhf.reward_head import load_pooled

        return load_pooled(model, model_dir)
    return model


def assistant_marker(tok: Any) -> list[int]:
    """The token ids the chat template puts before an assistant response (its generation prompt,
    e.g. `<|im_start|>assistant\n`); [] for a tokenizer without a chat template."""
    if not getattr(tok, "chat_template", None):
        return []
    p = [{"role": "user", "content": "x"}]
    with_prompt = list(
        tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )
    without = list(
        tok.apply_chat_template(p, add_generation_prompt=False, tokenize=True, return_dict=True)["input_ids"]
    )
    return with_prompt[len(without) :] if with_prompt[: len(without)] == without else []
