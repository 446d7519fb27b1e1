"""Reward model as a frozen backbone with a trained head: the default for a few hundred labels.

The base model reads each (prompt, response) once, exactly as TRL's RewardTrainer would tokenize it,
and several feature vectors of each response come out of that one pass: its last hidden state at
the final token (the token TRL's `get_reward` and a sequence classification head read), and at a few
layers the [mean, max] or the sum of the response tokens' hidden states (a sum grows with how often
something occurs: the graded rules count). A linear head is then trained on those cached features
with the Bradley-Terry loss TRL's RewardTrainer uses, `-log sigmoid(r_chosen - r_rejected - margin)`,
plus an L2 penalty. Because the features are computed once, hundreds of epochs take seconds, and the
feature kind, the penalty and the number of epochs are chosen by cross-validation over the TRAINING
pairs' prompts, so the export's test split stays untouched for the held-out report. The head is then
refitted on every training pair.

Why: on 2 CPU cores a full fine-tune of SmolLM2-135M runs ~0.7 pairs/s and, with ~200 pairs, did
not beat its untrained accuracy (issue 11). The frozen features already separate content rules
(list format, tone, numbers) linearly; see the README's learning benchmark for the measurements.

The saved model is a plain `AutoModelForSequenceClassification` (the base weights untouched, the
head's weight in `score`), marked `reward_backbone_frozen` in its config, so PPO can read the reward
from the reference model's own forward pass when both share the base.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # per-pair-averaged loss + l2 * |w|^2, on standardised features
MAX_EPOCHS = 400
PATIENCE = 40


# Candidate layers of the pooled heads, as shares of the depth. An early layer (2 of SmolLM2's 30)
# still says which tokens a response holds: with sum pooling, a head there counts them.
POOL_DEPTHS = (0.07, 0.13, 0.27, 0.4, 0.53, 0.67)
FOLDS = 5  # cross-validation folds (by prompt) that choose the feature kind, penalty and epochs
POOLINGS = {"pool": "mean_max", "sum": "sum"}  # feature-kind prefix -> pooling


def pool_layers(depth: int) -> list[int]:
    """Candidate layers (1-based) for a trunk of `depth` blocks: 2, 4, 8, 12, 16, 20 of SmolLM2's 30."""
    return sorted({max(1, round(depth * f)) for f in POOL_DEPTHS} - {depth})


def layer_output_hook(layers: Any, index: int, store: dict[str, Any]) -> Any:
    """Capture the hidden states that layer `index` (0-based) outputs into store["h"]; returns the handle."""

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        store["h"] = output[0] if isinstance(output, tuple) else output

    return layers[index].register_forward_hook(hook)


def response_start(input_ids: Any, mask: Any, marker: Sequence[int]) -> Any:
    """Per row, the index right after the LAST occurrence of `marker` (the chat template's assistant
    header) among the real tokens, i.e. where the response starts; 0 when the marker is absent."""
    import torch

    b, n = input_ids.shape
    m = len(marker)
    if m == 0 or n < m:
        return torch.zeros(b, dtype=torch.long, device=input_ids.device)
    windows = input_ids.unfold(1, m, 1)  # (b, n - m + 1, m)
    hit = (windows == torch.tensor(list(marker), device=input_ids.device)).all(-1) & (mask[:, m - 1 :] == 1)
    pos = torch.arange(n - m + 1, device=input_ids.device)
    last = torch.where(hit, pos, torch.full_like(pos, -1)).max(1).values
    return torch.where(last >= 0, last + m, torch.zeros_like(last))


def pool(h: Any, mask: Any, start: Any, pooling: str = "mean_max") -> Any:
    """Over each row's response tokens (positions >= start with mask 1): [mean, max] (b, 2 x hidden),
    or with `pooling="sum"` their sum (b, hidden), which grows with how often a property occurs."""
    import torch

    pos = torch.arange(h.shape[1], device=h.device)[None, :]
    keep = (mask.bool() & (pos >= start[:, None])).unsqueeze(-1)
    keep = torch.where(keep.any(1, keepdim=True), keep, mask.bool().unsqueeze(-1))  # empty response: all tokens
    h = h.float()
    if pooling == "sum":
        return (h * keep).sum(1)
    mean = (h * keep).sum(1) / keep.sum(1).clamp(min=1)
    mx = torch.where(keep, h, torch.full_like(h, float("-inf"))).max(1).values
    return torch.cat([mean, mx], -1)


