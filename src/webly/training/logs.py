"""What a training run records: metrics.jsonl (a line per logged step and per epoch), TensorBoard
scalars, and the training-curve plot. Written by the primary rank only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from webly.core.files import save_figure


class MetricsLog:
    """metrics.jsonl (every step line and epoch line) and TensorBoard scalars, primary rank only."""

    def __init__(self, run: Path, primary: bool, tensorboard: bool) -> None:
        self.primary = primary
        # held open for the whole run (closed in close()); appending keeps resumed runs in one log
        self.file = open(run / "metrics.jsonl", "a") if primary else None  # noqa: SIM115
        self.tb = None
        if primary and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"))

    def _write(self, rec: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()

    def step(self, step: int, epoch: int, loss: float, lr: float, img_s: float) -> None:
        self._write({"step": step, "epoch": epoch, "loss": loss, "lr": lr, "img_s": round(img_s, 1),
                     "t": round(time.time(), 3)})
        if self.tb:
            for k, v in (("train/loss", loss), ("train/lr", lr), ("train/img_s", img_s)):
                self.tb.add_scalar(k, v, step)

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        self._write({"epoch_end": epoch, **values})
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(f"epoch/{k}", v, epoch)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


def plot_curves(run: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in recs if "step" in r]
    epochs = [r for r in recs if "epoch_end" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot([r["step"] for r in steps], [r["loss"] for r in steps])
    a.set(xlabel="optimizer step", ylabel="training loss", title="Loss")
    if epochs and "val_top1" in epochs[0]:
        b.plot([r["epoch_end"] for r in epochs], [r["val_top1"] for r in epochs], "o-",
               label="top-1")
        b.plot([r["epoch_end"] for r in epochs], [r["val_top5"] for r in epochs], "s-",
               label="top-5")
        b.legend()
    b.set(xlabel="epoch", ylabel="validation accuracy", title="Validation")
    save_figure(fig, run / "training_curves.png", dpi=110)
