"""Top-1/top-5 on a run's labelled validation rows, each epoch (what `export: best` and the
holdout curve read)."""

from __future__ import annotations

import torch
from torch import nn

from webly.data.datasets import ImageFiles
from webly.data.images import EvalTransform, normalize_batch
from webly.training import checkpoints
from webly.training.config import TrainConfig
from webly.training.distributed import Dist, all_reduce_sum
from webly.training.trainsets import SparseTargets, TargetDataset, TrainData, make_loader


@torch.no_grad()
def validate(model: nn.Module, data: TrainData, cfg: TrainConfig, d: Dist, fmt) -> dict[str, float]:
    """top-1/top-5 on the labelled validation rows (this rank's share, summed over ranks)."""
    if not (ok := data.val_labels >= 0).any():
        return {}
    mine = slice(d.rank, None, d.world_size)
    rows, labels = data.val_rows[ok][mine], data.val_labels[ok][mine]
    ds = TargetDataset(ImageFiles(data.manifest, rows), SparseTargets.from_labels(labels),
                       EvalTransform.of(checkpoints.preprocess_of(cfg)), substitute=False)
    loader = make_loader(ds, max(1, cfg.batch_size // d.world_size), cfg.workers)
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=d.device)
    for x, i, _, bad_pos, _, _ in loader:  # bad validation images are left out of the counts
        x = normalize_batch(x.to(d.device)).contiguous(memory_format=fmt)
        good = bad_pos < 0
        top5 = model(x).float().topk(min(5, data.num_classes), dim=1).indices.cpu()[good]
        i = i[good][:, :1]
        counts += torch.tensor([(top5[:, :1] == i).sum(), (top5 == i).any(1).sum(), len(i)],
                               dtype=torch.float64, device=d.device)
    model.train()
    all_reduce_sum(counts, d)
    return {"val_top1": float(counts[0] / counts[2]), "val_top5": float(counts[1] / counts[2])}