def token_contributions(h: Any, mask: Any, start: Any, pooling: str, weight: Any) -> Any:
    """Each position's share of a linear head's score `weight . pool(h, mask, start, pooling)`, (b, n)
    float32: the rows sum to that score exactly. With "sum" a response token's share is weight . h_t;
    with "mean_max" it is its mean part (weight_mean . h_t / count) plus, for every hidden dimension
    whose maximum that token holds, weight_max[i] * h_t[i]. PPO gives each token its share as its own
    reward (`token_rewards`), so the tokens that earned the score are the ones credited."""
    import torch

    pos = torch.arange(h.shape[1], device=h.device)[None, :]
    keep = mask.bool() & (pos >= start[:, None])
    keep = torch.where(keep.any(1, keepdim=True), keep, mask.bool())  # as `pool`: empty response, all tokens
    h, w, k = h.float(), weight.float().reshape(-1), keep.unsqueeze(-1)
    with torch.autocast(h.device.type, enabled=False):  # float32 even inside a bf16 run's autocast
        if pooling == "sum":
            return (h @ w) * keep
        hidden = h.shape[-1]
        w_mean, w_max = w[:hidden], w[hidden:]
        count = keep.sum(1, keepdim=True).clamp(min=1)
        share = (h @ w_mean) * keep / count
        masked = torch.where(k, h, torch.full_like(h, float("-inf")))
        top, at = masked.max(1)  # (b, hidden): each dimension's maximum and the position holding it
        return share.scatter_add(1, at, top * w_max)


def sequence_features(
    backbone: Any,
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    marker: Sequence[int],
    batch_size: int = 16,
    bf16: bool = False,
    layers: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Feature vectors of every sequence, one (n, dim) float32 tensor per kind, rows in input order:
    "last" = the backbone's last hidden state at the last token (what a sequence-classification head
    reads), "pool<L>" = [mean, max] and "sum<L>" = the sum over the response tokens of layer L's
    output (L in `layers`, 1-based; default `pool_layers` of the trunk's depth)."""
    import torch

    blocks = _decoder_layers(backbone)
    layers = [L for L in (layers if layers is not None else pool_layers(len(blocks))) if 1 <= L < len(blocks)]
    device = next(backbone.parameters()).device
    out: dict[str, Any] = {}
    captured: dict[int, dict[str, Any]] = {L: {} for L in layers}
    handles = [layer_output_hook(blocks, L - 1, captured[L]) for L in layers]
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)
    backbone.eval()
    try:
        with torch.inference_mode(), ctx:
            for start, idx, ids, mask in right_padded_batches(seqs, pad_id, batch_size):
                ids, mask = ids.to(device), mask.to(device)
                h = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
                feats = {"last": h[torch.arange(len(idx), device=device), mask.sum(1) - 1]}
                begin = response_start(ids, mask, marker)
                for L in layers:
                    for prefix, pooling in POOLINGS.items():
                        feats[f"{prefix}{L}"] = pool(captured[L]["h"], mask, begin, pooling)
                for k, v in feats.items():
                    v = v.float().cpu()
                    if k not in out:
                        out[k] = torch.zeros((len(seqs), v.shape[1]))
                    out[k][torch.tensor(idx)] = v
                if progress:
                    progress(min(start + batch_size, len(seqs)), len(seqs))
    finally:
        for hd in handles:
            hd.remove()
    return out


def right_padded_batches(
    seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int
) -> Iterator[tuple[int, list[int], Any, Any]]:
    """(start, row indices, ids, attention mask) of right-padded batches of `seqs`, sorted by length
    (less padding); the indices say which input sequence each row is."""
    import torch

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(seqs[i])] = torch.tensor(list(seqs[i]))
            mask[row, : len(seqs[i])] = 1
        yield start, idx, ids, mask


def _decoder_layers(backbone: Any) -> Any:
    """The list of transformer blocks of a backbone (LLaMA-style `layers`, GPT-2 `h`)."""
    for name in ("layers", "h", "blocks"):
        if hasattr(backbone, name):
            return getattr(backbone, name)
    raise ValueError(f"cannot find the transformer blocks of {type(backbone).__name__}")


@dataclass
class HeadFit:
    kind: str  # "last" or "pool<L>" (see sequence_features)
    weight: Any  # (dim,) on the raw features: score = weight . x
    l2: float
    epochs: int
    validation_accuracy: float | None
    validation_pairs: int
    history: list[dict[str, float]]  # per epoch of the final fit: loss, accuracy
    seconds: float
    candidates: dict[str, float | None]  # validation accuracy of each feature kind (its best penalty)


def pair_losses(logits: Any, margin: Any, tie: Any) -> Any:
    """Per pair: the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected - margin) of a decisive
    pair; for a tie (`tie` True) a half-win each way, -(log sigmoid(d) + log sigmoid(-d)) / 2, which
    is least (log 2) when the two rewards are equal: a tie says which differences do NOT matter."""
    import torch
    import torch.nn.functional as F

    half = -(F.logsigmoid(logits) + F.logsigmoid(-logits)) / 2
    return torch.where(tie, half, -F.logsigmoid(logits - margin))


