"""Backbones from timm by name (built here without downloads: `--pretrained NAME` is what fetches
timm's weights, `webly.training.checkpoints.pretrained_weights`), and finetuning's weight transfer.

`load_all_but_head` copies every weight of a pretrained checkpoint into a new model except
its last linear layer, which stays freshly initialised for the target classes (the seed's
finetuning). Any other missing, unexpected or mis-shaped key is an error naming the layers:
nothing is silently skipped.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

from webly.core.errors import WeblyError


class CifarResNet9(nn.Module):
    """A narrow ResNet-9 (Page's DAWNBench design) for 32x32 inputs, which timm's ImageNet
    backbones downsample to nothing: full resolution stem, three 2x poolings, two residual
    blocks, global max pooling. 24M multiply-adds an image at width 16 (torch's FlopCounterMode)."""

    def __init__(self, num_classes: int, width: int = 16, drop_rate: float = 0.0) -> None:
        super().__init__()

        def cbr(i: int, o: int, pool: bool = False) -> nn.Sequential:
            layers = [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o),
                      nn.ReLU(inplace=True)]
            return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))

        c = width
        self.stem = nn.Sequential(cbr(3, c), cbr(c, 2 * c, pool=True))
        self.res1 = nn.Sequential(cbr(2 * c, 2 * c), cbr(2 * c, 2 * c))
        self.mid = nn.Sequential(cbr(2 * c, 4 * c, pool=True), cbr(4 * c, 8 * c, pool=True))
        self.res2 = nn.Sequential(cbr(8 * c, 8 * c), cbr(8 * c, 8 * c))
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(8 * c, num_classes)
        self.pretrained_cfg = {"classifier": "fc"}  # what timm models carry; head_prefix reads it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.res1(x)
        x = self.mid(x)
        x = x + self.res2(x)
        return self.fc(self.drop(torch.amax(x, dim=(2, 3))))


# webly's own backbones, by name, beside timm's
LOCAL_BACKBONES = {"cifar_resnet9": lambda n, **kw: CifarResNet9(n, 16, **kw),
                   "cifar_resnet9_w24": lambda n, **kw: CifarResNet9(n, 24, **kw)}


def create_backbone(name: str, num_classes: int, **kwargs) -> nn.Module:
    """`timm.create_model(name, pretrained=False, num_classes=...)` with a helpful unknown-name
    error; webly's few small-image backbones (`LOCAL_BACKBONES`) by the same call."""
    if name in LOCAL_BACKBONES:
        return LOCAL_BACKBONES[name](num_classes, **kwargs)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, [*timm.list_models(), *LOCAL_BACKBONES], n=5,
                                          cutoff=0.5)
        raise WeblyError(f"unknown backbone {name!r}; close timm names: "
                         f"{', '.join(close) or 'none'}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def head_prefix(model: nn.Module) -> str:
    """State-dict prefix of the last linear layer ('fc', 'classifier', 'head', 'head.fc', ...)."""
    name = getattr(model, "pretrained_cfg", {}).get("classifier")
    if not name:
        raise WeblyError(f"{type(model).__name__}: timm names no classifier layer to replace")
    return name


def uses_channels_last(backbone: str, setting: str = "auto") -> bool:
    """channels_last helps ResNet/ResNeXt/EfficientNet; timm's published numbers show ResNeSt
    training about 2.7x slower with it (its split-attention reshapes), so 'auto' skips ResNeSt."""
    if setting in ("on", "off"):
        return setting == "on"
    return not backbone.startswith("resnest")


@dataclass
class TransferReport:
    loaded: int
    reinitialised: list[str]


def load_all_but_head(model: nn.Module, state: dict[str, torch.Tensor]) -> TransferReport:
    """Copy `state` into `model` except the classifier; error on any other mismatch."""
    head = head_prefix(model)
    is_head = lambda k: k == head or k.startswith(head + ".")  # noqa: E731
    own = {k: v for k, v in model.state_dict().items() if not is_head(k)}
    theirs = {k: v for k, v in state.items() if not is_head(k)}
    missing = sorted(own.keys() - theirs.keys())
    unexpected = sorted(theirs.keys() - own.keys())
    shapes = sorted(k for k in own.keys() & theirs.keys() if own[k].shape != theirs[k].shape)
    if missing or unexpected or shapes:
        parts = []
        kinds = (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes))
        for label, keys in kinds:
            if keys:
                parts.append(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} "
                             f"({len(keys)})")
        raise WeblyError("pretrained checkpoint does not fit this backbone (another backbone?); "
                         + "; ".join(parts))
    model.load_state_dict(theirs, strict=False)
    return TransferReport(loaded=len(theirs),
                          reinitialised=sorted(k for k in model.state_dict() if is_head(k)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The optimizer's groups: weight decay on weights, none on norms and biases (1-D)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
