"""What a training draw costs on this machine, with these images: a short run of the real training
loop (`measure`), with the options every own-data training step shares (`train_config`)."""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import redirect_stderr
from dataclasses import replace
from pathlib import Path
from typing import Any

from webly.errors import WeblyError
from webly.own.plan import Rate, backbone_for


def train_config(size: int, batch: int, **over: Any) -> Any:
    """The training options every step of the own-data recipe shares (the benchmarks' proven
    settings for small-image training, lr scaled linearly from 0.1 at batch 128)."""
    from webly.training.config import TrainConfig

    small = size <= 64
    base = {"backbone": backbone_for(size), "img_size": size,
            "augment": "pad_crop" if small else "resized_crop", "in_memory": small,
            "crop_pct": 1.0 if small else 0.875, "batch_size": batch, "accum_steps": 1,
            "lr": round(0.1 * batch / 128, 6), "weight_decay": 5e-4, "schedule": "cosine",
            "warmup_epochs": 0.5, "workers": 0 if small else min(4, os.cpu_count() or 1),
            "log_every": 50, "seed": 0, "export": "best"}
    return replace(TrainConfig(), **{**base, **over})


def measure(manifest_path: Path, size: int, batch: int) -> Rate:
    """A short run of the real training loop on the real images: seconds a draw, from the plan's
    estimate after its first steps (`webly.training.plan`), and seconds an image decode."""
    import numpy as np
    import scipy.sparse as sp

    from webly.data.images import resize_uint8, try_decode
    from webly.data.manifest import Manifest
    from webly.training.engine import train
    from webly.training.plan import ESTIMATE_AFTER, WARM_STEPS
    from webly.training.trainsets import finetune_data

    m = Manifest(manifest_path)
    data = finetune_data(m)
    steps = WARM_STEPS + ESTIMATE_AFTER + 1
    n = min(len(data.rows), batch * (steps + 2))
    pick = np.linspace(0, len(data.rows) - 1, n).astype(np.int64)
    sub = replace(data, rows=data.rows[pick], targets=data.targets[pick],
                  membership=sp.csc_matrix(data.membership.tocsr()[pick]),
                  val_rows=data.val_rows[:0], val_labels=data.val_labels[:0])
    paths = m.read(["path"]).column(0)
    t0 = time.perf_counter()
    for row in sub.rows[:64]:
        img, _ = try_decode(m.image_path(paths[int(row)].as_py()))
        if img is not None:
            resize_uint8(img, (size, size))
    decode_s = (time.perf_counter() - t0) / min(64, len(sub.rows))
    cfg = train_config(size, batch, epochs=1, samples_per_epoch=batch * (steps + 1),
                       max_steps=steps, tensorboard=False, export="last",
                       warmup_epochs=0.0)
    # the short run's own plan and progress (and its few-steps warning) go to a log, not the user
    log = Path(manifest_path).parent.parent / f"measure_{size}px.log"
    with tempfile.TemporaryDirectory() as tmp, open(log, "w") as f, redirect_stderr(f):
        summary = train(sub, cfg, Path(tmp) / "measure", task="finetune")
    plan = summary["plan"]
    if not plan.get("seconds_per_step"):
        raise WeblyError(f"could not time the training loop ({steps} steps of {batch})")
    train_s = plan["seconds_per_step"] / batch
    return Rate(cfg.backbone, size, train_s, decode_s)
