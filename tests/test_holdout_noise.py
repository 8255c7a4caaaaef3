"""benchmarks/studies/holdout_noise.py: the noise-corrected holdout score, on noise whose T is
known."""

import numpy as np
import pytest
from benchtools import load_bench

C = 5
T = np.eye(C)
for src, dst in [(1, 2), (3, 4)]:  # two classes flipped to one other at 0.4, as asym40 does
    T[src, src], T[src, dst] = 0.6, 0.4


def _noisy(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(len(clean))
    return np.minimum((u[:, None] > T[clean].cumsum(1)).sum(1), C - 1)


def test_corrected_top1_estimates_clean_top1_where_agreement_does_not():
    hn = load_bench("holdout_noise")
    rng = np.random.default_rng(0)
    clean = rng.integers(0, C, 20000)
    noisy = _noisy(clean, rng)
    right = rng.random(len(clean)) < 0.8  # a model right on 80% of the images
    pred = np.where(right, clean, (clean + rng.integers(1, C, len(clean))) % C)
    assert np.mean(pred == noisy) < 0.72  # what the noisy holdout reads
    assert hn.corrected_top1(pred, noisy, T) == pytest.approx(0.8, abs=0.01)
    assert np.allclose(hn.counted_transition(clean, noisy, C), T, atol=0.02)


def test_anchors_recover_the_transition_from_a_model_of_the_noisy_labels():
    """A model that learned P(noisy | image) perfectly: its most typical images of each class
    carry that class's row of T."""
    hn = load_bench("holdout_noise")
    rng = np.random.default_rng(1)
    clean = rng.integers(0, C, 20000)
    noisy = _noisy(clean, rng)
    probs = T[clean] + rng.normal(0, 0.01, (len(clean), C))  # the noisy posterior, nearly
    probs[np.arange(len(clean)), clean] += 0.05  # a class's own images most typical of it
    assert np.allclose(hn.anchor_transition(probs, noisy, 0.1), T, atol=0.08)  # 400 anchors a class
