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


class CifarAirNet(nn.Module):
    """airbench94's network (Jordan 2024, the fastest published CIFAR-10 training): a 2x2
    patch-whitening first layer, frozen, its filters set from the training images
    (`init_from_images`) and followed by GELU; three groups of conv -> 2x max-pool -> BN -> GELU ->
    conv -> BN -> GELU; global max pooling; a linear head without bias, its logits scaled by 1/9.
    Convolutions start as the identity on their first channels (dirac), BatchNorm has no learned
    scale and a fast running average (0.6 of the past a step). 118M multiply-adds an image at
    32 px and widths 64, 256, 256."""

    WHITEN_EPS = 5e-4

    def __init__(self, num_classes: int, widths: tuple[int, int, int] = (64, 256, 256),
                 drop_rate: float = 0.0, bn_momentum: float = 0.6, scaling: float = 1 / 9) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, bias=True)
        self.whiten.weight.requires_grad = False
        nn.init.zeros_(self.whiten.bias)

        def group(i: int, o: int) -> nn.Sequential:
            layers = [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.MaxPool2d(2),
                      nn.BatchNorm2d(o, momentum=1 - bn_momentum), nn.GELU(),
                      nn.Conv2d(o, o, 3, padding=1, bias=False),
                      nn.BatchNorm2d(o, momentum=1 - bn_momentum), nn.GELU()]
            for m in layers:
                if isinstance(m, nn.Conv2d):
                    nn.init.dirac_(m.weight.data[:m.weight.size(1)])
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad = False
            return nn.Sequential(*layers)

        self.body = nn.Sequential(group(24, widths[0]), group(widths[0], widths[1]),
                                  group(widths[1], widths[2]))
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(widths[2], num_classes, bias=False)
        self.scaling = scaling
        self.pretrained_cfg = {"classifier": "fc"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(nn.functional.gelu(self.whiten(x)))
        return self.fc(self.drop(torch.amax(x, dim=(2, 3)))) * self.scaling

    @torch.no_grad()
    def init_from_images(self, x: torch.Tensor) -> None:
        """The whitening filters from normalised training images: the eigenvectors of their 2x2
        patches' covariance scaled by 1/sqrt(eigenvalue + eps), and their negatives."""
        patches = x.float().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5)
        patches = patches.reshape(-1, 12).double()
        values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (vectors.T / torch.sqrt(values.clamp(min=0) + self.WHITEN_EPS)[:, None])
        filters = filters.reshape(12, 3, 2, 2).to(self.whiten.weight)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))


# webly's own backbones, by name, beside timm's
LOCAL_BACKBONES = {"cifar_resnet9": lambda n, **kw: CifarResNet9(n, 16, **kw),
                   "cifar_resnet9_w24": lambda n, **kw: CifarResNet9(n, 24, **kw),
                   "cifar_airbench": lambda n, **kw: CifarAirNet(n, (64, 256, 256), **kw),
                   "cifar_airbench_w32": lambda n, **kw: CifarAirNet(n, (32, 128, 128), **kw)}


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


def param_groups(model: nn.Module, weight_decay: float,
                 norm_lr: float = 1.0) -> list[dict[str, Any]]:
    """The optimizer's groups: weight decay on weights, none on norms and biases (1-D), whose
    learning rate is `norm_lr` times the weights' (`lr_scale`, applied with the schedule)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": norm_lr}]
