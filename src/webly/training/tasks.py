"""What turns a batch into a loss: the part a new training method changes.

The engine feeds every micro-batch to `task.loss(net, batch)` and does the rest (accumulation,
scaling, DDP, checkpoints). A method that needs more than one forward pass or its own state
(mixup, two augmented views, distillation from an ensemble, per-sample loss records) is a new
`Task` subclass, not a branch in the loop; a task with state returns it from `state_dict()` so
checkpoints carry it and a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from webly.training import losses
from webly.training.config import TrainConfig

Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # per-sample losses


@dataclass
class Batch:
    """One micro-batch on the training device: normalised images, sparse targets (ids -1 padded,
    weights), the batch's positions in the dataset (for methods that track samples) and how far
    training is, in epochs (for methods that change over training)."""

    x: torch.Tensor
    ids: torch.Tensor
    weights: torch.Tensor
    positions: torch.Tensor | None = None
    epoch: float = 0.0


class Task:
    """The base: the mean of per-sample losses on sparse targets (see `webly.training.losses`).

    With `drop_high_loss` r > 0 the fraction r of each micro-batch with the highest losses is
    left out of the mean (small-loss selection: Han et al. 2018, Co-teaching; Jiang et al. 2018,
    MentorNet). A network fits clean labels before wrong ones, so early in training the wrong
    labels are mostly among the largest losses; r ramps linearly from 0 over `ramp_epochs`, so
    the network first learns from all images what tells them apart. The selection is global
    within the micro-batch, as in Co-teaching.
    """

    def __init__(self, criterion: Criterion, drop_high_loss: float = 0.0,
                 ramp_epochs: float = 1.0) -> None:
        self.criterion = criterion
        self.drop_high_loss = drop_high_loss
        self.ramp_epochs = ramp_epochs

    def per_sample(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        return self.criterion(net(batch.x), batch.ids, batch.weights)

    def drop_rate(self, epoch: float) -> float:
        """The fraction left out at `epoch` (fractional epochs done)."""
        if self.drop_high_loss <= 0:
            return 0.0
        ramp = 1.0 if self.ramp_epochs <= 0 else min(1.0, epoch / self.ramp_epochs)
        return self.drop_high_loss * ramp

    def loss(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        per = self.per_sample(net, batch)
        drop = int(self.drop_rate(batch.epoch) * per.numel())
        if drop == 0:
            return per.mean()
        return per.topk(per.numel() - drop, largest=False, sorted=False).values.mean()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Mixup(Task):
    """mixup (Zhang et al. 2018): each micro-batch is blended with a permutation of itself,
    lam ~ Beta(alpha, alpha), and the loss is the same blend of the two targets' losses (the
    criteria are linear in the target weights, so this is the loss of the blended targets). A
    network trained on blends fits wrong labels late and less: a standard noisy-label tool.
    Draws come from torch's RNG, which checkpoints carry, so a resumed run continues exactly."""

    def __init__(self, criterion: Criterion, alpha: float, drop_high_loss: float = 0.0,
                 ramp_epochs: float = 1.0) -> None:
        super().__init__(criterion, drop_high_loss, ramp_epochs)
        self.beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))

    def per_sample(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        lam = float(self.beta.sample())
        perm = torch.randperm(batch.x.shape[0]).to(batch.x.device)
        logits = net(lam * batch.x + (1 - lam) * batch.x[perm])
        return (lam * self.criterion(logits, batch.ids, batch.weights)
                + (1 - lam) * self.criterion(logits, batch.ids[perm], batch.weights[perm]))


def criterion_for(cfg: TrainConfig, task: str) -> Criterion:
    """`loss: auto` is cross-entropy to finetune and the sum of weighted cross-entropies to
    pretrain."""
    kind = cfg.loss if cfg.loss != "auto" else ("ce" if task == "finetune" else "softmax_sum")
    if kind == "ce" and cfg.soft_labels > 0:
        kind = "softmax_sum"  # soft targets: the weighted sum of CEs is CE against them
    if kind == "ce":
        return lambda logits, i, w: losses.cross_entropy(logits, i, w, cfg.label_smoothing,
                                                         reduction="none")
    if kind == "bce":
        return lambda logits, i, w: losses.multilabel_bce(logits, i, w, reduction="none")
    return lambda logits, i, w: losses.weighted_softmax_ce(logits, i, w, cfg.normalise_targets,
                                                           reduction="none")


def make_task(cfg: TrainConfig, task: str) -> Task:
    """The task object for `task` (finetune, pretrain_wt, pretrain_lw) under `cfg`."""
    drop = dict(drop_high_loss=cfg.drop_high_loss, ramp_epochs=cfg.drop_ramp_epochs)
    if cfg.mixup > 0:
        return Mixup(criterion_for(cfg, task), cfg.mixup, **drop)
    return Task(criterion_for(cfg, task), **drop)
