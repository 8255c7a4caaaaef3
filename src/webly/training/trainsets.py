"""What each training task learns from: image rows, sparse targets, and the groups to balance.

- finetune:    the manifest's train labels (one target per image), balanced over classes;
- pretrain wt: the WT-Set keyword rows (images without keywords are left out), balanced over
               keywords (draw a keyword, then an image tagged with it);
- pretrain lw: the LW-Set weight rows, balanced over the images' own classes.

`TargetDataset` returns (uint8 image, target ids [T], target weights [T], bad position, reason)
with T fixed per dataset (-1 padded), so batches collate without densifying anything. A file that
cannot be decoded is replaced by the next good one (training) or by a blank flagged image
(evaluation), and reported through the last two fields; `BadImages` logs each once, counts them by
reason and stops the run when more than `max_bad_fraction` of the images are bad.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import scipy.sparse as sp
import torch

from webly.data.images import TrainTransform, try_decode
from webly.data.manifest import Manifest
from webly.errors import WeblyError
from webly.training.config import TrainConfig
from webly.training.distributed import Dist
from webly.training.sampling import groups_from_labels


@dataclass
class TrainData:
    manifest: Manifest
    rows: np.ndarray  # manifest rows used for training
    targets: sp.csr_matrix  # len(rows) x num_classes, weights
    membership: sp.csc_matrix  # len(rows) x groups, for balanced sampling
    num_classes: int
    class_names: list[str]
    val_rows: np.ndarray
    val_labels: np.ndarray  # -1 where unusable (e.g. WT pretraining: no keyword labels)


def _split_rows(manifest: Manifest, split: str) -> tuple[np.ndarray, np.ndarray]:
    t = manifest.read(["split", "label"])
    rows = np.flatnonzero(pc.equal(t["split"], split).to_numpy(zero_copy_only=False))
    labels = np.asarray(pc.fill_null(t["label"], -1).to_numpy(), np.int64)[rows]
    return rows, labels


def finetune_data(manifest: Manifest, labels_override: np.ndarray | None = None) -> TrainData:
    rows, labels = _split_rows(manifest, "train")
    if labels_override is not None:
        labels = labels_override[rows]
    keep = labels >= 0
    rows, labels = rows[keep], labels[keep]
    if not len(rows):
        raise WeblyError(f"{manifest.path}: no labelled training images")
    C = manifest.num_classes
    targets = sp.csr_matrix((np.ones(len(rows), np.float32), (np.arange(len(rows)), labels)),
                            shape=(len(rows), C))
    val_rows, val_labels = _split_rows(manifest, "val")
    return TrainData(manifest, rows, targets, groups_from_labels(labels, C), C, manifest.classes,
                     val_rows, val_labels)


def pretrain_data(manifest: Manifest, kind: str, source: str | Path) -> TrainData:
    rows, labels = _split_rows(manifest, "train")
    val_rows, val_labels = _split_rows(manifest, "val")
    if kind == "wt":
        from webly.labels.tagging import load_tags

        kw, vocab = load_tags(source)
        _check_rows(kw, manifest, source)
        targets = kw[rows].astype(np.float32).tocsr()
        has = np.diff(targets.indptr) > 0
        rows, targets = rows[has], targets[has]
        if not len(rows):
            raise WeblyError(f"{source}: no training image has a keyword in the vocabulary")
        membership = sp.csc_matrix(targets.astype(np.uint8))
        return TrainData(manifest, rows, targets, membership, len(vocab), vocab, val_rows,
                         np.full(len(val_rows), -1))
    if kind == "lw":
        path = Path(source) / "label_weights.npz"
        if not path.is_file():
            raise WeblyError(f"{source}: no label_weights.npz; run `webly weigh` first")
        w = sp.load_npz(path).tocsr()
        _check_rows(w, manifest, source)
        keep = labels >= 0
        rows, labels = rows[keep], labels[keep]
        return TrainData(manifest, rows, w[rows].astype(np.float32).tocsr(),
                         groups_from_labels(labels, manifest.num_classes), manifest.num_classes,
                         manifest.classes, val_rows, val_labels)
    raise WeblyError(f"pretraining set must be wt or lw, not {kind!r}")


def _check_rows(mat: sp.spmatrix, manifest: Manifest, source) -> None:
    if mat.shape[0] != len(manifest):
        raise WeblyError(f"{source} has {mat.shape[0]} rows but {manifest.path} has "
                         f"{len(manifest)}")


def padded_targets(targets: sp.csr_matrix, max_targets: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows -> (ids, weights) arrays [N, T], -1/0 padded; T = min(max row length, max_targets).
    Rows longer than T keep their T largest weights."""
    lengths = np.diff(targets.indptr)
    T = max(1, min(int(lengths.max(initial=1)), max_targets))
    n = targets.shape[0]
    rows = np.repeat(np.arange(n), lengths)
    order = np.lexsort((-targets.data, rows))  # within each row: largest weight first (stable)
    pos = np.arange(len(order)) - np.repeat(targets.indptr[:-1], lengths)  # rank within its row
    keep = pos < T
    ids = np.full((n, T), -1, np.int64)
    ws = np.zeros((n, T), np.float32)
    ids[rows[keep], pos[keep]] = targets.indices[order][keep]
    ws[rows[keep], pos[keep]] = targets.data[order][keep]
    return ids, ws


