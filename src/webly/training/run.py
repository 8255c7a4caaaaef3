"""The `pretrain` and `finetune` stages: what to train on, then the training engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from webly.core.errors import WeblyError
from webly.data.labels import load_labels, load_soft_labels
from webly.data.manifest import Manifest
from webly.training.config import TrainConfig
from webly.training.engine import train
from webly.training.trainsets import finetune_data, leave_out_fold, pretrain_data


def run_pretrain(*, manifest: str, set: str, cfg: TrainConfig, out: Path, tags: str | None = None,
                 # noqa: A002
                 label_weights: str | None = None, resume: bool = False,
                 force: bool = False) -> dict[str, Any]:
    """Pretrain on the WT-Set (`tags`) or the LW-Set (`label_weights`)."""
    source = tags if set == "wt" else label_weights
    if not source:
        raise WeblyError(f"pretrain --set {set} needs "
                         f"{'--tags' if set == 'wt' else '--label-weights'}")
    data = pretrain_data(Manifest(manifest), set, source)
    if cfg.leave_out_fold:
        data = leave_out_fold(data, cfg.leave_out_fold)
    return train(data, cfg, out, task=f"pretrain_{set}", resume=resume, force=force)


def run_finetune(*, manifest: str, cfg: TrainConfig, out: Path, labels: str | None = None,
                 resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Finetune on the manifest's labels, or on pseudo-labels (`labels`)."""
    m = Manifest(manifest)
    if cfg.soft_labels and not labels:
        raise WeblyError("soft_labels needs --labels (a labels file written with --soft-k)")
    soft = load_soft_labels(labels) if labels and cfg.soft_labels else None
    data = finetune_data(m, load_labels(labels, len(m)) if labels else None, soft,
                         cfg.soft_labels)
    if cfg.leave_out_fold:
        data = leave_out_fold(data, cfg.leave_out_fold)
    return train(data, cfg, out, task="finetune", resume=resume, force=force)
