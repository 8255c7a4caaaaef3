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
import torch.distributed as dist
from torch import nn

from webly.core.errors import WeblyError
from webly.data.images import normalize_batch, pad_crop_batch, strong_augment_batch
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
    micro_step: int = 0  # micro-batches run before this one (over the whole run)


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
        return self.reduce(self.per_sample(net, batch), batch.epoch)

    def reduce(self, per: torch.Tensor, epoch: float) -> torch.Tensor:
        """The mean of per-sample losses, without the highest `drop_rate(epoch)` of them."""
        drop = int(self.drop_rate(epoch) * per.numel())
        if drop == 0:
            return per.mean()
        return per.topk(per.numel() - drop, largest=False, sorted=False).values.mean()

    def metrics(self) -> dict[str, float]:
        """What the method reports at the end of an epoch (logged with the epoch's metrics)."""
        return {}

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


class EarlyLearning(Task):
    """Early-learning regularisation (ELR; Liu et al. 2020, NeurIPS): a network fits the clean
    labels before the wrong ones, so a running average of its own predictions is a target the
    wrong labels have not yet corrupted. Each image keeps t = beta t + (1 - beta) p (p its
    softmax, detached); the loss adds lam * log(1 - <p, t>), whose gradient pulls p towards t
    and so holds back memorising a label the early network disagreed with. One forward pass, no
    extra compute; the targets (images x classes, float32) live on the training device and in
    checkpoints, so a resumed run continues exactly. Under DDP the ranks share each step's
    updates (all_gather), so every rank holds the same targets.

    The targets are dense: meant for tens of classes (CIFAR-sized sets), refused past
    `MAX_ELEMENTS` (a WebVision-sized set would need 16M x 5,000 of them)."""

    MAX_ELEMENTS = 1 << 28  # 1 GiB of float32

    def __init__(self, criterion: Criterion, n_samples: int, num_classes: int, lam: float,
                 beta: float = 0.7, **drop: Any) -> None:
        super().__init__(criterion, **drop)
        if n_samples * num_classes > self.MAX_ELEMENTS:
            raise WeblyError(f"train: elr keeps {n_samples} x {num_classes} targets, over "
                             f"{self.MAX_ELEMENTS}; it is for small class counts")
        self.lam, self.beta = lam, beta
        self.targets = torch.zeros(n_samples, num_classes)

    def per_sample(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        if batch.positions is None:
            raise WeblyError("elr needs each batch's dataset positions")
        logits = net(batch.x)
        p = torch.softmax(logits.float(), dim=1).clamp(1e-4, 1 - 1e-4)
        pos, upd = batch.positions, (p / p.sum(1, keepdim=True)).detach()
        if dist.is_available() and dist.is_initialized():
            pos, upd = _gather(pos), _gather(upd)
        if self.targets.device != p.device:
            self.targets = self.targets.to(p.device)
        self.targets[pos] = self.beta * self.targets[pos] + (1 - self.beta) * upd
        t = self.targets[batch.positions]
        reg = torch.log(1 - (t * p).sum(1))
        return self.criterion(logits, batch.ids, batch.weights) + self.lam * reg

    def state_dict(self) -> dict[str, Any]:
        return {"elr_targets": self.targets.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "elr_targets" in state:
            if state["elr_targets"].shape != self.targets.shape:
                raise WeblyError(f"checkpoint's elr targets {tuple(state['elr_targets'].shape)} "
                                 f"do not fit {tuple(self.targets.shape)}")
            self.targets = state["elr_targets"].to(self.targets.device)


class Consistency(Task):
    """Learning from the training images without a label (FixMatch-style: Sohn et al. 2020; the
    use DivideMix makes of the images it judges mislabelled, with their labels removed). Each
    micro-batch of B labelled images draws ratio x B unlabelled ones; the model predicts a weak
    view (flip + pad-crop) without gradients, and where its confidence reaches `threshold` that
    class becomes the target of a strong view (`strong_augment_batch`). The loss is the
    labelled loss + weight x the mean over the unlabelled draws of the masked cross-entropy. The
    labelled and strong views share one forward pass (one set of BatchNorm statistics).

    The unlabelled images are a uint8 tensor [U, 3, S, S] in memory at the training size (small
    images; `in_memory` is required). Draws and views are a pure function of (seed, rank,
    micro-step), so a resumed run draws what the uninterrupted one would, with no state."""

    def __init__(self, criterion: Criterion, images: torch.Tensor, weight: float, ratio: float,
                 threshold: float, seed: int, **drop: Any) -> None:
        super().__init__(criterion, **drop)
        if not len(images):
            raise WeblyError("unlabeled_weight: every training image has a label; consistency "
                             "training needs a labels file that drops some (webly pseudo-label)")
        self.images, self.weight, self.ratio = images, weight, ratio
        self.threshold, self.seed = threshold, seed
        self.mask_rate = torch.zeros(())  # share of the last draw confident enough (no sync)

    def metrics(self) -> dict[str, float]:
        return {"unlabeled_confident": float(self.mask_rate)}

    def unlabeled_loss(self, net: nn.Module, logits: torch.Tensor, weak: torch.Tensor
                       ) -> torch.Tensor:
        with torch.no_grad():
            p = torch.softmax(net(weak).float(), dim=1)
        conf, target = p.max(1)
        mask = (conf >= self.threshold).float()
        self.mask_rate = mask.mean().detach()
        ce = nn.functional.cross_entropy(logits.float(), target, reduction="none")
        return (ce * mask).mean()

    def loss(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        g = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + rank) * 1_000_000_007 + batch.micro_step)
        n = max(1, round(self.ratio * batch.x.shape[0]))
        # the views are made where the model runs (random draws stay on the CPU generator)
        u = self.images[torch.randint(0, len(self.images), (n,), generator=g)].to(batch.x.device)
        weak = pad_crop_batch(u, g)
        strong = strong_augment_batch(weak, g)
        fmt = (torch.channels_last if batch.x.is_contiguous(memory_format=torch.channels_last)
               else torch.contiguous_format)

        def norm(v: torch.Tensor) -> torch.Tensor:
            return normalize_batch(v).to(batch.x.dtype).contiguous(memory_format=fmt)

        logits = net(torch.cat([batch.x, norm(strong)]))
        b = batch.x.shape[0]
        per = self.criterion(logits[:b], batch.ids, batch.weights)
        return (self.reduce(per, batch.epoch)
                + self.weight * self.unlabeled_loss(net, logits[b:], norm(weak)))


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's `x` (equal shapes: ranks draw equal micro-batches), rank order; all_gather
    of a list works on gloo (CPU) as well as NCCL."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def criterion_for(cfg: TrainConfig, task: str) -> Criterion:
    """`loss: auto` is cross-entropy to finetune and the sum of weighted cross-entropies to
    pretrain."""
    kind = cfg.loss if cfg.loss != "auto" else ("ce" if task == "finetune" else "softmax_sum")
    if kind == "ce" and cfg.soft_labels > 0:
        kind = "softmax_sum"  # soft targets: the weighted sum of CEs is CE against them
    if kind == "ce":
        return lambda logits, i, w: losses.cross_entropy(logits, i, w, cfg.label_smoothing,
                                                         reduction="none")
    if kind == "gce":
        return lambda logits, i, w: losses.generalized_ce(logits, i, w, cfg.gce_q,
                                                          reduction="none")
    if kind == "bce":
        return lambda logits, i, w: losses.multilabel_bce(logits, i, w, reduction="none")
    return lambda logits, i, w: losses.weighted_softmax_ce(logits, i, w, cfg.normalise_targets,
                                                           reduction="none")


def make_task(cfg: TrainConfig, task: str, n_samples: int = 0, num_classes: int = 0,
              unlabeled: torch.Tensor | None = None) -> Task:
    """The task object for `task` (finetune, pretrain_wt, pretrain_lw) under `cfg`; ELR needs the
    dataset's size and class count, consistency the unlabelled images."""
    drop = dict(drop_high_loss=cfg.drop_high_loss, ramp_epochs=cfg.drop_ramp_epochs)
    if cfg.unlabeled_weight > 0:
        if cfg.elr > 0 or cfg.mixup > 0 or task != "finetune":
            raise WeblyError("train: unlabeled_weight is for finetuning, without elr or mixup")
        if unlabeled is None:
            raise WeblyError("train: unlabeled_weight needs the unlabelled images")
        return Consistency(criterion_for(cfg, task), unlabeled, cfg.unlabeled_weight,
                           cfg.unlabeled_ratio, cfg.unlabeled_threshold, cfg.seed, **drop)
    if cfg.elr > 0:
        if cfg.mixup > 0:
            raise WeblyError("train: elr and mixup together are not supported")
        return EarlyLearning(criterion_for(cfg, task), n_samples, num_classes, cfg.elr,
                             cfg.elr_beta, **drop)
    if cfg.mixup > 0:
        return Mixup(criterion_for(cfg, task), cfg.mixup, **drop)
    return Task(criterion_for(cfg, task), **drop)
