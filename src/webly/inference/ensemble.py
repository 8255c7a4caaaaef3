"""`webly ensemble`: average the class probabilities of several models' predictions.

The models may differ in backbone, pretraining and input size; their predictions must cover the
same images. Weights are equal, given, or fitted on validation predictions of the same models by
minimising the negative log-likelihood of the true labels over the weight simplex. The output is
an ordinary predictions folder, so `webly evaluate` and `webly submit` treat an ensemble exactly as
one model. Models predicted with dense probabilities average exactly; top-k-only predictions
average their kept probabilities (the rest count as 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from webly.config import opt
from webly.data.predictions import Predictions, load_predictions, write_predictions
from webly.errors import WeblyError


@dataclass
class EnsembleConfig:
    model_weights: list[float] | None = opt(None,
                                            "one weight per member, e.g. 2,1,1 (default: equal; "
                                                  "ignored with --fit)")
    top_k: int = opt(5, "classes kept per image in predictions.parquet")

    def validate(self) -> None:
        if self.model_weights is not None and (min(self.model_weights, default=0) < 0
                                               or sum(self.model_weights) <= 0):
            raise WeblyError("ensemble.model_weights must be non-negative and not all zero")
        if self.top_k < 1:
            raise WeblyError("ensemble.top_k must be positive")


def _probs(p: Predictions) -> np.ndarray:
    if p.probs is not None:
        return p.probs.astype(np.float32)
    dense = np.zeros((len(p.ids), p.info["num_classes"]), np.float32)
    np.put_along_axis(dense, p.top_i.astype(np.int64), p.top_p, axis=1)
    return dense


def _check_same(preds: list[Predictions], dirs: list[str]) -> None:
    first = preds[0]
    for p, d in zip(preds[1:], dirs[1:], strict=True):
        if p.ids != first.ids:
            raise WeblyError(f"{d} and {dirs[0]} predict different images (or another order)")
        if p.info["num_classes"] != first.info["num_classes"]:
            raise WeblyError(f"{d} and {dirs[0]} predict different class counts")


def fit_weights(val_preds: list[Predictions], labels: np.ndarray) -> np.ndarray:
    """Simplex weights minimising the NLL of `labels` under the weighted average."""
    ps = np.stack([_probs(p)[np.arange(len(labels)), labels] for p in val_preds])  # M x N
    def nll(z: np.ndarray) -> float:
        w = np.exp(z - z.max())
        w /= w.sum()
        return float(-np.log(np.maximum(w @ ps, 1e-12)).mean())
    res = minimize(nll, np.zeros(len(val_preds)), method="Nelder-Mead", options={"xatol": 1e-4,
                                                                                 "fatol": 1e-7})
    w = np.exp(res.x - res.x.max())
    return w / w.sum()


def ensemble(pred_dirs: list[str], out_dir: str | Path, weights: list[float] | None = None,
             fit_dirs: list[str] | None = None, fit_labels: dict[str, int] | None = None,
             top_k: int = 5) -> dict[str, Any]:
    if len(pred_dirs) < 2:
        raise WeblyError("an ensemble needs at least two predictions folders")
    preds = [load_predictions(d) for d in pred_dirs]
    _check_same(preds, pred_dirs)
    if fit_dirs:
        from webly.inference.evaluate import align

        if len(fit_dirs) != len(pred_dirs):
            raise WeblyError("--fit needs one validation predictions folder per model, in the same "
                             "order")
        val = [load_predictions(d) for d in fit_dirs]
        _check_same(val, fit_dirs)
        w = fit_weights(val, align(val[0], fit_labels or {}))
    elif weights:
        if len(weights) != len(preds) or min(weights) < 0 or sum(weights) <= 0:
            raise WeblyError("model_weights needs one non-negative weight per model, not all zero")
        w = np.asarray(weights, np.float64) / sum(weights)
    else:
        w = np.full(len(preds), 1 / len(preds))
    avg = sum(wi * _probs(p) for wi, p in zip(w, preds, strict=True))
    k = min(top_k, avg.shape[1])
    top_i = np.argsort(-avg, axis=1, kind="stable")[:, :k].astype(np.int32)
    status = ["ok" if all(p.status[i] == "ok" for p in preds) else "skipped: by a member"
              for i in range(len(preds[0].ids))]
    info = {**preds[0].info, "model": "ensemble", "members": pred_dirs, "weights": w.tolist(),
            "dense": True}
    write_predictions(Path(out_dir), {"row": preds[0].rows, "ids": preds[0].ids, "status": status,
                                      "top_i": top_i,
                                      "top_p": np.take_along_axis(avg, top_i, 1).astype(np.float16),
                                      "probs": avg.astype(np.float16)}, info)
    return {"members": pred_dirs, "weights": [round(x, 4) for x in w.tolist()],
            "images": len(status)}


def run_ensemble(*, preds: list[str], cfg: EnsembleConfig, out: Path, fit: list[str] | None = None,
                 fit_labels: str | None = None) -> dict[str, Any]:
    """The `ensemble` stage: --fit validation predictions need --fit-labels."""
    from webly.data.labels import read_name_labels

    if fit and not fit_labels:
        raise WeblyError("--fit needs --fit-labels (a 'name label' file, e.g. "
                         "info/val_filelist.txt)")
    return ensemble(list(preds), out, cfg.model_weights, list(fit) if fit else None,
                    read_name_labels(fit_labels) if fit else None, top_k=cfg.top_k)
