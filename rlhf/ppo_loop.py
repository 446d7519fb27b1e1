"""Our PPO step: the same algorithm as TRL's `PPOTrainer.train` (same losses, GAE, whitening, KL
estimators, metric names), with fewer passes over the same sequences. `rlhf ppo` uses it by default
(`value_model: shared`); `value_model: separate` keeps TRL's own loop.

Where plain TRL spends a step (batch B, responses of R tokens, E PPO epochs) and what we do instead:

  TRL                                          ours
  generate                                     generate, keeping the last hidden states: the value
                                               head reads them, so the rollout needs no value pass
  value model forward                          (none: a value head on the policy's own trunk)
  reference forward (full vocabulary logits)   reference forward, logits only at response positions;
  reward model forward                           the same pass gives the reward when the reward model
                                                 is a frozen-backbone head on the reference's weights
  E x (policy fwd+bwd + value fwd+bwd)         E x one trunk forward + backward giving both the
                                               policy logits (response positions only) and values
  E x AdamW over policy + value weights        E x AdamW over the LoRA adapters + value head

The value head on the policy's trunk is how TRL's older PPO (`AutoModelForCausalLMWithValueHead`)
and Ziegler et al.'s first experiments worked; its loss weight is `vf_coef` (0.1 by default).
Runs on one process; a multi-process launch uses TRL's loop (the shared value head works there too).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# The phases of our step, in the order it runs them (metrics `time/<phase>`, see StepTimer).
PHASES = (
    "generation",
    "reference_and_reward",
    "reward",
    "advantages",
    "train_forward",
    "train_backward",
    "optimizer",
    "train_stats",
)
INVALID_LOGPROB = 1.0  # what TRL fills padding log-probs with (so padding's KL is 0)


def first_true(bools: Any) -> Any:
    """Index of the first True in each row (the row length when none)."""
    import torch

    n = bools.size(-1)
    idx = n * (~bools).long() + torch.arange(n, device=bools.device)
    return idx.min(-1).values


def truncate_after(stop_id: int, pad_id: int, responses: Any) -> Any:
    """Responses with everything after the first `stop_id` replaced by padding."""
    import torch

    after = (
        torch.arange(responses.size(1), device=responses.device)[None, :] > first_true(responses == stop_id)[:, None]
    )
    return torch.masked_fill(responses, after, pad_id)


def masked_mean(x: Any, mask: Any) -> Any:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: Any, mask: Any, shift_mean: bool = True) -> Any:
    mean = masked_mean(x, mask)
    centred = x - mean
    n = mask.sum()
    var = masked_mean(centred**2, mask) * (n / (n - 1).clamp(min=1))  # unbiased, as TRL's
    out = centred * (var + 1e-8).rsqrt()
    return out if shift_mean else out + mean


def append_end_of_turn(input_ids: Any, mask: Any, eos_id: int, suffix: Sequence[int]) -> tuple[Any, Any, Any, Any]:
    """(ids, attention mask, position ids, read index) for sequences laid out
    [pad...][query][response][pad...] (`mask` 1 on real tokens), with the chat template's end-of-turn
    `suffix` written after each row's final EOS. `read index` is where a reward model trained on
    chat-formatted pairs reads its score: the suffix's last token for rows that ended with EOS,
    else the row's last real token. Padding ids become 0, as TRL feeds them."""
    import torch

    b, n = input_ids.shape
    s = len(suffix)
    rows = torch.arange(b, device=input_ids.device)
    mask = mask.long()
    last = n - 1 - torch.argmax(mask.flip(1), dim=1)
    ends = (input_ids[rows, last] == eos_id) & (mask[rows, last] == 1)
    ids = torch.cat([input_ids, input_ids.new_zeros(b, s)], 1)
    ext = torch.cat([mask, mask.new_zeros(b, s)], 1)
    for j, token in enumerate(suffix):
        ids[rows[ends], last[ends] + 1 + j] = token
        ext[rows[ends], last[ends] + 1 + j] = 1
    read = torch.where(ends, last + s, last) if s else last
    return torch.masked_fill(ids, ext == 0, 0), ext, ext.cumsum(1) - ext, read