def _fit(
    d: Any,
    margin: Any,
    l2: float,
    epochs: int,
    lr: float,
    val: tuple[Any, Any] | None = None,
    tie: Any = None,
) -> tuple[Any, int, float | None, list[dict[str, float]]]:
    """Full-batch Adam on standardised feature differences d (n, h); `tie` (n,) bool marks tied
    pairs (`pair_losses`; accuracy counts decisive pairs only). With `val` (decisive pairs), stops
    after PATIENCE epochs without a lower validation loss and returns the best epoch's weight."""
    import torch
    import torch.nn.functional as F

    tie = torch.zeros(d.shape[0], dtype=torch.bool) if tie is None else tie
    w = torch.zeros(d.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    best = (float("inf"), w.detach().clone(), 0, None)
    history = []
    for epoch in range(1, epochs + 1):
        opt.zero_grad()
        logits = d @ w
        loss = pair_losses(logits, margin, tie).mean() + l2 * (w * w).sum()
        loss.backward()
        opt.step()
        right = (logits.detach() > 0)[~tie].float()
        history.append({"loss": float(loss.detach()), "accuracy": float(right.mean()) if len(right) else 0.0})
        if val is not None:
            with torch.no_grad():
                vl = d_val_logits = val[0] @ w
                v_loss = float(-F.logsigmoid(vl - val[1]).mean())
                if v_loss < best[0] - 1e-6:
                    best = (v_loss, w.detach().clone(), epoch, float((d_val_logits > 0).float().mean()))
                elif epoch - best[2] >= PATIENCE:
                    break
    if val is None:
        return w.detach().clone(), epochs, None, history
    return best[1], max(best[2], 1), best[3], history


def fit_head(
    chosen: Any,
    rejected: Any,
    margin: Any,
    groups: Sequence[Any],
    seed: int = 0,
    lr: float = 0.02,
    ties: Sequence[bool] | None = None,
) -> HeadFit:
    """Train the linear head on cached features of training pairs (chosen[i] preferred to
    rejected[i]; `margin` per pair, zeros for none; `groups` the prompt of each pair, so a prompt's
    pairs stay in one fold; `ties[i]` True: pair i was a tie, trained toward equal rewards, see
    `pair_losses`). `chosen`/`rejected`: one tensor, or a dict of feature kinds
    (`sequence_features`). Chooses the kind, the L2 penalty and the epoch count by FOLDS-fold
    cross-validation over prompts (lowest validation loss on the held-out fold's decisive pairs;
    ties: `last`, then the stronger penalty), then refits on every pair. `validation_accuracy` is the
    chosen setting's cross-validated accuracy over the decisive pairs (`validation_pairs` of them)."""
    import random
    import statistics

    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    kinds_c = chosen if isinstance(chosen, dict) else {"last": chosen}
    kinds_r = rejected if isinstance(rejected, dict) else {"last": rejected}
    margin = torch.as_tensor(margin, dtype=torch.float32)
    tie = torch.zeros(len(groups), dtype=torch.bool) if ties is None else torch.as_tensor(list(ties), dtype=torch.bool)
    decisive = int((~tie).sum())
    keys = sorted(set(groups), key=str)
    random.Random(seed).shuffle(keys)
    folds = min(FOLDS, len(keys))
    fold_of = {k: i % folds for i, k in enumerate(keys)} if folds else {}
    fold = torch.tensor([fold_of[g] for g in groups], dtype=torch.long)
    torch.manual_seed(seed)
    diffs, scales = {}, {}
    for kind in kinds_c:
        x = torch.cat([kinds_c[kind], kinds_r[kind]])
        scales[kind] = x.std(0) + 1e-6  # standardise: a few hidden dimensions are huge in LLMs
        diffs[kind] = (kinds_c[kind] - kinds_r[kind]) / scales[kind]  # the mean cancels in a difference
    default_kind = "last" if "last" in diffs else next(iter(diffs))
    choice = (default_kind, L2_GRID[1], MAX_EPOCHS // 4, None)
    candidates: dict[str, float | None] = {k: None for k in diffs}
    if folds >= 2 and decisive >= 10:
        # Every training pair is validated once, by a head that never saw its prompt: the choice
        # rests on all the pairs, not on a fifth of them (a 13-pair split chose by luck).
        scored = []
        for kind, d in diffs.items():
            for l2 in L2_GRID:
                loss, right, best_epochs = 0.0, 0.0, []
                for k in range(folds):
                    tr, va = fold != k, (fold == k) & ~tie
                    if not va.any():
                        continue
                    w, epochs, _, _ = _fit(d[tr], margin[tr], l2, MAX_EPOCHS, lr, (d[va], margin[va]), tie[tr])
                    with torch.no_grad():
                        v = d[va] @ w
                        loss += float(-F.logsigmoid(v - margin[va]).sum())
                        right += float((v > 0).float().sum())
                    best_epochs.append(epochs)
                acc = right / decisive
                candidates[kind] = max(candidates[kind] or 0.0, acc)
                # Lowest cross-validated loss; ties: `last`, then the stronger penalty.
                scored.append((-loss, kind == "last", l2, kind, int(statistics.median(best_epochs)), acc))
        _, _, l2, kind, epochs, acc = max(scored)
        choice = (kind, l2, epochs, acc)
    kind, l2, epochs, val_acc = choice
    weight, _, _, history = _fit(diffs[kind], margin, l2, epochs, lr, tie=tie)
    return HeadFit(
        kind=kind,
        weight=weight / scales[kind],
        l2=l2,
        epochs=epochs,
        validation_accuracy=val_acc,
        validation_pairs=decisive if choice[3] is not None else 0,
        history=history,
        seconds=time.perf_counter() - t0,
        candidates=candidates,
    )


def pool_layer(kind: str) -> int | None:
    """The layer of a "pool<L>" or "sum<L>" feature kind; None for "last"."""
    for prefix in POOLINGS:
        if kind.startswith(prefix):
            return int(kind[len(prefix) :])
    return None


def pooling_of(kind: str) -> str | None:
    """The pooling of a feature kind ("mean_max" or "sum"); None for "last"."""
    return next((p for prefix, p in POOLINGS.items() if kind.startswith(prefix)), None)


def _pooled_classes() -> tuple[type, type]:
    import torch
    import torch.nn as nn
    from transformers.modeling_outputs import BaseModelOutputWithPast, SequenceClassifierOutputWithPast

    class Pooler(nn.Module):
        """The reward model's trunk up to layer L (the blocks above it removed: they are never
        read), returning at every position the pooled response tokens of layer L's output
        ([mean, max] or their sum): TRL's `get_reward` then reads the score wherever it looks."""

        def __init__(self, backbone: Any, layer: int, marker: Sequence[int], pooling: str = "mean_max"):
            super().__init__()
            blocks = _decoder_layers(backbone)
            for name in ("layers", "h", "blocks"):
                if getattr(backbone, name, None) is blocks:
                    setattr(backbone, name, blocks[:layer])
            self.backbone, self.layer, self.marker, self.pooling = backbone, layer, list(marker), pooling

        def forward(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None, **kw: Any) -> Any:
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            store: dict[str, Any] = {}
            handle = layer_output_hook(_decoder_layers(self.backbone), self.layer - 1, store)
            try:
                self.backbone(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
            finally:
                handle.remove()
            feats = pool(store["h"], mask, response_start(input_ids, mask, self.marker), self.pooling)
            h = feats[:, None, :].expand(-1, input_ids.shape[1], -1)
            return BaseModelOutputWithPast(last_hidden_state=h, hidden_states=(h,))

    class PooledRewardModel(nn.Module):
        """A frozen-backbone reward model whose head reads layer L pooled over the response
        (see the module doc); called like a sequence-classification model (`.logits`, (b, 1))."""

        base_model_prefix = "pooler"

        def __init__(self, seq_cls: Any, layer: int, marker: Sequence[int], weight: Any, pooling: str = "mean_max"):
            super().__init__()
            self.config = seq_cls.config
            self.pooler = Pooler(getattr(seq_cls, seq_cls.base_model_prefix), layer, marker, pooling)
            self.score = nn.Linear(weight.numel(), 1, bias=False)
            with torch.no_grad():
                self.score.weight.copy_(weight.reshape(1, -1))

        def forward(self, input_ids: Any, attention_mask: Any = None, **kw: Any) -> Any:
            h = self.pooler(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return SequenceClassifierOutputWithPast(logits=self.score(h[:, -1]))

        def get_input_embeddings(self) -> Any:
            return self.pooler.backbone.get_input_embeddings()

    return Pooler, PooledRewardModel


HEAD_FILE = "reward_head.safetensors"


def load_pooled(seq_cls: Any, folder: Any) -> Any:
    """The PooledRewardModel a head run saved in `folder` (model/), around its loaded seq-cls model."""
    from pathlib import Path

    from safetensors.torch import load_file

    spec = seq_cls.config.reward_head
    weight = load_file(str(Path(folder) / HEAD_FILE))["weight"]
    return _pooled_classes()[1](seq_cls, int(spec["layer"]), spec["marker"], weight, spec.get("pooling", "mean_max"))
