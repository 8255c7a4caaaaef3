"""The training options (`TrainConfig`) and what follows from them alone: the learning rate at a
step, the batch per rank, the autocast type, and which options a resumed run must share."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from webly.core.config import check_choices, opt
from webly.core.errors import WeblyError
from webly.data.folds import parse_fold

SMALL_IMAGE = 64  # px: up to this size, augment auto pads and crops the whole image
MAX_AUTO_WORKERS = 4


def loader_workers(setting: int) -> int:
    """DataLoader workers: `setting`, or for -1 the cores this process may use shared among the
    ranks on this machine (torchrun's LOCAL_WORLD_SIZE), at most MAX_AUTO_WORKERS: more workers
    than cores only make the loader and the training step fight for them."""
    if setting >= 0:
        return setting
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    mine = (cores or 1) // max(ranks, 1)
    return min(MAX_AUTO_WORKERS, mine) if mine > 1 else 0  # one core: load in the process


@dataclass
class TrainConfig:
    backbone: str = opt("resnest101e", "timm model name (built without downloads)")
    pretrained: str | None = opt(None, "what to finetune from, all weights but the last layer: a "
                                       "training run folder, a .safetensors file, a checkpoint "
                                       "or state dict (.pt), or a timm model name (its "
                                       "pretrained weights, through timm's hub: needs the "
                                       "network)")
    continue_from: str | None = opt(None,
                                    "what to continue from with all weights (large-resolution "
                                    "stage): a run folder, its model.safetensors or a ckpt/*.pt")
    img_size: int = opt(224, "training crop size")
    crop_scale: float = opt(0.08,
                            "smallest area fraction of the random-resized crop (0.08: ImageNet's; "
                            "larger for 32x32 images)")
    augment: Literal["auto", "resized_crop", "pad_crop"] = opt(
        "auto", "training augmentation: random-resized crop + flip, or (small images) flip + a "
                "crop of the image reflect-padded by img_size/8; auto: pad_crop up to "
                f"{SMALL_IMAGE} px, else resized_crop")
    in_memory: bool = opt(False, "decode every training image once into memory (small images "
                                 "such as CIFAR's: no decoding per epoch)")
    leave_out_fold: str = opt("", "'i/k': train without the i-th of k folds of the training "
                                  "images, for out-of-fold pseudo-labels (webly.data.folds)")
    soft_labels: float = opt(0.0, "finetune --labels: weight of the labeller's soft targets "
                                  "(a labels file written with --soft-k) against its hard label")
    mixup: float = opt(0.0, "mixup alpha: train on blends of two images and of their targets, "
                            "which resists label noise (0: off)")
    drop_high_loss: float = opt(0.0, "fraction of each micro-batch with the highest losses left "
                                     "out of the gradient (small-loss selection against wrong "
                                     "labels; 0: off)")
    drop_ramp_epochs: float = opt(1.0, "epochs over which drop_high_loss ramps up from 0")
    elr: float = opt(0.0, "early-learning regularisation weight (ELR: pull each image's "
                          "prediction towards the running average of its past ones; 0: off)")
    elr_beta: float = opt(0.7, "ELR: momentum of each image's running-average target")
    unlabeled_weight: float = opt(0.0, "consistency on the training images without a label "
                                       "(dropped by pseudo-label): weight of the loss that "
                                       "teaches a strong view the model's confident prediction "
                                       "on a weak one (FixMatch-style; 0: off; needs in_memory "
                                       "and pad_crop)")
    unlabeled_ratio: float = opt(1.0, "unlabelled images drawn per labelled image in a "
                                      "micro-batch (each costs a forward + backward and a "
                                      "forward)")
    unlabeled_threshold: float = opt(0.95, "confidence the weak view's prediction needs to "
                                           "become a target")
    crop_pct: float = opt(0.0,
                          "evaluation centre crop: resize to img_size/crop_pct, crop img_size "
                          "(1.0: whole image; 0: 1.0 with pad_crop, else 0.875)")
    epochs: int = opt(30, "epochs (the WebVision recipes: 180, the lr decayed every 90)")
    samples_per_epoch: int = opt(0, "samples drawn per epoch (0: the number of training images)")
    batch_size: int = opt(256, "global batch per micro-step, split over ranks (the seed's 256)")
    accum_steps: int = opt(1, "micro-steps per optimizer step (the WebVision recipes: 8, the "
                              "seed's)")
    lr: float = opt(0.0, "base learning rate (0: 0.1 x effective batch / 256, the linear "
                         "scaling rule; the WebVision recipes: the seed's 0.01)")
    momentum: float = opt(0.9, "SGD momentum")
    nesterov: bool = opt(False, "Nesterov momentum (airbench's)")
    norm_lr: float = opt(1.0, "learning rate of norms and biases, as a multiple of the weights' "
                              "(airbench: 64 for its BatchNorm biases)")
    weight_decay: float = opt(1e-4, "weight decay (not on norms and biases)")
    schedule: Literal["step", "cosine", "constant"] = opt(
        "cosine", "lr schedule: cosine ends at 0 where the run ends (the WebVision recipes: step)")
    step_epochs: int = opt(90, "step schedule: decay every this many epochs")
    gamma: float = opt(0.1, "step schedule: decay factor")
    warmup_epochs: float = opt(0.0, "linear warmup (cosine and step)")
    shards: str | None = opt(None,
                             "read training images from `webly shard` tar shards in this folder")
    sampler: Literal["balanced", "shuffle"] = opt("balanced",
                                                  "balanced (class/keyword-balanced) or shuffle "
                                                  "(natural)")
    balance: float = opt(1.0, "balanced sampler: 1 uniform over classes, 0 natural frequencies")
    loss: Literal["auto", "ce", "softmax_sum", "bce", "gce"] = opt(
        "auto", "auto: ce to finetune, softmax_sum (WT/LW) to pretrain; gce: generalised CE, "
                "robust to wrong labels; bce for comparison")
    gce_q: float = opt(0.7, "gce: exponent q in (0, 1] (towards 0: CE; 1: mean absolute error)")
    normalise_targets: bool = opt(False, "divide the multi-label loss by the number of targets")
    label_smoothing: float = opt(0.0, "finetuning cross-entropy label smoothing")
    max_targets: int = opt(32, "targets kept per image (largest weights first)")
    amp: Literal["auto", "bf16", "fp16", "off"] = opt("auto", "auto: bf16 on GPU, off on CPU")
    channels_last: Literal["auto", "on", "off"] = opt("auto", "auto: all but ResNeSt")
    compile: bool = opt(False, "torch.compile the model")
    export: Literal["last", "best"] = opt(
        "last", "the weights model.safetensors holds: the last epoch's, or those of the epoch "
                "with the best val_top1 (a run that memorises wrong labels peaks before its end; "
                "with noisy validation labels, the choice a user can make)")
    ema: float = opt(0.0, "EMA decay of the weights (0: off)")
    lookahead: float = opt(0.0, "lookahead weight averaging (airbench's: 0.95): every "
                                "5 optimizer steps the weights move into a running average "
                                "of themselves and carry on from it, its decay this to the 5th "
                                "times the share of the run done, cubed; the run ends on the "
                                "average (0: off)")
    sync_bn: bool = opt(False, "SyncBatchNorm across ranks")
    drop_rate: float = opt(0.0, "dropout before the classifier")
    workers: int = opt(-1, "DataLoader worker processes per rank (-1: what this machine has, "
                           "at most 4: its cores shared by the ranks on it)")
    seed: int = opt(0, "random seed")
    ckpt_every_steps: int = opt(0,
                                "also checkpoint every this many optimizer steps (0: epochs only)")
    keep_last: int = opt(3, "step checkpoints kept")
    max_steps: int = opt(0, "stop after this many optimizer steps (0: no limit)")
    time_budget_s: float = opt(0.0, "train for this many seconds (validation included; a resumed "
                                    "run counts the time before it) and stop: the lr schedule "
                                    "follows the share of it spent, or of the epochs run, "
                                    "whichever is further; epochs is the most it may run (0: "
                                    "off; the schedule then depends on the machine's speed)")
    max_bad_fraction: float = opt(0.01,
                                  "stop when more than this fraction of the images cannot be "
                                  "decoded")
    log_every: int = opt(10, "optimizer steps between metric lines")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where to train")
    dist_timeout_s: int = opt(600, "a dead rank fails the job after this many seconds")
    tensorboard: bool = opt(True, "write TensorBoard scalars under RUN/tb")

    def concrete_augment(self) -> str:
        if self.augment != "auto":
            return self.augment
        return "pad_crop" if self.img_size <= SMALL_IMAGE else "resized_crop"

    def concrete(self) -> TrainConfig:
        """A validated copy with every automatic value decided: augment, crop_pct and lr (see
        their help). What a run records and trains with."""
        self.validate()
        augment = self.concrete_augment()
        crop_pct = self.crop_pct or (1.0 if augment == "pad_crop" else 0.875)
        lr = self.lr or 0.1 * self.batch_size * self.accum_steps / 256
        return replace(self, augment=augment, crop_pct=crop_pct, lr=lr)

    def validate(self) -> None:
        check_choices(self, "train")
        checks = [
            (min(self.img_size, self.epochs, self.batch_size, self.accum_steps) >= 1,
             "img_size, epochs, batch_size and accum_steps must be positive"),
            (0 < self.crop_scale <= 1 and 0 <= self.crop_pct <= 1,
             "crop_scale must be in (0, 1], crop_pct in [0, 1] (0: automatic)"),
            (0 <= self.max_bad_fraction <= 1, "max_bad_fraction must be within [0, 1]"),
            (self.lr >= 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0,
             "lr >= 0 (0: automatic), 0 <= momentum < 1"),
            (0 <= self.balance <= 1 and 0 <= self.ema < 1, "balance in [0, 1], ema in [0, 1)"),
            (0 <= self.lookahead < 1 and self.norm_lr > 0,
             "lookahead must be within [0, 1) and norm_lr positive"),
            (not (self.ema and self.lookahead), "ema and lookahead are two weight averages: "
                                                "choose one"),
            (self.mixup >= 0, "mixup (alpha) must not be negative"),
            (0 <= self.soft_labels <= 1, "soft_labels must be within [0, 1]"),
            (self.elr >= 0 and 0 <= self.elr_beta < 1, "elr >= 0 and elr_beta in [0, 1)"),
            (0 < self.gce_q <= 1, "gce_q must be within (0, 1]"),
            (self.unlabeled_weight >= 0 and self.unlabeled_ratio > 0
             and 0 <= self.unlabeled_threshold <= 1,
             "unlabeled_weight >= 0, unlabeled_ratio > 0, unlabeled_threshold in [0, 1]"),
            (not self.unlabeled_weight or (self.in_memory and self.concrete_augment()
                                           == "pad_crop"),
             "unlabeled_weight needs in_memory and augment pad_crop (its views are made "
             "a batch at a time from the images in memory)"),
            (0 <= self.drop_high_loss < 1 and self.drop_ramp_epochs >= 0,
             "drop_high_loss must be within [0, 1) and drop_ramp_epochs not negative"),
            (not (self.in_memory and self.shards), "in_memory reads image files: not with shards"),
            (min(self.samples_per_epoch, self.max_steps, self.ckpt_every_steps,
                 self.time_budget_s) >= 0
             and self.workers >= -1, "counts must not be negative (workers -1: automatic)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise WeblyError(f"train: {msg}")
        if self.leave_out_fold:
            parse_fold(self.leave_out_fold, "train.leave_out_fold")


def per_rank_batch(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise WeblyError(f"batch_size {batch_size} does not divide over {world_size} ranks: "
                         f"use a multiple of {world_size}")
    return batch_size // world_size


def lr_at(cfg: TrainConfig, step: float, steps_per_epoch: int, base_lr: float) -> float:
    """Learning rate for optimizer step `step` (0-based), a pure function (resumption needs no
    state)."""
    epoch = step / steps_per_epoch
    warm = cfg.warmup_epochs
    if warm and epoch < warm:
        return base_lr * (epoch + 1 / steps_per_epoch) / warm
    if cfg.schedule == "step":
        return base_lr * cfg.gamma ** int(epoch // cfg.step_epochs)
    if cfg.schedule == "cosine":
        t = (epoch - warm) / max(cfg.epochs - warm, 1e-9)
        return base_lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return base_lr


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[cfg.amp]


# Options a resumed run must share with its checkpoint: they fix the model, the sample stream and
# the step count. Others (epochs, lr, workers, logging...) may change, with a warning.
RESUME_MUST_MATCH = ("task", "backbone", "img_size", "batch_size", "accum_steps",
                     "samples_per_epoch",
                     "sampler", "balance", "seed", "max_targets", "shards", "loss", "ema",
                     "lookahead",
                     "leave_out_fold", "elr",
                     "unlabeled_weight", "unlabeled_ratio")


def check_resume_config(saved: dict[str, Any], now: dict[str, Any], num_classes: int,
                        saved_classes: int, force: bool) -> list[str]:
    """Differences between a checkpoint's config and this run's: an error for incompatible ones
    (unless `force`), returned as warnings otherwise. An option the checkpoint predates counts
    as its default (what that run trained with)."""
    from dataclasses import MISSING, fields

    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    saved = {**{k: v for k, v in defaults.items() if k in now}, **saved}
    diffs = {k: (saved.get(k),
                 now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}
    if saved_classes != num_classes:
        raise WeblyError(f"cannot resume: the checkpoint has {saved_classes} classes, this data "
                         f"{num_classes}")
    bad = {k: v for k, v in diffs.items() if k in RESUME_MUST_MATCH}
    if bad and not force:
        raise WeblyError("cannot resume from a checkpoint made with another config: " + "; ".join(
            f"{k} {a!r} -> {b!r}" for k, (a, b) in bad.items()) + " (use --force to resume anyway)")
    return [f"{k}: {a!r} -> {b!r}" for k, (a, b) in diffs.items()]