def _value_head_class() -> type:
    import torch.nn as nn

    class SharedTrunkValue(nn.Module):
        """The value model as a head on the policy's own trunk. The trunk is held, not registered
        as a submodule: this module's state is the head alone (checkpoints store just it), and the
        trunk's weights are trained and saved as the policy's. `save_full` writes a standalone
        AutoModelForSequenceClassification (trunk + head) for the run's `value/` folder."""

        base_model_prefix = "backbone"

        def __init__(self, trunk: Any, hidden: int, config: Any):
            super().__init__()
            self.__dict__["backbone"] = trunk  # not a submodule (see the class doc)
            self.config = config
            self.score = nn.Linear(hidden, 1, bias=False)

        def save_pretrained(self, folder: Any, **_: Any) -> None:
            from pathlib import Path

            from safetensors.torch import save_file

            Path(folder).mkdir(parents=True, exist_ok=True)
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                str(Path(folder) / "model.safetensors"),
            )

        def save_full(self, folder: Any, trunk_prefix: str) -> None:
            """Trunk (LoRA merged first by the caller) + head as a sequence-classification model."""
            import copy

            import torch
            from transformers import AutoModelForSequenceClassification

            config = copy.deepcopy(self.config)
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(config)
            state = {f"{trunk_prefix}.{k}": v for k, v in self.backbone.state_dict().items()}
            state["score.weight"] = self.score.weight.detach()
            with torch.no_grad():
                model.load_state_dict(state, strict=False)
            model.config.pad_token_id = self.config.pad_token_id
            model.save_pretrained(folder)

    return SharedTrunkValue


def shared_trunk_value(policy: Any, init_weight: Any | None = None) -> Any:
    """A `SharedTrunkValue` on `policy`'s trunk, its head initialised to `init_weight` (1, hidden)
    (e.g. the reward head in normalised units) or zeros."""
    import torch

    trunk = getattr(policy, policy.base_model_prefix)
    value = _value_head_class()(trunk, policy.config.hidden_size, policy.config)
    with torch.no_grad():
        value.score.weight.copy_(init_weight if init_weight is not None else torch.zeros_like(value.score.weight))
    return value


def is_shared_value(value: Any) -> bool:
    return type(value).__name__ == "SharedTrunkValue"


def _lm_parts(model: Any) -> tuple[Any, Any]:
    """(trunk, lm_head) of a causal LM, through a PEFT wrapper if any (the adapters stay in the trunk)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


def _trunk_hidden(trunk: Any, ids: Any, pad_id: int) -> Any:
    mask = (ids != pad_id).long()
    return trunk(
        input_ids=torch_masked(ids, mask), attention_mask=mask, position_ids=mask.cumsum(1) - mask, use_cache=False
    ).last_hidden_state


def torch_masked(ids: Any, mask: Any) -> Any:
    import torch

    return torch.masked_fill(ids, mask == 0, 0)


@contextmanager
def merged_adapters(model: Any) -> Iterator[None]:
    """LoRA adapters merged into the base weights inside (generation then runs plain matmuls: ~1.5x
    faster per token than through the adapters), unmerged after. Outside the block the weights
    differ from the unmerged ones by float rounding only. A model without adapters: no-op."""
    tuner = getattr(model, "base_model", None)
    if not hasattr(tuner, "merge_adapter"):
        yield
        return
    import torch

    with torch.no_grad():
        tuner.merge_adapter()
    try:
        yield
    finally:
        with torch.no_grad():
            tuner.unmerge_adapter()


def reference_parts(trainer: Any, policy: Any) -> tuple[Any, Any, Any, Any]:
    """(reference trunk, its lm_head, the context that makes it the reference, the fused reward or
    None) of a PPO trainer whose (unwrapped) policy is `policy`: the adapter-off policy with LoRA,
    else TRL's frozen copy. The fused reward is (score module, end-of-turn suffix, layer, pooling) when the
    reward model is a frozen-backbone head on the reference's own weights."""
    ref_model = trainer.ref_model
    ref_trunk, ref_head = _lm_parts(ref_model if ref_model is not None else policy)
    ref_ctx = trainer.null_ref_context if ref_model is None else _nullcontext
    return ref_trunk, ref_head, ref_ctx, getattr(trainer, "fused_reward", None)


