"""What the engine does to the weights beside the optimizer's step: lookahead's running average
(airbench's weight averaging), and a first layer set from the training images (airbench's
whitening)."""

from __future__ import annotations

import torch
from torch import nn

from webly.data.images import normalize_batch
from webly.training.trainsets import TargetDataset

LOOKAHEAD_EVERY = 5  # optimizer steps between lookahead's pulls (airbench's)
WHITEN_IMAGES = 5000  # training images a whitening first layer is set from (airbench's)


def averaged_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if v.dtype.is_floating_point}


@torch.no_grad()
def pull_to_average(model: nn.Module, average: dict[str, torch.Tensor], decay: float) -> None:
    """Lookahead: the average moves towards the weights by 1 - decay, then the weights (and the
    BatchNorm statistics) become the average; decay 1 puts the average into the model."""
    for k, v in model.state_dict().items():
        if k in average:
            average[k].lerp_(v, 1 - decay)
            v.copy_(average[k])


@torch.no_grad()
def init_from_data(model: nn.Module, dataset: TargetDataset, device: torch.device,
                   fmt: torch.memory_format) -> None:
    """A backbone whose first layer is set from the data (`init_from_images`: airbench's
    whitening) gets the first WHITEN_IMAGES training images as the training transform shows them,
    normalised: the same on every rank."""
    n = min(WHITEN_IMAGES, len(dataset))
    x = torch.stack([dataset[(i, i)][0] for i in range(n)])
    model.init_from_images(normalize_batch(x.to(device)).contiguous(memory_format=fmt))
