"""The holdout chooses pseudo-label's threshold, or its label set: one linear probe per candidate.

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
multiply-adds, recorded in the decision (`macs`). Small against a long unit of training on few
classes; not against a short unit on many classes: a recipe's compute counts it (fashion53 at
`--quick`: 17 probes on 31,306 images cost 0.35 of a one-epoch unit; at the default 0.06).

Deterministic: the probe starts at zero and trains full-batch (L-BFGS) on a fixed-seed sample of
at most `max_images` training images (`sample`), so a rerun decides the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from webly.core import decisions
from webly.core.decisions import Decision
from webly.core.errors import WeblyError
from webly.data.predictions import load_features, read_info, rows_of

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


def probe_features(probe: list[str], rows: np.ndarray, train_rows: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The features of `probe` = [TRAIN_PREDS, HOLDOUT_PREDS], checked: the training folder
    predicts `rows` (its rows `train_rows`, or None when it is the labeller's own folder, read
    already), the holdout is val, both from one model with one set of views. Returns the train
    and holdout features and the holdout's manifest rows."""
    if train_rows is not None and not np.array_equal(train_rows, rows):
        raise WeblyError(f"{probe[0]} predicts other images than the {rows.size} training "
                         "images being labelled: predict the same manifest's train split")
    holdout_rows = rows_of(probe[1])
    info = [read_info(d) for d in probe]
    if info[1]["split"] != "val":
        raise WeblyError(f"{probe[1]} holds {info[1]['split']!r} predictions; the probe is "
                         "scored on the holdout (val)")
    if [(i.get("model"), i.get("tta")) for i in info] != [(info[0].get("model"),
                                                          info[0].get("tta"))] * 2:
        raise WeblyError(f"{probe[0]} and {probe[1]}: features of one model with the same "
                         "test-time views are needed (model and tta must match)")
    train, holdout = (load_features(Path(d)) for d in probe)
    if train.shape[1] != holdout.shape[1] or len(holdout) != len(holdout_rows):
        raise WeblyError(f"{probe[0]} and {probe[1]}: features of different models or a "
                         "truncated features.npy")
    return train, holdout, holdout_rows


def choose_threshold(train_feats: np.ndarray, labels_of: dict[float, np.ndarray],
                     holdout_feats: np.ndarray, holdout_labels: np.ndarray, num_classes: int,
                     default: float, min_se: float, metric: str = "top1") -> Decision:
    """The threshold the holdout chooses among `labels_of` (threshold -> the training labels it
    gives, -1: dropped, aligned with `train_feats`' rows: the `sample`; `default` among them):
    `default` unless beaten by more than `min_se` paired SEs (`webly.core.decisions.beats`;
    among equal scores the threshold nearer the default). The candidates are named f"{t:g}"."""
    order = sorted(labels_of, key=lambda t: (abs(t - default), t))
    return choose_labels(train_feats, {f"{t:g}": labels_of[t] for t in order}, holdout_feats,
                         holdout_labels, num_classes, f"{default:g}", min_se, name="threshold",
                         metric=metric)


def choose_labels(train_feats: np.ndarray, labels_of: dict[str, np.ndarray],
                  holdout_feats: np.ndarray, holdout_labels: np.ndarray, num_classes: int,
                  default: str, min_se: float, name: str = "labels",
                  metric: str = "top1") -> Decision:
    """The label set the holdout chooses among `labels_of` (candidate -> the training labels it
    gives, -1: dropped, aligned with `train_feats`' rows; in preference order: among equal
    scores the earlier wins): a linear probe learns each, the holdout scores it (`metric`: top1
    or balanced_top1, the mean of the classes' top-1s, where a recipe is judged by it), and the
    best replaces `default` only when it beats it by more than `min_se` paired SEs."""
    x = np.asarray(train_feats, np.float32)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = torch.from_numpy((x - mu) / sd)
    known = holdout_labels >= 0
    v = torch.from_numpy((np.asarray(holdout_feats, np.float32)[known] - mu) / sd)
    vy = holdout_labels[known]
    right, kept, macs = {}, {}, 0
    for cand, lab in labels_of.items():
        keep = lab >= 0
        lin, evals = fit_probe(x[keep], torch.from_numpy(lab[keep].astype(np.int64)),
                               num_classes)
        macs += 3 * evals * int(keep.sum()) * x.shape[1] * num_classes  # forward + backward
        with torch.no_grad():
            right[cand] = lin(v).argmax(1).numpy() == vy
        kept[cand] = int(keep.sum())
    weights = decisions.class_weights(vy) if metric == "balanced_top1" else None
    return decisions.beats(right, default, name=name, min_se=min_se, macs=macs, weights=weights,
                           detail={"probe_images": kept, "holdout_images": int(known.sum()),
                                   "metric": metric})
