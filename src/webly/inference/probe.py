"""The holdout chooses pseudo-label's threshold: one linear probe per candidate threshold.

A threshold trades wrong labels kept against images dropped, and which balance trains the better
model is not written in the labeller's confidences: only training on the labels shows it.
Training a model per candidate costs a compute unit each; a linear probe on the labeller's own
features (`predict --features`) costs seconds. For each candidate, the training images'
features with the labels that threshold gives them (dropped images left out) train a softmax
layer, class-balanced as the new model trains, and the holdout's labels score it. The best
candidate replaces the default threshold only when it beats the default's probe by more than
`min_se` paired standard errors: the best of several candidates scored on the same holdout
flatters itself (as decision 3's fitted weights do, hence the same 2).

Cost: candidates x loss evaluations (<= 125 each) x images x features x classes x 3
multiply-adds, recorded in the decision (`probe_macs`). Small against a unit of training where
the unit is long (CIFAR-10N: 0.011 units at --quick, 10 classes); on a short unit with many
classes it is not (fashion53 at --quick: 0.19 units for 7 candidates on 53 classes, computed from
the recorded multiply-adds), and the recipe's compute must count it.

Deterministic: the probe starts at zero and trains full-batch (L-BFGS) on a fixed-seed sample of
at most `max_images` training images (`sample`), so a rerun decides the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from webly.inference.evaluate import paired_se

L2 = 1e-4  # on the standardised features: keeps the probe finite where classes separate


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int,
              iters: int = 100) -> tuple[torch.nn.Linear, int]:
    """A softmax layer on features `x` (standardised) for labels `y`, class-balanced; and the
    loss evaluations it took (each a forward and backward pass over `x`: its compute)."""
    count = torch.bincount(y, minlength=num_classes).float()
    weight = count.sum() / (num_classes * count.clamp(min=1))
    lin = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=iters, history_size=10,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y, weight=weight)
        loss = loss + L2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin, int(opt.state[lin.weight]["func_evals"])


def sample(n: int, max_images: int, seed: int = 0) -> np.ndarray:
    """The sorted rows (of `n` training images) the probes learn from: all of them up to
    `max_images`, else a fixed-seed sample, drawn before any label array is built so that a
    16M-image split costs memory for the sample only."""
    if n <= max_images:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))


def choose_threshold(train_feats: np.ndarray, labels_of: dict[float, np.ndarray],
                     holdout_feats: np.ndarray, holdout_labels: np.ndarray, num_classes: int,
                     default: float, min_se: float) -> dict[str, Any]:
    """The threshold the holdout chooses among `labels_of` (threshold -> the training labels it
    gives, -1: dropped, aligned with `train_feats`' rows: the `sample`; `default` among them),
    `default` unless beaten by more than `min_se` paired SEs. Returns the choice with every
    candidate's holdout score behind it."""
    x = np.asarray(train_feats, np.float32)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = torch.from_numpy((x - mu) / sd)
    known = holdout_labels >= 0
    v = torch.from_numpy((np.asarray(holdout_feats, np.float32)[known] - mu) / sd)
    vy = holdout_labels[known]
    right, scores, kept, macs = {}, {}, {}, 0
    for t, lab in sorted(labels_of.items()):
        keep = lab >= 0
        lin, evals = fit_probe(x[keep], torch.from_numpy(lab[keep].astype(np.int64)),
                               num_classes)
        macs += 3 * evals * int(keep.sum()) * x.shape[1] * num_classes  # forward + backward
        with torch.no_grad():
            right[t] = lin(v).argmax(1).numpy() == vy
        scores[t], kept[t] = round(100 * float(right[t].mean()), 3), int(keep.sum())
    best = max(scores, key=lambda t: (scores[t], t == default, -abs(t - default)))
    gain = round(scores[best] - scores[default], 3)
    se = round(paired_se(right[default], right[best]), 3) if best != default else 0.0
    chosen = best if best != default and gain > min_se * se else default
    why = (f"probe holdout top-1 at {best:g}: {scores[best]:.2f} against {scores[default]:.2f} at "
           f"the default {default:g}: {gain:+.2f} {'>' if chosen == best else '<='} "
           f"{min_se:g} x paired SE {se:.2f}" if best != default else
           f"the default {default:g} scored best ({scores[default]:.2f})")
    return {"threshold": chosen, "default": default, "why": why,
            "holdout_top1": {f"{t:g}": s for t, s in scores.items()},
            "probe_images": {f"{t:g}": k for t, k in kept.items()},
            "holdout_images": int(known.sum()), "se": se, "min_se": min_se,
            "probe_macs": macs}
