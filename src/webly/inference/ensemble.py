"""`webly ensemble`: average the class probabilities of several models' predictions.

The models may differ in backbone, pretraining and input size; their predictions must cover the
same images in the same order. Weights are equal, given, or fitted on validation predictions of
the same models by minimising the negative log-likelihood of the true labels over the weight
simplex. With `out_of_fold` the k members are instead k models each trained without one fold of
the images (`finetune --leave-out-fold i/k`), and each image takes the prediction of the model
that never saw it (member i for fold i, `webly.data.folds`): cross labelling for pseudo-labels
that do not echo the noise the models memorised. The output is an ordinary predictions folder,
so `webly evaluate` and `webly submit` treat an ensemble exactly as one model.

Members are read a row group at a time, so memory is bounded by the row group, not the number of
images. Each member keeps its top-k classes and the mass `rest` of the others. Where every member
kept every class (k >= C) the average is exact. Otherwise a class missing from member m's top-k is
counted as 0, so each averaged probability is low by at most sum_m w_m * rest_m for that image
(reported as `dropped_mass` in the summary: mean and max over images); classes kept by no member
cannot be ranked, which matters only when that bound is large.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize

from webly.core import decisions
from webly.core.config import opt
from webly.core.decisions import Decision
from webly.core.errors import WeblyError
from webly.data.folds import fold_of
from webly.data.predictions import (
    Predictions,
    PredictionWriter,
    iter_predictions,
    load_predictions,
    read_info,
)
from webly.inference.evaluate import align

BATCH = 16_384  # rows averaged at once: about 0.5 GB of working memory for 4 members at k = 50


@dataclass
class EnsembleConfig:
    model_weights: list[float] | None = opt(None, "one weight per member, e.g. 2,1,1 (default: "
                                                  "equal; ignored with --fit)")
    top_k: int = opt(50, "classes kept per image (at most the members' own k)")
    out_of_fold: bool = opt(False, "member i was trained without fold i of k = the members: "
                                   "each image takes the prediction of the member that left its "
                                   "fold out")
    fit_metric: Literal["nll", "top1"] = opt(
        "nll", "--fit: minimise the log-likelihood of the labels (a clean val split), or "
               "maximise top-1 over a grid of weights (a noisy holdout: its likelihood favours "
               "the member that learnt the noise; a member may get weight 0 and is left out)")
    fit_min_se: float = opt(
        0.0, "--fit-metric top1: keep the fitted weights only when their holdout top-1 beats the "
             "plain average's by more than this many paired standard errors (the grid's best is "
             "the maximum over dozens of weightings scored on the same noisy images)")

    fit_default: Literal["plain", "last"] = opt(
        "plain", "--fit-metric top1: what the fitted weights (and the plain average) must beat: "
                 "the plain average, or the last member alone (a recipe's longest-trained model: "
                 "the others join only where averaging them in beats it on the holdout)")

    def validate(self) -> None:
        if self.model_weights is not None and (min(self.model_weights, default=0) < 0
                                               or sum(self.model_weights) <= 0):
            raise WeblyError("ensemble.model_weights must be non-negative and not all zero")
        if self.top_k < 1:
            raise WeblyError("ensemble.top_k must be positive")
        if self.fit_metric not in ("nll", "top1"):
            raise WeblyError(f"ensemble.fit_metric: nll or top1, got {self.fit_metric!r}")
        if self.fit_min_se < 0:
            raise WeblyError("ensemble.fit_min_se must not be negative")
        if self.fit_default not in ("plain", "last"):
            raise WeblyError(f"ensemble.fit_default: plain or last, got {self.fit_default!r}")


def average_topk(members: list[Predictions], weights: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the weighted sum of the members' sparse distributions, then its top k
    (ties to the lower class id). Vectorised over a batch: sort each row's M*k (class, prob)
    entries by class, add up equal classes, rank."""
    idx = np.concatenate([m.top_i for m in members], axis=1).astype(np.int64)
    weighted = [w * m.top_p.astype(np.float64) for w, m in zip(weights, members, strict=True)]
    p = np.concatenate(weighted, axis=1)
    order = np.argsort(idx, axis=1, kind="stable")
    idx, p = np.take_along_axis(idx, order, 1), np.take_along_axis(p, order, 1)
    first = np.ones(idx.shape, bool)
    first[:, 1:] = idx[:, 1:] != idx[:, :-1]
    starts = np.flatnonzero(first.ravel())  # every row starts a group: groups never span rows
    agg = np.full(p.size, -1.0)
    agg[starts] = np.add.reduceat(p.ravel(), starts)
    agg = agg.reshape(p.shape)
    top = np.argsort(-agg, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(idx, top, 1).astype(np.int32), np.take_along_axis(agg, top, 1)


def fit_weights(val_preds: list[Predictions], labels: np.ndarray) -> np.ndarray:
    """Simplex weights minimising the NLL of `labels` under the weighted average."""
    ps = np.stack([p.probability_of(labels) for p in val_preds])  # M x N

    def nll(z: np.ndarray) -> float:
        w = np.exp(z - z.max())
        w /= w.sum()
        return float(-np.log(np.maximum(w @ ps, 1e-12)).mean())

    res = minimize(nll, np.zeros(len(val_preds)), method="Nelder-Mead",
                   options={"xatol": 1e-4, "fatol": 1e-7})
    w = np.exp(res.x - res.x.max())
    return w / w.sum()


def simplex_grid(m: int, steps: int) -> np.ndarray:
    """Every weight vector of m members in multiples of 1/steps (stars and bars)."""
    rows = [np.diff([-1, *bars, steps + m - 1]) - 1
            for bars in itertools.combinations(range(steps + m - 1), m - 1)]
    return np.asarray(rows, np.float64) / steps


def fit_top1(val_preds: list[Predictions], labels: np.ndarray) -> tuple[np.ndarray, float]:
    """The grid weights (tenths; fifths above 4 members) with the best top-1 of `labels`; ties
    go to the weights closest to equal. Returns the weights and their top-1."""
    cand = np.concatenate([p.top_i for p in val_preds], 1)  # N x (M k): classes any member kept
    probs = [np.where(cand[:, :, None] == p.top_i[:, None, :], p.top_p[:, None, :], 0).sum(2)
             for p in val_preds]  # member m's probability of each candidate class
    steps = 10 if len(val_preds) <= 4 else 5
    best, best_key = None, None
    for w in simplex_grid(len(val_preds), steps):
        score = sum(wi * pm for wi, pm in zip(w, probs, strict=True))
        top1 = float((cand[np.arange(len(cand)), score.argmax(1)] == labels).mean())
        key = (round(top1, 9), -float(np.abs(w - 1 / len(w)).sum()))
        if best_key is None or key > best_key:
            best, best_key = w, key
    return best, best_key[0]


def fitted_or_plain(val_preds: list[Predictions], labels: np.ndarray, w: np.ndarray,
                    min_se: float, rule: str = "beats",
                    default: str = "plain") -> tuple[np.ndarray, Decision]:
    """The fitted weights `w` when their holdout top-1 beats the default's by more than `min_se`
    paired standard errors (rule "beats"), else the default: the plain average, or (`default`
    "last") the last member alone, which the plain average must beat as well; with rule "nll" (a
    clean holdout's likelihood fitted them) the fitted weights. The decision records them all."""
    plain = np.full(len(w), 1 / len(w))
    last = np.eye(len(w))[-1]
    pool = (("last", last), ("plain", plain), ("fitted", w)) if default == "last" else (
        ("plain", plain), ("fitted", w))
    right = {name: average_topk(val_preds, v, 1)[0][:, 0] == labels for name, v in pool}
    detail = {name: v.round(4).tolist() for name, v in pool}
    if rule == "nll":
        scores = {k: round(100 * float(v.mean()), 3) for k, v in right.items()}
        return w, Decision("ensemble weights", "nll", "plain", "fitted", scores,
                           round(scores["fitted"] - scores["plain"], 3),
                           why="weights fitted by the likelihood of the holdout's labels",
                           detail=detail)
    if rule == "beats" and default == "plain" and np.allclose(w, plain):
        d = decisions.beats(right, "plain", name="ensemble weights", min_se=min_se, detail=detail)
        d.why = "the best weights on the holdout are the plain average's"
        return plain, d
    d = decisions.beats(right, default, name="ensemble weights", min_se=min_se, detail=detail)
    return dict(pool)[d.choice], d


def _weights(pred_dirs: list[str], weights: list[float] | None, fit_dirs: list[str] | None,
             fit_labels: dict[str, int] | None, metric: str = "nll",
             min_se: float = 0.0, default: str = "plain") -> tuple[np.ndarray, Decision | None]:
    """The members' weights and, when fitted on the holdout, the decision behind them."""
    if fit_dirs:
        if len(fit_dirs) != len(pred_dirs):
            raise WeblyError("--fit needs one validation predictions folder per model, in the "
                             "same order")
        val = [load_predictions(d) for d in fit_dirs]
        for v, d in zip(val[1:], fit_dirs[1:], strict=True):
            if v.ids != val[0].ids:
                raise WeblyError(f"{d} and {fit_dirs[0]} predict different images")
        y = align(val[0], fit_labels or {})
        if metric != "top1":
            return fitted_or_plain(val, y, fit_weights(val, y), min_se, rule="nll")
        return fitted_or_plain(val, y, fit_top1(val, y)[0], min_se, default=default)
    if weights:
        if len(weights) != len(pred_dirs) or min(weights) < 0 or sum(weights) <= 0:
            raise WeblyError("model_weights needs one non-negative weight per model, not all zero")
        return np.asarray(weights, np.float64) / sum(weights), None
    return np.full(len(pred_dirs), 1 / len(pred_dirs)), None


def out_of_fold(members: list[Predictions], k: int) -> tuple[np.ndarray, np.ndarray,
                                                               np.ndarray]:
    """(top_i, top_p, rest) of each row from member fold_of(row): the model that left it out."""
    pick = fold_of(members[0].rows, len(members))
    top_i = np.stack([m.top_i[:, :k] for m in members])  # M x n x k
    top_p = np.stack([m.top_p[:, :k].astype(np.float64) for m in members])
    rest = np.stack([m.rest.astype(np.float64) + m.top_p[:, k:].astype(np.float64).sum(1)
                     for m in members])
    at = np.arange(len(pick))
    return top_i[pick, at], top_p[pick, at], rest[pick, at]


def ensemble(pred_dirs: list[str], out_dir: str | Path, weights: list[float] | None = None,
             fit_dirs: list[str] | None = None, fit_labels: dict[str, int] | None = None,
             top_k: int = 50, oof: bool = False, fit_metric: str = "nll",
             fit_min_se: float = 0.0, fit_default: str = "plain") -> dict[str, Any]:
    """Average (or, out of fold, pick) the members' predictions into `out_dir`. One member is
    allowed: a recipe's decisions may leave one (its predictions pass through)."""
    if not pred_dirs:
        raise WeblyError("an ensemble needs at least one predictions folder")
    infos = [read_info(d) for d in pred_dirs]
    for info, d in zip(infos[1:], pred_dirs[1:], strict=True):
        if info["num_classes"] != infos[0]["num_classes"] or info["images"] != infos[0]["images"]:
            raise WeblyError(f"{d} and {pred_dirs[0]} predict different images or class counts")
    if oof and (weights or fit_dirs):
        raise WeblyError("an out-of-fold ensemble picks one member per image: no weights or --fit")
    w, decision = _weights(pred_dirs, weights, fit_dirs, fit_labels, fit_metric, fit_min_se,
                           fit_default)
    if decision is not None:
        print(f"[webly] ensemble weights ({decision.rule}): {decision.why}", flush=True)
    # an average has as many distinct classes as its widest member; a pick, its narrowest
    k = min(top_k, (min if oof else max)(info["k"] for info in infos))
    info = {key: v for key, v in infos[0].items() if key not in ("k", "images", "model", "tta")}
    writer = PredictionWriter(out_dir, k, {**info, "model": "ensemble", "members": pred_dirs,
                                           "weights": w.tolist(), "out_of_fold": oof})
    dropped_sum, dropped_max, n = 0.0, 0.0, 0
    try:
        streams = [iter_predictions(d, batch_rows=BATCH) for d in pred_dirs]
        for batch in zip(*streams, strict=True):
            for b, d in zip(batch[1:], pred_dirs[1:], strict=True):
                if b.ids != batch[0].ids:
                    raise WeblyError(f"{d} and {pred_dirs[0]} predict different images "
                                     "(or another order)")
            if oof:
                top_i, top_p, dropped = out_of_fold(list(batch), k)
            else:
                top_i, top_p = average_topk(list(batch), w, k)
                dropped = sum(wi * b.rest for wi, b in zip(w, batch, strict=True))
            ok = np.logical_and.reduce([b.ok for b in batch])
            dropped_sum += float(dropped.sum())
            dropped_max = max(dropped_max, float(dropped.max()))
            n += len(ok)
            writer.write(batch[0].rows, batch[0].ids,
                         ["ok" if o else "skipped: by a member" for o in ok], top_i, top_p)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    if decision is not None:
        decision.detail["members"] = [Path(d).name for d in pred_dirs]
        decisions.write(out_dir, decision)
    return {"members": pred_dirs, "weights": [round(x, 4) for x in w.tolist()],
            "fitted": decision.rule if decision else None,
            "left_out": [d for d, wi in zip(pred_dirs, w, strict=True) if wi == 0], "images": n,
            "k": k, "dropped_mass": {"mean": round(dropped_sum / max(n, 1), 6),
                                     "max": round(dropped_max, 6)}}


def fit_labels_of(path: str, fit_dir: str) -> dict[str, int]:
    """The labels of the fitted images: a 'name label' file, or a manifest (the labels of the
    images the first --fit folder predicts: a noisy holdout's own labels)."""
    from webly.data.labels import read_name_labels

    if not str(path).endswith(".parquet"):
        return read_name_labels(path)
    from webly.data.manifest import Manifest

    table = Manifest(path).read(["id", "label"])
    wanted = set(load_predictions(fit_dir).ids)
    return {i: int(y) for i, y in zip(table["id"].to_pylist(), table["label"].to_pylist(),
                                      strict=True) if i in wanted}


def run_ensemble(*, preds: list[str], cfg: EnsembleConfig, out: Path, fit: list[str] | None = None,
                 fit_labels: str | None = None) -> dict[str, Any]:
    """The `ensemble` stage: --fit validation predictions need --fit-labels."""
    if fit and not fit_labels:
        raise WeblyError("--fit needs --fit-labels (a 'name label' file, e.g. "
                         "info/val_filelist.txt, or the manifest)")
    return ensemble(list(preds), out, cfg.model_weights, list(fit) if fit else None,
                    fit_labels_of(fit_labels, fit[0]) if fit else None, top_k=cfg.top_k,
                    oof=cfg.out_of_fold, fit_metric=cfg.fit_metric, fit_min_se=cfg.fit_min_se,
                    fit_default=cfg.fit_default)
