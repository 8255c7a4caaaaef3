"""The settings every own-data step shares, from the image size and the data's size: backbone,
batch, training options, and what a measurement of the training loop found (`Measured`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from webly.training.config import SMALL_IMAGE, TrainConfig


def backbone_for(size: int) -> str:
    """Small images: webly's CIFAR ResNet-9; larger: timm's ResNet-18 (trained from scratch on
    a user's 1k-1M images, a small network is the sound default)."""
    return "cifar_resnet9" if size <= SMALL_IMAGE else "resnet18"


def batch_for(images: int) -> int:
    """128 (the benchmarks' batch), smaller for small data: at least ~40 steps an epoch."""
    return int(min(128, max(16, 2 ** math.floor(math.log2(max(images / 40, 1))))))


@dataclass
class Measured:
    """Seconds a training draw costs (measured) and a decode (measured), at one size."""

    backbone: str
    size: int
    train_s: float
    decode_s: float


FINETUNE_LR = 0.01  # at batch 128, from pretrained weights: the seed's finetune lr
# the warmup lasts at least this many optimizer steps: half an epoch is 175 steps of CIFAR-10N but
# 27 of a 3,459-photo folder, where lr 0.05 at batch 64 then diverged (loss 3.6 after an epoch at
# 48 px; with a 2-epoch warmup, or lr 0.02, 59-61% on the holdout after 6 epochs instead of 40%)
WARMUP_STEPS = 100


def warmup_for(draws_per_epoch: int, batch: int) -> float:
    """Warmup epochs: half an epoch, or `WARMUP_STEPS` optimizer steps when that is longer."""
    return round(max(0.5, WARMUP_STEPS / max(draws_per_epoch // batch, 1)), 3)


def in_memory(size: int) -> bool:
    """Small images train decoded once into memory (pad-crop); larger ones from their files."""
    return size <= SMALL_IMAGE


def train_config(size: int, batch: int, backbone: str = "", pretrained: bool = False,
                 **over: Any) -> Any:
    """The training options every step of the own-data recipe shares (the benchmarks' proven
    settings for small-image training, lr scaled linearly from 0.1 at batch 128; from
    pretrained weights the seed's finetune lr, 0.01 at batch 128, on `backbone`)."""
    small = in_memory(size)
    lr = (FINETUNE_LR if pretrained else 0.1) * batch / 128
    base = {"backbone": backbone or backbone_for(size), "img_size": size,
            "augment": "pad_crop" if small else "resized_crop", "in_memory": small,
            "crop_pct": 1.0 if small else 0.875, "batch_size": batch, "accum_steps": 1,
            "lr": round(lr, 6), "weight_decay": 5e-4, "schedule": "cosine",
            "warmup_epochs": 0.5, "workers": 0 if small else -1,
            "log_every": 50, "seed": 0, "export": "best"}
    return replace(TrainConfig(), **{**base, **over})
