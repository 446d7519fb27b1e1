"""Reward model as a frozen backbone with a trained head: the default for a few hundred labels.

The base model reads each (prompt, response) once, exactly as TRL's RewardTrainer would tokenize it,
and its last hidden state at the final token (the token TRL's `get_reward` and a sequence
classification head read) becomes that response's feature vector. A linear head is then trained on
those cached features with the Bradley-Terry loss TRL's RewardTrainer uses,
`-log sigmoid(r_chosen - r_rejected - margin)`, plus an L2 penalty. Because the features are
computed once, hundreds of epochs take seconds, and the penalty and the number of epochs are chosen
on a validation split carved from the TRAINING pairs (by prompt), so the export's test split stays
untouched for the held-out report. The head is then refitted on every training pair.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # per-pair-averaged loss + l2 * |w|^2, on standardised features
MAX_EPOCHS = 400
PATIENCE = 40
VALIDATION_FRACTION = 0.2


def sequence_features(
    backbone: Any,
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 16,
    bf16: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """(n, hidden) float32 tensor: the backbone's last hidden state at each sequence's last token
    (right-padded batches sorted by length; rows in the input order)."""
    import torch

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    device = next(backbone.parameters()).device
    out: Any = None
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)
    backbone.eval()
    with torch.inference_mode(), ctx:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(seqs[i])] = torch.tensor(list(seqs[i]))
                mask[row, : len(seqs[i])] = 1
            h = backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            last = mask.sum(1).to(device) - 1
            feats = h[torch.arange(len(idx), device=device), last].float().cpu()
            if out is None:
                out = torch.zeros((len(seqs), feats.shape[1]))
            out[torch.tensor(idx)] = feats
            if progress:
                progress(min(start + batch_size, len(order)), len(order))
    return out


@dataclass
class HeadFit:
    weight: Any  # (hidden,) on the raw features: score = weight . x
    l2: float
    epochs: int
    validation_accuracy: float | None
    validation_pairs: int
    history: list[dict[str, float]]  # per epoch of the final fit: loss, accuracy
    seconds: float


def _fit(
    d: Any, margin: Any, l2: float, epochs: int, lr: float, val: tuple[Any, Any] | None = None
) -> tuple[Any, int, float | None, list[dict[str, float]]]:
    """Full-batch Adam on standardised feature differences d (n, h). With `val`, stops after
    PATIENCE epochs without a lower validation loss and returns the best epoch's weight."""
    import torch
    import torch.nn.functional as F

    w = torch.zeros(d.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    best = (float("inf"), w.detach().clone(), 0, None)
    history = []
    for epoch in range(1, epochs + 1):
        opt.zero_grad()
        logits = d @ w
        loss = -F.logsigmoid(logits - margin).mean() + l2 * (w * w).sum()
        loss.backward()
        opt.step()
        history.append({"loss": float(loss.detach()), "accuracy": float((logits.detach() > 0).float().mean())})
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
) -> HeadFit:
    """Train the linear head on cached features of training pairs (chosen[i] preferred to
    rejected[i]; `margin` per pair, zeros for none; `groups` the prompt of each pair, so a prompt's
    pairs stay on one side of the validation split). Chooses the L2 penalty and the epoch count on
    that split, then refits on every pair."""
    import random

    import torch

    t0 = time.perf_counter()
    x = torch.cat([chosen, rejected])
    sd = x.std(0) + 1e-6  # standardise: a few hidden dimensions are huge in LLMs
    d = (chosen - rejected) / sd  # the mean cancels in a difference
    margin = torch.as_tensor(margin, dtype=torch.float32)
    keys = sorted(set(groups), key=str)
    random.Random(seed).shuffle(keys)
    n_val = int(round(len(keys) * VALIDATION_FRACTION))
    val_keys = set(keys[:n_val])
    val_idx = torch.tensor([i for i, g in enumerate(groups) if g in val_keys], dtype=torch.long)
    tr_idx = torch.tensor([i for i, g in enumerate(groups) if g not in val_keys], dtype=torch.long)
    torch.manual_seed(seed)
    choice = (L2_GRID[1], MAX_EPOCHS // 4, None)
    if len(val_idx) >= 10 and len(tr_idx) >= 10:
        scored = []
        for l2 in L2_GRID:
            _, epochs, acc, _ = _fit(d[tr_idx], margin[tr_idx], l2, MAX_EPOCHS, lr, (d[val_idx], margin[val_idx]))
            scored.append((acc or 0.0, -l2, l2, epochs))
        acc, _, l2, epochs = max(scored)  # best validation accuracy; ties: the stronger penalty
        choice = (l2, epochs, acc)
    weight, _, _, history = _fit(d, margin, choice[0], choice[1], lr)
    return HeadFit(
        weight=weight / sd,
        l2=choice[0],
        epochs=choice[1],
        validation_accuracy=choice[2],
        validation_pairs=len(val_idx),
        history=history,
        seconds=time.perf_counter() - t0,
    )