class TargetDataset(torch.utils.data.Dataset):
    """Item (position, seed) -> (uint8 image, ids, weights, bad position, reason); the seed fixes
    the augmentation, so a sample looks the same whichever worker loads it and after a resume.

    A bad file at `pos` is replaced by the next good position (`substitute`, training: the batch
    keeps its size and its targets stay those of the image shown) or by a blank image
    (evaluation: the caller masks it out); either way (pos, reason) comes back to be counted."""

    SUBSTITUTE_TRIES = 16

    def __init__(self, manifest: Manifest, rows: np.ndarray, ids: np.ndarray, ws: np.ndarray,
                 transform, min_short_side: int | None = None, substitute: bool = True) -> None:
        paths = manifest.read(["path"]).column(0).combine_chunks()
        self.paths = paths.take(rows)
        self.root, self.ids, self.ws = manifest.root, ids, ws
        self.transform, self.min_short_side, self.substitute = transform, min_short_side, substitute

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, pos: int) -> str:
        return self.paths[pos].as_py()

    def __getitem__(self, item: int | tuple[int, int]):
        pos, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            # CPU generator only: torch.manual_seed would also queue CUDA/XPU seeding and format
            # a stack trace each call (about 1 ms a sample)
            torch.default_generator.manual_seed(seed)
        img, reason = try_decode(self.root / self.path(pos), self.min_short_side)
        bad, shown = (-1, pos) if img is not None else (pos, pos)
        if img is None and self.substitute:
            for k in range(1, min(self.SUBSTITUTE_TRIES, len(self)) + 1):
                shown = (pos + k) % len(self)
                img, _ = try_decode(self.root / self.path(shown), self.min_short_side)
                if img is not None:
                    break
        if img is None:
            size = getattr(self.transform, "size", 32)
            return (torch.zeros(3, size, size, dtype=torch.uint8), torch.from_numpy(self.ids[pos]),
                    torch.from_numpy(self.ws[pos]), bad, reason)
        return (self.transform(img), torch.from_numpy(self.ids[shown]),
                torch.from_numpy(self.ws[shown]),
                bad, reason)


def shard_stream(data: TrainData, cfg: TrainConfig, ids: np.ndarray, ws: np.ndarray, d: Dist):
    """Shards -> (image, ids, weights), class-balanced by repeat factors when sampler=balanced.
    Samples whose manifest row is not a training row of this task (no keywords, say) are dropped.
    Resuming a shard-fed run restarts the interrupted epoch's stream (not bit-exact)."""
    import webdataset as wds

    from webly.data.shards import shard_pipeline, shard_urls
    from webly.training.sampling import repeat_factors

    rows = data.rows
    factors = (repeat_factors(np.diff(data.membership.indptr), data.membership, cfg.balance)
               if cfg.sampler == "balanced" else np.ones(len(rows)))

    def position(rec: dict[str, Any]) -> int:
        p = int(np.searchsorted(rows, rec["row"]))
        return p if p < len(rows) and rows[p] == rec["row"] else -1

    def factor(rec: dict[str, Any]) -> float:
        p = position(rec)
        return float(factors[p]) if p >= 0 else 0.0

    def to_targets(sample):
        img, rec = sample
        p = position(rec)
        # shards hold good images only
        return img, torch.from_numpy(ids[p]), torch.from_numpy(ws[p]), -1, ""

    pipe = shard_pipeline(shard_urls(cfg.shards, "train"), transform=TrainTransform(cfg.img_size,
                                                                                    (cfg.crop_scale,
                                                                                     1.0)),
                          seed=cfg.seed, rank=d.rank, world_size=d.world_size, repeat=factor)
    pipe.append(wds.map(to_targets))
    return pipe


def stream_batches(pipe, epoch: int, loader_kwargs: dict[str, Any]):
    """Batches from a shard stream for one epoch; the caller stops after its micro-steps."""
    for rep in range(1_000_000):
        pipe.shard_list.set_epoch(epoch * 1_000_000 + rep)
        got = False
        for batch in torch.utils.data.DataLoader(pipe, **loader_kwargs):
            got = True
            yield batch
        if not got:
            raise WeblyError("the shard stream yields no training samples (wrong --shards folder?)")
