"""One cost model: multiply-adds per image, per step, and the time they take.

Every cost in webly is counted one way. A forward pass of one image through a backbone at a size
costs `macs_per_image` multiply-adds (torch's FlopCounterMode over the model on the meta device:
counted, not computed); a training draw costs `TRAIN_FACTOR` forward passes (forward and
backward); a prediction pass costs the forward passes of every test-time view it predicts
(`webly.inference.predict.view_sizes`, read off the views themselves). Time follows from a
`Rate`, multiply-adds a second of training work: measured on this machine by a short run of the
real training loop (the own-data plan), or from a table of GPU training rates in images a second
(`webly plan`). The benchmark harness counts a recipe's compute in the same multiply-adds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

TRAIN_FACTOR = 3.0  # a training draw costs about three forward passes (forward + backward)


@functools.cache  # plans and benchmarks ask again for a few (backbone, size) pairs
def macs_per_image(backbone: str, size: int, classes: int = 10) -> int:
    """Multiply-adds of one forward pass of one `size` x `size` image (FlopCounterMode counts two
    FLOPs a multiply-add). Counted on the meta device, so a 200-layer network costs no compute."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from webly.training.models import create_backbone

    with torch.device("meta"):
        model = create_backbone(backbone, classes).eval()
        x = torch.zeros(1, 3, size, size)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops() // 2


def train_macs(backbone: str, size: int, draws: float, classes: int = 10,
               draw_cost: float = 1.0) -> float:
    """A training step's multiply-adds: `draws` images (each `draw_cost` training passes: more
    than one with consistency training's unlabelled views)."""
    return draws * draw_cost * TRAIN_FACTOR * macs_per_image(backbone, size, classes)


@functools.cache  # read off real views (tensors): once per (tta, size), not per plan step
def _views(tta: str, size: int) -> tuple[int, ...]:
    from webly.inference.predict import view_sizes

    return tuple(view_sizes(tta, size))


def predict_macs(backbone: str, size: int, images: int, tta: str = "center",
                 classes: int = 10) -> float:
    """A prediction pass's multiply-adds: every image through every view `tta` predicts."""
    return images * sum(macs_per_image(backbone, v, classes) for v in _views(tta, size))


@dataclass(frozen=True)
class Rate:
    """Multiply-adds a second of training work (a draw counted as `TRAIN_FACTOR` forward passes, so
    a forward pass takes a third of a draw's time), and where the number comes from."""

    macs_s: float
    source: str

    def seconds(self, macs: float) -> float:
        return macs / self.macs_s

    @classmethod
    def of_training(cls, backbone: str, size: int, img_s: float, source: str,
                    classes: int = 10) -> Rate:
        """From a training rate in images a second of `backbone` at `size`."""
        return cls(img_s * TRAIN_FACTOR * macs_per_image(backbone, size, classes), source)
