"""Samplers: class-balanced (single- or multi-label) and plain shuffling, DDP-ready.

A sampler draws one seeded stream of dataset positions per epoch, a function of (seed, epoch)
only, and rank r of W takes positions r, r+W, r+2W, ...: ranks get disjoint parts of the same
stream and together the whole of it. Samplers run in the main process, so DataLoader workers need
nothing special. `start` lets a resumed run skip what the interrupted one already consumed.

Class-balanced: an epoch of D draws gives group g (a class, or a keyword for the WT-Set) a share
proportional to n_g ** (1 - balance) (balance 1: uniform over groups, the seed's class-balanced
sampling; 0: natural frequencies), allocated exactly (D_g draws, rounded so they add up to D).
Repeats are spread, not clustered: group g's draws sit at evenly spaced places in the epoch,
(j + phase + jitter) / D_g with a random phase per group and a jitter below JITTER (so groups of
equal size do not march in lockstep), and walk its members in a random cyclic order (offset +
j * stride mod n_g, the stride coprime with n_g). An image thus comes back only after every other
member of its group, after at least (1 - JITTER) of its mean spacing D / d_i. Building a 16M-draw
epoch takes seconds and O(D) memory. Shard-fed training draws the same positions (shards are
read by index: `webly.data.shards.ShardImages`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from webly.core.errors import WeblyError


def groups_from_labels(labels: np.ndarray, num_classes: int) -> sp.csc_matrix:
    """samples x classes membership (CSC: each column lists a class's samples)."""
    n = len(labels)
    ok = labels >= 0
    return sp.csc_matrix((np.ones(ok.sum(), np.uint8), (np.arange(n)[ok], labels[ok])),
                         shape=(n, num_classes))


JITTER = 0.1  # fraction of a group's spacing by which a draw may move


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


class BalancedSampler(torch.utils.data.Sampler[int]):
    """Class-balanced positions from a samples x groups membership matrix."""

    def __init__(self, membership: sp.spmatrix, num_samples: int, *, balance: float = 1.0,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        m = sp.csc_matrix(membership)
        sizes = np.diff(m.indptr)
        empty = int((sizes == 0).sum())
        if empty == len(sizes):
            raise WeblyError("balanced sampling: every class is empty (no images to draw)")
        if empty:
            warnings.warn(f"balanced sampling: {empty} of {len(sizes)} classes have no images "
                          "and are never drawn", stacklevel=2)
        if num_samples % world_size:
            num_samples += world_size - num_samples % world_size  # equal shares for every rank
        self.indptr, self.members = m.indptr, m.indices
        p = np.where(sizes > 0, sizes.astype(np.float64) ** (1.0 - balance), 0.0)
        self.p = p / p.sum()
        self.sizes = sizes
        self.num_samples, self.seed = num_samples, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def stream(self, epoch: int) -> np.ndarray:
        """The whole epoch's positions (all ranks), a function of (seed, epoch) only."""
        rng = _epoch_rng(self.seed, epoch)
        counts = _allocate(self.p, self.num_samples, rng)  # D_g, adding up to D
        live = np.flatnonzero(counts)
        g = np.repeat(live, counts[live])
        starts = np.cumsum(counts) - counts
        j = np.arange(self.num_samples, dtype=np.int64) - starts[g]  # the draw's index in its group
        phase = rng.random(len(self.p))
        place = (j + phase[g] + JITTER * rng.random(self.num_samples)) / counts[g]
        order = np.argsort(place, kind="stable")
        n = self.sizes.astype(np.int64)
        offset = (rng.random(len(n)) * np.maximum(n, 1)).astype(np.int64)
        member = (offset[g] + j * _coprime_strides(n, rng)[g]) % np.maximum(n[g], 1)
        return self.members[self.indptr[g] + member].astype(np.int64)[order]

    def __iter__(self) -> Iterator[int]:
        mine = self.stream(self.epoch)[self.rank::self.world_size][self.start:]
        for chunk in range(0, len(mine), 65536):  # Python ints a chunk at a time, not 16M at once
            yield from mine[chunk:chunk + 65536].tolist()

    def __len__(self) -> int:
        return self.num_samples // self.world_size - self.start


def _allocate(p: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Integer draws per group proportional to `p`, adding up to `total` (largest remainders,
    ties broken at random)."""
    exact = p * total
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    if short:
        frac = np.where(p > 0, exact - counts + 1e-9 * rng.random(len(p)), -1.0)
        counts[np.argsort(-frac, kind="stable")[:short]] += 1
    return counts


def _coprime_strides(n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random stride in [1, n) coprime with n for each group (1 for groups of 1 or 2), so that
    offset + j * stride (mod n) visits every member once in n steps."""
    stride = np.ones(len(n), np.int64)
    todo = np.flatnonzero(n > 2)
    while len(todo):
        stride[todo] = 1 + (rng.random(len(todo)) * (n[todo] - 1)).astype(np.int64)
        todo = todo[np.gcd(stride[todo], n[todo]) != 1]
    return stride


class ShuffleSampler(BalancedSampler):
    """Plain sampling: seeded permutations of all samples (no balancing), as many as it takes to
    fill `num_samples` (default: one pass over the n samples)."""

    def __init__(self, n: int, num_samples: int | None = None, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(sp.csc_matrix(np.ones((n, 1), np.uint8)), num_samples or n, seed=seed,
                         rank=rank, world_size=world_size)
        self.n = n

    def stream(self, epoch: int) -> np.ndarray:
        rng = _epoch_rng(self.seed, epoch)
        reps = -(-self.num_samples // self.n)  # wrap around: equal counts for every rank
        return np.concatenate([rng.permutation(self.n) for _ in range(reps)])[: self.num_samples]


class SeededSampler(torch.utils.data.Sampler):
    """Pairs each drawn sample with a seed fixed by (seed, epoch, its position in the epoch's
    global stream), so its augmentation is the same whatever the world size or a resume."""

    def __init__(self, sampler: BalancedSampler, seed: int) -> None:
        self.sampler, self.seed = sampler, seed

    def __iter__(self):
        s = self.sampler
        for k, pos in enumerate(s):
            global_pos = (s.start + k) * s.world_size + s.rank
            yield pos, ((self.seed * 1_000_003 + s.epoch) * 1_000_000_007 + global_pos) % (2**63)

    def __len__(self) -> int:
        return len(self.sampler)
