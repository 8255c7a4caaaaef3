"""What a training draw costs on this machine, with these images: a short run of the real training
loop (`measure`), with the options every own-data training step shares (`train_config`)."""

from __future__ import annotations

import tempfile
import time
from contextlib import redirect_stderr
from dataclasses import replace
from pathlib import Path

from webly.app.own.settings import Measured, train_config
from webly.core.errors import WeblyError


def measure(manifest_path: Path, size: int, batch: int) -> Measured:
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
    return Measured(cfg.backbone, size, train_s, decode_s)
