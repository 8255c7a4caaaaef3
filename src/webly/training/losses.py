"""Losses of the three training tasks, on sparse per-sample targets.

Targets arrive per sample as `idx` (LongTensor [B, T], -1 = padding) and `w` (FloatTensor [B, T]):
the image's keywords (WT-Set, weights 1), its concept weights (LW-Set), or its one label. The whole
dataset is never densified; a batch is, only for the BCE variant.

- `weighted_softmax_ce`: sum over an image's targets t of w_t * CE(logits, t), the seed's
  multi-label loss (WT-Set, w = 1) and label-weighted loss (LW-Set); `normalise` divides by the
  number of targets (or the weight sum) instead. Averaged over the batch.
- `multilabel_bce`: binary cross-entropy against the batch's multi-hot targets, for comparison.
- `cross_entropy`: plain single-label CE with optional label smoothing, for finetuning.
- `generalized_ce`: the noise-robust generalised cross-entropy (GCE), weighted over targets.

Each returns the batch mean, or with `reduction="none"` one loss per sample (what the training
tasks use, so a task can weigh or leave out samples before averaging).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_sample if reduction == "none" else per_sample.mean()


def weighted_softmax_ce(logits: torch.Tensor, idx: torch.Tensor, w: torch.Tensor,
                        normalise: bool = False, reduction: str = "mean") -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=1)
    valid = idx >= 0
    picked = logp.gather(1, idx.clamp(min=0)) * valid
    per_sample = -(picked * w).sum(1)
    if normalise:
        per_sample = per_sample / (w * valid).sum(1).clamp(min=1e-6)
    return _reduce(per_sample, reduction)


def dense_targets(idx: torch.Tensor, w: torch.Tensor, num_classes: int) -> torch.Tensor:
    out = torch.zeros(idx.shape[0], num_classes + 1, device=idx.device, dtype=torch.float32)
    out.scatter_(1, torch.where(idx >= 0, idx, num_classes), w.float())
    return out[:, :num_classes]


def multilabel_bce(logits: torch.Tensor, idx: torch.Tensor, w: torch.Tensor,
                   reduction: str = "mean") -> torch.Tensor:
    target = dense_targets(idx, w, logits.shape[1]).clamp(max=1.0)
    per_sample = F.binary_cross_entropy_with_logits(logits.float(), target,
                                                    reduction="none").sum(1)
    return _reduce(per_sample, reduction)


def cross_entropy(logits: torch.Tensor, idx: torch.Tensor, w: torch.Tensor,
                  label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.float(), idx[:, 0], label_smoothing=label_smoothing,
                           reduction=reduction)


def generalized_ce(logits: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, q: float = 0.7,
                   reduction: str = "mean") -> torch.Tensor:
    """Generalised cross-entropy (Zhang & Sabuncu 2018, NeurIPS): sum_t w_t (1 - p_t^q) / q.
    Its gradient is CE's times p_t^q, so an image whose label the network finds unlikely (most
    often a wrong label) pulls less; q -> 0 is CE, q = 1 the mean absolute error."""
    p = F.softmax(logits.float(), dim=1)
    valid = idx >= 0
    picked = p.gather(1, idx.clamp(min=0)).clamp(min=1e-7)
    per_sample = (((1 - picked.pow(q)) / q) * w * valid).sum(1)
    return _reduce(per_sample, reduction)
