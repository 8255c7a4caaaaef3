"""What each training task learns from: image rows, sparse targets, and the groups to balance.

- finetune:    the manifest's train labels (one target per image), balanced over classes;
- pretrain wt: the WT-Set keyword rows (images without keywords are left out), balanced over
               keywords (draw a keyword, then an image tagged with it);
- pretrain lw: the LW-Set weight rows, balanced over the images' own classes.

Targets are kept as CSR (`SparseTargets`: int32 ids and float32 weights, largest weight first, at
most `max_targets` a sample: 8 bytes a target, no padding; about 0.6 GB for 16M images with ~5
keywords each). `TargetDataset` returns (uint8 image, target ids [t], target weights [t], bad
position, reason, position shown); `collate` pads a batch to its own longest row (-1 ids, 0
weights), so nothing is densified beyond a batch. A file that cannot be decoded is replaced by
the next good one (training) or by a blank flagged image (evaluation), and reported through the
bad position and reason; `BadImages` logs each once, counts them by reason and stops the run when
more than `max_bad_fraction` of the images are bad. The position shown lets a method that keeps
per-image state (ELR) find its row.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import scipy.sparse as sp
import torch

from webly.core.errors import WeblyError
from webly.data.datasets import ImageFiles, MemoryImages
from webly.data.folds import fold_of, parse_fold
from webly.data.images import try_decode
from webly.data.manifest import Manifest
from webly.data.shards import ShardImages
from webly.training.config import loader_workers
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
    # training rows without a label (finetune: dropped by pseudo-label), for consistency training
    unlabeled_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def leave_out_fold(data: TrainData, fold: str) -> TrainData:
    """`data` without the training rows of fold i of k ('i/k'; validation rows stay)."""
    i, k = parse_fold(fold, "train.leave_out_fold")
    keep = fold_of(data.rows, k) != i
    return replace(data, rows=data.rows[keep], targets=data.targets[keep],
                   membership=sp.csc_matrix(data.membership.tocsr()[keep]),
                   unlabeled_rows=data.unlabeled_rows[fold_of(data.unlabeled_rows, k) != i])


def _split_rows(manifest: Manifest, split: str) -> tuple[np.ndarray, np.ndarray]:
    t = manifest.read(["split", "label"])
    rows = np.flatnonzero(pc.equal(t["split"], split).to_numpy(zero_copy_only=False))
    labels = np.asarray(pc.fill_null(t["label"], -1).to_numpy(), np.int64)[rows]
    return rows, labels


def finetune_data(manifest: Manifest, labels_override: np.ndarray | None = None,
                  soft: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                  soft_weight: float = 0.0) -> TrainData:
    """The train split's labels (or `labels_override`, by manifest row); with `soft` (rows,
    top classes, probabilities: a labels file's soft targets) each target is
    (1 - soft_weight) x the hard label + soft_weight x the soft distribution (renormalised)."""
    rows, labels = _split_rows(manifest, "train")
    if labels_override is not None:
        labels = labels_override[rows]
    keep = labels >= 0
    unlabeled = rows[~keep]
    rows, labels = rows[keep], labels[keep]
    if not len(rows):
        raise WeblyError(f"{manifest.path}: no labelled training images")
    C = manifest.num_classes
    n = len(rows)
    r, c, w = np.arange(n), labels, np.full(n, 1.0 - soft_weight if soft else 1.0, np.float32)
    if soft is not None and soft_weight > 0:
        s_rows, s_idx, s_prob = soft
        at = np.searchsorted(s_rows, rows)
        if (at >= len(s_rows)).any() or (s_rows[np.minimum(at, len(s_rows) - 1)] != rows).any():
            raise WeblyError("soft targets do not cover every training image the labels keep")
        p = s_prob[at].astype(np.float32)
        p = p / np.maximum(p.sum(1, keepdims=True), 1e-6)
        k = s_idx.shape[1]
        r = np.concatenate([r, np.repeat(np.arange(n), k)])
        c = np.concatenate([c, s_idx[at].ravel()])
        w = np.concatenate([w, soft_weight * p.ravel()])
    targets = sp.csr_matrix((w, (r, c)), shape=(n, C))  # duplicate entries add up
    targets.eliminate_zeros()
    val_rows, val_labels = _split_rows(manifest, "val")
    return TrainData(manifest, rows, targets, groups_from_labels(labels, C), C, manifest.classes,
                     val_rows, val_labels, unlabeled)


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


@dataclass
class SparseTargets:
    """Per-sample targets as CSR rows, largest weight first."""

    indptr: np.ndarray  # int64 [n + 1]
    ids: np.ndarray  # int32
    weights: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.indptr[i], self.indptr[i + 1]
        return self.ids[s:e], self.weights[s:e]

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> SparseTargets:
        """One target of weight 1 a sample."""
        return cls(np.arange(len(labels) + 1, dtype=np.int64), np.asarray(labels, np.int32),
                   np.ones(len(labels), np.float32))


def sparse_targets(targets: sp.csr_matrix, max_targets: int) -> SparseTargets:
    """CSR rows, each sorted by weight (largest first, stable) and cut to `max_targets`."""
    lengths = np.diff(targets.indptr)
    rows = np.repeat(np.arange(targets.shape[0]), lengths)
    order = np.lexsort((-targets.data, rows))  # within each row: largest weight first (stable)
    pos = np.arange(len(order)) - np.repeat(targets.indptr[:-1], lengths)  # rank within its row
    keep = pos < max_targets
    indptr = np.concatenate([[0], np.cumsum(np.minimum(lengths, max_targets))]).astype(np.int64)
    return SparseTargets(indptr, targets.indices[order][keep].astype(np.int32),
                         targets.data[order][keep].astype(np.float32))


def collate(batch: list[tuple]) -> tuple:
    """(images, ids [B, T], weights [B, T], bad positions, reasons, positions shown), T the
    batch's longest row."""
    T = max(1, max(len(b[1]) for b in batch))
    ids = torch.full((len(batch), T), -1, dtype=torch.int64)
    ws = torch.zeros((len(batch), T), dtype=torch.float32)
    for j, b in enumerate(batch):
        ids[j, :len(b[1])] = torch.as_tensor(b[1], dtype=torch.int64)
        ws[j, :len(b[2])] = torch.as_tensor(b[2], dtype=torch.float32)
    return (torch.stack([b[0] for b in batch]), ids, ws, torch.tensor([b[3] for b in batch]),
            [b[4] for b in batch], torch.tensor([b[5] for b in batch]))


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, workers: int, *,
                prefetch: int | None = None, **kw) -> torch.utils.data.DataLoader:
    """A DataLoader of `collate`d batches, its workers as a config gives them (-1: what this
    machine has, `loader_workers`); `prefetch` batches a worker keeps ready."""
    n = loader_workers(workers)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=n,
                                       collate_fn=collate, prefetch_factor=prefetch if n else None,
                                       **kw)


