"""What a training draw and a decode cost on this machine, with these images (`measure`): a few
optimizer steps of the backbone the plan would train, on a batch of the size it would train, and
a few of the real images decoded at that size. Seconds, not minutes: measuring must cost a small
share of the budget it plans (a 5-minute budget leaves it 15 s)."""

from __future__ import annotations

import time
from pathlib import Path

from webly.app.own.settings import Measured, backbone_for
from webly.core.errors import WeblyError

WARM = 2  # steps left out of the timing (allocator and thread-pool warm-up)
TIMED = 3  # steps timed
DECODES = 24  # images decoded at the size, timed


def step_seconds(backbone: str, size: int, batch: int, classes: int) -> float:
    """Seconds one optimizer step takes: forward, loss, backward and SGD with momentum on
    random pixels, in the memory format the engine uses (the loader's share is the decode's)."""
    import torch
    import torch.nn.functional as F

    from webly.training.models import create_backbone, param_groups, uses_channels_last

    fmt = torch.channels_last if uses_channels_last(backbone) else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    model = create_backbone(backbone, classes).to(memory_format=fmt).train()
    opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, generator=gen).to(memory_format=fmt)
    y = torch.randint(0, classes, (batch,), generator=gen)
    t0 = 0.0
    for i in range(WARM + TIMED):
        if i == WARM:
            t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / TIMED


def decode_seconds(manifest_path: Path, size: int) -> float:
    """Seconds a training image takes to decode at `size` (JPEG draft scaling included) and be
    resized to it: the mean over `DECODES` images spread over the training split."""
    import pyarrow.compute as pc

    from webly.data.images import resize_uint8, try_decode
    from webly.data.manifest import Manifest

    m = Manifest(manifest_path)
    t = m.read(["path", "split"])
    paths = t.filter(pc.equal(t["split"], "train"))["path"].to_pylist()
    if not paths:
        raise WeblyError(f"{manifest_path}: no training images to measure")
    pick = paths[:: max(len(paths) // DECODES, 1)][:DECODES]
    t0 = time.perf_counter()
    for p in pick:
        img, _ = try_decode(m.image_path(p), min_short_side=size)
        if img is not None:
            resize_uint8(img, (size, size))
    return (time.perf_counter() - t0) / len(pick)


def measure(manifest_path: Path, size: int, batch: int, backbone: str = "") -> Measured:
    """Seconds a training draw and a decode cost at `size` with `batch` on `backbone` (default:
    the one the plan trains at that size) (module docstring)."""
    from webly.data.manifest import Manifest

    backbone = backbone or backbone_for(size)
    classes = Manifest(manifest_path).num_classes
    per_step = step_seconds(backbone, size, batch, classes)
    return Measured(backbone, size, per_step / batch, decode_seconds(manifest_path, size))
