"""Candidate responses: prompts in the store -> K completions each -> comparisons to label.

Reads prompts from the store, writes completions (with the exact sampling settings and seed on
each) and a comparison for every pair of distinct responses. Batched with left padding, prompts
sorted by length so a batch pads little. Resumable: prompts that already have candidates from the
same model are skipped, and each batch is stored as soon as it is generated, so an interrupted run
loses at most one batch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhf.errors import ValidationError
from rlhf.store import CompletionRecord, Store

log = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    """How candidates are sampled. Recorded verbatim on every completion."""

    do_sample: bool = field(default=True, metadata={"help": "Sample (True) or greedy decoding (False)."})
    temperature: float = field(default=0.8, metadata={"help": "Softmax temperature; higher: more varied."})
    top_k: int = field(default=50, metadata={"help": "Sample among the k most likely tokens; 0 disables."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass in (0, 1]; 1 disables."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest response, in tokens."})
    num_candidates: int = field(default=2, metadata={"help": "Responses per prompt (K); pairs are formed among them."})
    seed: int = field(default=0, metadata={"help": "Base seed; each batch uses seed and its first prompt id."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per forward pass (x K sequences)."})
    system_prompts: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Candidate k of each prompt is generated under system_prompts[k % n] ('' = the model's "
            "own default), as UltraFeedback does with its principles: more varied candidates, more "
            "decisive pairs. The stored prompt stays the user's own, so labels, the reward model and "
            "PPO never see it. Empty: every candidate from the same context."
        },
    )

    def problems(self) -> list[str]:
        p = []
        if self.do_sample and not self.temperature > 0:
            p.append(f"`temperature` must be > 0 when sampling, got {self.temperature}")
        if self.top_k < 0:
            p.append(f"`top_k` must be >= 0 (0 disables), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            p.append(f"`top_p` must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            p.append(f"`max_new_tokens` must be >= 1, got {self.max_new_tokens}")
        if self.num_candidates < 1:
            p.append(f"`num_candidates` must be >= 1, got {self.num_candidates}")
        if not self.do_sample and self.num_candidates > 1 and len(set(self.system_prompts or [])) < self.num_candidates:
            p.append(
                "greedy decoding (`do_sample` false) gives K identical candidates; sample, use K = 1, or give "
                "K different `system_prompts`"
            )
        if self.batch_size < 1:
            p.append(f"`batch_size` must be >= 1, got {self.batch_size}")
        if not isinstance(self.system_prompts, (list, tuple)) or not all(
            isinstance(x, str) for x in self.system_prompts
        ):
            p.append(f"`system_prompts` must be a list of strings, got {self.system_prompts!r}")
        return p

    def validate(self) -> GenerationSettings:
        if problems := self.problems():
            raise ValidationError("generation settings", problems)
        return self

    def recorded(self) -> dict[str, Any]:
        """The settings that shape a response (stored on each completion)."""
        d = dataclasses.asdict(self)
        d.pop("batch_size")
        d.pop("system_prompts")  # each completion records the one it was generated under
        if not self.do_sample:
            for k in ("temperature", "top_k", "top_p"):
                d.pop(k)
        return d


@dataclass
class Generated:
    """One response: text, its token count and why it stopped."""

    text: str
    num_tokens: int
    finish_reason: str  # "eos" | "length"
    system_prompt: str | None = None  # the candidate's entry of `system_prompts`, if any


def with_system(content: str | list[dict[str, str]], system: str) -> str | list[dict[str, str]]:
    """The prompt with `system` as its system message ('' leaves it as it is). An existing system
    message is kept after it."""
    if not system:
        return content
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else list(content)
    if messages and messages[0].get("role") == "system":
        return [{"role": "system", "content": f"{system}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


def generate_responses(
    model: Any, tok: Any, prompts: Sequence[str | list[dict[str, str]]], settings: GenerationSettings, seed: int
) -> list[list[Generated]]:
    """K responses for each prompt, in one batched `generate` call.

    Prompts are formatted with the chat template (chat models), left-padded and, when longer than
    the context allows, truncated from the left (the end of a prompt matters most). With
    `settings.system_prompts`, candidate k of a prompt is generated under system prompt k mod n."""
    import torch

    from rlhf.models import format_prompt

    settings.validate()
    k_cands = settings.num_candidates
    systems = list(settings.system_prompts)
    if systems:  # one sequence per (prompt, candidate): each with its own system prompt
        texts = [format_prompt(tok, with_system(p, systems[k % len(systems)])) for p in prompts for k in range(k_cands)]
    else:
        texts = [format_prompt(tok, p) for p in prompts]
    ctx = getattr(model.config, "max_position_embeddings", None) or 2048
    tok.truncation_side = "left"
    enc = tok(
        texts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max(8, ctx - settings.max_new_tokens),
        # The chat template already holds the special tokens it needs.
        add_special_tokens=not bool(getattr(tok, "chat_template", None)),
    ).to(model.device)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id])
    # The pad token is a real vocabulary token (SmolLM2's <|endoftext|>): a model that emits it
    # has ended its text, and everything after it would be padding anyway.
    eos_ids.add(tok.pad_token_id)
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "num_return_sequences": 1 if systems else k_cands,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": sorted(eos_ids),
        "do_sample": settings.do_sample,
    }
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_k=settings.top_k or None, top_p=settings.top_p)
    else:
        # Unset the model's own sampling defaults so greedy decoding raises no warnings.
        kwargs.update(temperature=None, top_k=None, top_p=None)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**enc, **kwargs)
    new = out[:, enc["input_ids"].shape[1] :].tolist()
    results: list[list[Generated]] = []
    for i in range(len(prompts)):
        row = []
        for k, ids in enumerate(new[i * k_cands : (i + 1) * k_cands]):
            stop = next((j for j, t in enumerate(ids) if t in eos_ids), None)
            kept = ids[:stop] if stop is not None else ids
            text = tok.decode(kept, skip_special_tokens=True).strip()
            row.append(
                Generated(
                    text,
                    len(kept) + (1 if stop is not None else 0),
                    "eos" if stop is not None else "length",
                    systems[k % len(systems)] if systems else None,
                )
            )
        results.append(row)
    return results


@dataclass
class GenerationReport:
    prompts: int = 0
    completions: int = 0
    comparisons: int = 0
    identical_pairs_skipped: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def generate_candidates(
    store: Store,
    model: str = "default",
    settings: GenerationSettings | None = None,
    limit: int | None = None,
    category: str | None = None,
    required_labels: int | None = None,
    round: int = 0,
    dtype: str = "auto",
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    prompt_ids: Sequence[int] | None = None,
) -> GenerationReport:
    """Generate K candidates for up to `limit` prompts that have none from `model` yet (only among
    `prompt_ids` when given).

    `progress(done, total)` is called after each stored batch (the CLI draws a bar with it)."""
    from rlhf.models import canonical_name, load_causal_lm

    settings = (settings or GenerationSettings()).validate()
    store.require_ready()
    model_label = canonical_name(model)
    todo = store.prompts_without_candidates(model_label, limit=limit, category=category, ids=prompt_ids)
    report = GenerationReport()
    if not todo:
        return report
    lm, tok = load_causal_lm(model, dtype=dtype, device=device)
    # Similar lengths in one batch: less padding, less wasted compute.
    todo.sort(key=lambda p: len(str(p.content)))
    if progress:
        progress(0, len(todo))
    recorded = settings.recorded()
    for start in range(0, len(todo), settings.batch_size):
        batch = todo[start : start + settings.batch_size]
        seed = settings.seed * 1_000_003 + batch[0].id
        t0 = time.perf_counter()
        outs = generate_responses(lm, tok, [p.content for p in batch], settings, seed)
        report.seconds += time.perf_counter() - t0
        for prompt, gens in zip(batch, outs):
            recs = [
                CompletionRecord(
                    g.text,
                    model_label,
                    recorded if g.system_prompt is None else {**recorded, "system_prompt": g.system_prompt},
                    seed,
                    g.num_tokens,
                    g.finish_reason,
                )
                for g in gens
            ]
            n_comp, n_pairs = store.add_candidates(prompt.id, recs, required_labels=required_labels, round=round)
            k = len(recs)
            report.prompts += 1
            report.completions += n_comp
            report.comparisons += n_pairs
            report.identical_pairs_skipped += k * (k - 1) // 2 - n_pairs
            report.new_tokens += sum(g.num_tokens for g in gens)
        if progress:
            progress(min(start + len(batch), len(todo)), len(todo))
    log.info(
        "generated %d completions for %d prompts at %.1f tokens/s",
        report.completions,
        report.prompts,
        report.tokens_per_s,
    )
    return report