class TargetDataset(torch.utils.data.Dataset):
    """Item (position, seed) -> (uint8 image, ids, weights, bad position, reason); the seed fixes
    the augmentation, so a sample looks the same whichever worker loads it and after a resume.
    `images` gives each position's bytes: `ImageFiles` (files) or `ShardImages` (tar shards).

    A bad image at `pos` is replaced by the next good position (`substitute`, training: the batch
    keeps its size and its targets stay those of the image shown) or by a blank image
    (evaluation: the caller masks it out); either way (pos, reason) comes back to be counted."""

    SUBSTITUTE_TRIES = 16

    def __init__(self, images: ImageFiles | ShardImages, targets: SparseTargets, transform,
                 min_short_side: int | None = None, substitute: bool = True) -> None:
        if len(images) != len(targets):
            raise WeblyError(f"{len(images)} images but {len(targets)} target rows")
        self.images, self.targets = images, targets
        self.transform, self.min_short_side, self.substitute = transform, min_short_side, substitute

    def __len__(self) -> int:
        return len(self.targets)

    def path(self, pos: int) -> str:
        return self.images.name(pos)

    def _decode(self, pos: int):
        if isinstance(self.images, MemoryImages):
            img = self.images.pixels(pos)
            return img, self.images.reason(pos)
        return try_decode(lambda: self.images.read(pos), self.min_short_side)

    def __getitem__(self, item: int | tuple[int, int]):
        pos, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            # CPU generator only: torch.manual_seed would also queue CUDA/XPU seeding and format
            # a stack trace each call (about 1 ms a sample)
            torch.default_generator.manual_seed(seed)
        img, reason = self._decode(pos)
        bad, shown = (-1, pos) if img is not None else (pos, pos)
        if img is None and self.substitute:
            for k in range(1, min(self.SUBSTITUTE_TRIES, len(self)) + 1):
                shown = (pos + k) % len(self)
                img, _ = self._decode(shown)
                if img is not None:
                    break
        if img is None:
            size = getattr(self.transform, "size", 32)
            return (torch.zeros(3, size, size, dtype=torch.uint8), *self.targets.row(pos), bad,
                    reason, pos)
        return (self.transform(img), *self.targets.row(shown), bad, reason, shown)


def train_images(data: TrainData, shards: str | None, in_memory: bool = False,
                 size: int | None = None) -> ImageFiles | ShardImages:
    """The training rows' images: files, files decoded once into memory (resized to `size` once
    there when given, and cached beside the manifest for the next step: `MemoryImages`), or by
    index from `webly shard` tar shards."""
    if shards:
        return ShardImages(shards, data.rows, "train")
    cache = Path(data.manifest.path).parent / "decoded"
    return (MemoryImages(data.manifest, data.rows, size, cache=cache) if in_memory
            else ImageFiles(data.manifest, data.rows))


def unlabeled_images(data: TrainData, size: int) -> torch.Tensor:
    """The training images without a label (`unlabeled_rows`), decoded into memory at `size` x
    `size`, for consistency training; those that cannot be decoded are left out, and said so."""
    if not len(data.unlabeled_rows):
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    images = MemoryImages(data.manifest, data.unlabeled_rows, size)
    if images.reasons:
        print(f"webly: {len(images.reasons)} unlabelled images could not be decoded and are left "
              "out of consistency training", file=sys.stderr)
    good = [p for p in range(len(data.unlabeled_rows)) if p not in images.reasons]
    return images.array[good]