def reference_pass(
    ref_trunk: Any,
    ref_head: Any,
    fused: Any,
    post_qr: Any,
    query_responses: Any,
    ctx: int,
    pad: int,
    eos: int,
    temp: float,
    per_token: bool = False,
) -> tuple[Any, Any, Any]:
    """One reference forward over [query][response] rows: (reference logits / temp at the response
    positions only, [B, R, V] fp32; the reward of each row when `fused`, else None; with `per_token`
    and a pooled head, each response token's share of that reward [B, R] (`token_contributions`,
    normalised like the reward; the rest of the reward - end-of-turn tokens, the normalisation's
    offset, clipping - is the score minus their sum), else None). `post_qr` is the same rows truncated
    after the stop token (what the reward reads); `query_responses` untruncated (what the log-probs
    are of). Run it inside the reference context."""
    import torch

    r_len = query_responses.shape[1] - ctx
    if fused is None:
        h = _trunk_hidden(ref_trunk, query_responses, pad)
        return ref_head(h[:, ctx - 1 : -1]).float() / temp, None, None
    head, suffix, layer, pooling = fused
    ids, mask, pos, read = append_end_of_turn(post_qr, post_qr != pad, eos, suffix)
    store: dict[str, Any] = {}
    if layer is not None:  # a pooled reward head reads layer L of this same pass
        from rlhf.reward_head import _decoder_layers, layer_output_hook

        handle = layer_output_hook(_decoder_layers(ref_trunk), layer - 1, store)
    try:
        h = ref_trunk(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    finally:
        if layer is not None:
            handle.remove()
    ref_logits = ref_head(h[:, ctx - 1 : ctx - 1 + r_len]).float() / temp
    if layer is None:
        feats = h[torch.arange(h.shape[0], device=h.device), read]
        return ref_logits, head(feats.to(h.dtype)).squeeze(-1).float(), None
    from rlhf.reward_head import pool, token_contributions

    hl, start = store.pop("h"), torch.full_like(read, ctx)
    scores = head(pool(hl, mask, start, pooling).to(h.dtype)).squeeze(-1).float()
    shares = None
    if per_token:  # head = NormalizedScore around the pooled head's bias-free linear layer
        contrib = token_contributions(hl, mask, start, pooling, head.inner.weight) / head.std
        shares = contrib[:, ctx : ctx + r_len]
    return ref_logits, scores, shares


def place_rewards(non_score: Any, scores: Any, shares: Any | None, end: Any) -> Any:
    """Per-token rewards [B, R]: the KL part `non_score`, plus the score of each row at its `end`
    index (TRL's placement) - or, with `shares` (each response token's part of the score), each token
    its share and the rest of the score at `end`. Either way a row's rewards add up to
    sum(non_score) + score."""
    import torch

    rewards = non_score.clone()
    rest = scores
    if shares is not None:
        rewards += shares
        rest = scores - shares.sum(1)
    rewards[torch.arange(rewards.size(0), device=rewards.device), end] += rest
    return rewards


class StepTimer:
    """Seconds per phase of the current step (metrics `time/<phase>`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._t
        self._t = now


def train(trainer: Any) -> None:
    """One PPO run on `trainer` (our `WorkbenchPPOTrainer`, built with a `SharedTrunkValue`): TRL's
    algorithm, step for step (see the module doc), logging TRL's metric names plus `time/*`."""
    import math

    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import GenerationConfig
    from trl.models.utils import unwrap_model_for_generation
    from trl.trainer.utils import selective_log_softmax

    args, acc, tok = trainer.args, trainer.accelerator, trainer.processing_class
    pad, eos, device = tok.pad_token_id, tok.eos_token_id, acc.device
    wrapper = acc.unwrap_model(trainer.model)
    policy, value = wrapper.policy, wrapper.value_model
    trunk, lm_head = _lm_parts(policy)
    ref_trunk, ref_head, ref_ctx, fused = reference_parts(trainer, policy)
    per_token = bool(getattr(trainer, "token_rewards", False)) and fused is not None and fused[2] is not None
    temp = args.temperature + 1e-7
    gen_kwargs = {
        "max_new_tokens": args.response_length,
        "temperature": temp,
        "top_k": 0.0,
        "top_p": 1.0,
        "do_sample": True,
    }
    gen_config = GenerationConfig(**gen_kwargs)
    optimizer, model = trainer.optimizer, trainer.model

    def batches() -> Any:
        while True:
            yield from trainer.dataloader

    data_iter = iter(batches())
    shape = (args.num_ppo_epochs, args.num_mini_batches, args.gradient_accumulation_steps)
    stats = {
        k: torch.zeros(shape, device=device) for k in ("approxkl", "clipfrac", "pg", "vf", "vf_clip", "ent", "ratio")
    }
    model.train()
    state = trainer.state
    state.global_step, state.episode, state.max_steps = 0, 0, args.num_total_batches
    state.num_train_epochs = args.total_episodes / trainer.train_dataset_len
    for name in ("logging_steps", "eval_steps", "save_steps"):
        v = getattr(args, name)
        if v is not None:
            setattr(state, name, math.ceil(state.max_steps * v) if v < 1 else v)
    trainer.control = trainer.callback_handler.on_train_begin(args, state, trainer.control)
    start = time.time()

    for _ in range(1, args.num_total_batches + 1):
        timer = StepTimer()
        state.episode += args.batch_size
        queries = next(data_iter)["input_ids"].to(device)
        ctx = queries.shape[1]
        with torch.no_grad():
            # 1) rollout: sample, keeping the scores (old log-probs) and last hidden states (old values).
            with (
                unwrap_model_for_generation(
                    model, acc, gather_deepspeed3_params=args.ds3_gather_for_generation, generation_kwargs=gen_kwargs
                ) as unwrapped,
                merged_adapters(unwrapped.policy),
                acc.autocast(),  # bf16 runs sample in bf16 too: ~1.6x faster on a CPU with AVX512-BF16
            ):
                qmask = (queries != pad).long()
                out = unwrapped.policy.generate(
                    input_ids=torch_masked(queries, qmask),
                    attention_mask=qmask,
                    generation_config=gen_config,
                    return_dict_in_generate=True,
                    output_scores=True,
                    output_hidden_states=True,
                )
            responses = out.sequences[:, ctx:]
            logprobs = selective_log_softmax(torch.stack(out.scores, 1).float(), responses)
            hidden = torch.cat([out.hidden_states[0][-1][:, -1:]] + [h[-1] for h in out.hidden_states[1:]], 1)
            values = value.score(hidden.to(value.score.weight.dtype)).squeeze(-1).float()
            del out, hidden
            timer.lap("generation")
            post = (
                truncate_after(trainer.stop_token_id, pad, responses)
                if trainer.stop_token_id is not None
                else responses
            )
            query_responses = torch.cat([queries, responses], 1)
            post_qr = torch.cat([queries, post], 1)
            r_len = responses.shape[1]
            # 2) reference log-probs, and the reward from the same pass when the reward model allows.
            with ref_ctx(), acc.autocast():
                ref_logits, scores, shares = reference_pass(
                    ref_trunk, ref_head, fused, post_qr, query_responses, ctx, pad, eos, temp, per_token
                )
            ref_logprobs = selective_log_softmax(ref_logits, responses)
            del ref_logits
            timer.lap("reference_and_reward")
            if fused is None:
                from trl.experimental.utils import get_reward

                _, scores, _ = get_reward(trainer.reward_model, post_qr, pad, ctx)
                scores = scores.float()
                timer.lap("reward")
            # 3) rewards and advantages (TRL's formulas).
            seq_len = first_true(post == pad) - 1
            if args.missing_eos_penalty is not None:
                scores = scores - args.missing_eos_penalty * (~torch.any(post == eos, -1)).float()
            idx = torch.arange(r_len, device=device).repeat(responses.shape[0], 1)
            padding = idx > seq_len[:, None]
            logprobs = torch.masked_fill(logprobs, padding, INVALID_LOGPROB)
            ref_logprobs = torch.masked_fill(ref_logprobs, padding, INVALID_LOGPROB)
            seq_len_p1 = seq_len + 1
            padding_p1 = idx > seq_len_p1[:, None]
            values = torch.masked_fill(values, padding_p1, 0)
            logr = ref_logprobs - logprobs
            kl = -logr if args.kl_estimator == "k1" else (logr.exp() - 1) - logr
            non_score = -args.kl_coef * kl
            end = torch.where(seq_len_p1 < r_len, seq_len_p1, seq_len)
            rewards = place_rewards(non_score, scores, shares, end)
            if args.whiten_rewards:
                rewards = torch.masked_fill(masked_whiten(rewards, ~padding_p1, shift_mean=False), padding_p1, 0)
            last_gae = 0.0
            adv_rev = []
            for t in reversed(range(r_len)):
                next_v = values[:, t + 1] if t < r_len - 1 else 0.0
                delta = rewards[:, t] + args.gamma * next_v - values[:, t]
                last_gae = delta + args.gamma * args.lam * last_gae
                adv_rev.append(last_gae)
            advantages = torch.stack(adv_rev[::-1], 1)
            returns = advantages + values
            advantages = torch.masked_fill(masked_whiten(advantages, ~padding), padding, 0)
            timer.lap("advantages")

        # 4) PPO epochs: one trunk pass gives the new log-probs and values.
        for epoch in range(args.num_ppo_epochs):
            order = np.random.permutation(args.local_batch_size)
            for mb_i, mb_start in enumerate(range(0, args.local_batch_size, args.local_mini_batch_size)):
                mb = order[mb_start : mb_start + args.local_mini_batch_size]
                for ga_i, micro_start in enumerate(
                    range(0, args.local_mini_batch_size, args.per_device_train_batch_size)
                ):
                    with acc.accumulate(model):
                        mi = mb[micro_start : micro_start + args.per_device_train_batch_size]
                        with acc.autocast():
                            h = _trunk_hidden(trunk, query_responses[mi], pad)[:, ctx - 1 : -1]
                            logits = lm_head(h).float() / temp
                            vpred = value.score(h).squeeze(-1).float()
                        new_logprobs = torch.masked_fill(
                            selective_log_softmax(logits, responses[mi]), padding[mi], INVALID_LOGPROB
                        )
                        vpred = torch.masked_fill(vpred, padding_p1[mi], 0)
                        v_clipped = torch.clamp(
                            vpred, values[mi] - args.cliprange_value, values[mi] + args.cliprange_value
                        )
                        vf1, vf2 = (vpred - returns[mi]) ** 2, (v_clipped - returns[mi]) ** 2
                        vf_loss = 0.5 * masked_mean(torch.max(vf1, vf2), ~padding_p1[mi])
                        diff = new_logprobs - logprobs[mi]
                        ratio = diff.exp()
                        pg1 = -advantages[mi] * ratio
                        pg2 = -advantages[mi] * torch.clamp(ratio, 1.0 - args.cliprange, 1.0 + args.cliprange)
                        pg_loss = masked_mean(torch.max(pg1, pg2), ~padding[mi])
                        loss = pg_loss + args.vf_coef * vf_loss
                        timer.lap("train_forward")
                        acc.backward(loss)
                        timer.lap("train_backward")
                        optimizer.step()
                        optimizer.zero_grad()
                        timer.lap("optimizer")
                        with torch.no_grad():
                            at = (epoch, mb_i, ga_i)
                            stats["clipfrac"][at] = masked_mean((pg2 > pg1).float(), ~padding[mi])
                            p = F.softmax(logits, dim=-1)
                            stats["ent"][at] = (torch.logsumexp(logits, -1) - (p * logits).sum(-1)).mean()
                            stats["approxkl"][at] = 0.5 * (diff**2).mean()
                            stats["pg"][at], stats["vf"][at] = pg_loss, vf_loss
                            stats["vf_clip"][at] = masked_mean((vf2 > vf1).float(), ~padding_p1[mi])
                            stats["ratio"][at] = ratio.mean()
                        del h, logits, p, vpred, new_logprobs, loss
                        timer.lap("train_stats")
        with torch.no_grad():
            gather = acc.gather_for_metrics
            mean_kl = kl.sum(1).mean()
            metrics = {
                "eps": int(state.episode / (time.time() - start)),
                "objective/kl": gather(mean_kl).mean().item(),
                "objective/entropy": gather(((-logprobs) * (~padding).float()).sum(1).mean()).mean().item(),
                "objective/non_score_reward": gather(non_score.sum(1).mean()).mean().item(),
                "objective/rlhf_reward": gather(non_score.sum(1).mean() + scores.mean()).mean().item(),
                "objective/scores": gather(scores.mean()).mean().item(),
                "policy/approxkl_avg": gather(stats["approxkl"]).mean().item(),
                "policy/clipfrac_avg": gather(stats["clipfrac"]).mean().item(),
                "loss/policy_avg": gather(stats["pg"]).mean().item(),
                "loss/value_avg": gather(stats["vf"]).mean().item(),
                "val/clipfrac_avg": gather(stats["vf_clip"]).mean().item(),
                "policy/entropy_avg": gather(stats["ent"]).mean().item(),
                "val/ratio": gather(stats["ratio"]).mean().item(),
                "val/ratio_var": gather(stats["ratio"]).var().item(),
                "val/num_eos_tokens": (responses == eos).sum().item(),
                "lr": trainer.lr_scheduler.get_last_lr()[0],
                "episode": state.episode,
            }
            metrics.update({f"time/{k}": v for k, v in timer.seconds.items()})
            state.epoch = state.episode / trainer.train_dataset_len
            state.global_step += 1
            trainer.log(metrics)
        trainer.lr_scheduler.step()
        trainer.control = trainer.callback_handler.on_step_end(args, state, trainer.control)
        if trainer.control.should_save:
            trainer._save_checkpoint(model, trial=None)
            trainer.control = trainer.callback_handler.on_save(args, state, trainer.control)
    trainer.control = trainer.callback_handler.on_train_end(args, state, trainer.control)
    if trainer.control.should_save:
        trainer._save_checkpoint(model, trial=None)
        trainer.control = trainer.callback_handler.on_save(args, state, trainer.control)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
