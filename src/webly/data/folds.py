"""Folds of manifest rows for cross labelling: a model trained without fold i labels fold i, so no
image is labelled by a model that saw its (noisy) label. The fold of a row is a fixed hash of the
row number, the same in every stage and process: training leaves a fold out, and
`webly ensemble --out-of-fold` takes each image's prediction from the model that left its fold
out."""

from __future__ import annotations

import numpy as np

from webly.core.config import parse_part
from webly.core.errors import WeblyError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: consecutive rows spread over folds


def fold_of(rows: np.ndarray, k: int) -> np.ndarray:
    """Fold (0..k-1) of each manifest row; about equal sizes for any k."""
    h = (np.asarray(rows).astype(np.uint64) + np.uint64(1)) * _GOLDEN
    return ((h >> np.uint64(33)) % np.uint64(k)).astype(np.int64)


def parse_fold(text: str, name: str) -> tuple[int, int]:
    """'i/k' -> (i, k), k >= 2."""
    i, k = parse_part(text, name)
    if k < 2:
        raise WeblyError(f"{name} needs at least 2 folds, got {text!r}")
    return i, k
