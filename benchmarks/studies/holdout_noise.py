"""Would a noise-corrected holdout score have seen what the noisy holdout missed? (issue 27)

The recipe's decisions read top-1 agreement with the noisy holdout labels. Where noise is
systematic (asym40: a class flipped to one other at 0.4), one more image right in a flipped class
moves that agreement by 0.6 - 0.4 = 0.2 in expectation, not 1, so the holdout ranks models that
differ there almost alike. With the noise's transition matrix T (T[i, j] = P(noisy j | true i))
and A[k, j] the share of holdout images predicted k and labelled j, A = C T in expectation, where
C[k, i] is the share predicted k whose true class is i; so trace(A T^-1) is an unbiased estimate
of clean top-1 (the forward-correction identity of Patrini et al. 2017, read on a holdout).

T is not known to a user. This script compares, for every model of a benchmark run folder with
both holdout and test predictions:
    noisy      top-1 against the noisy holdout labels (what the recipe reads)
    anchors    trace(A T^-1) with T estimated from one model's holdout probabilities: row i is
               the noisy labels of the `--fraction` x (holdout / classes) images that model
               finds most likely to be i (anchor points; no clean label read)
    oracle     the same with T counted on the training set's clean labels (measuring only: what
               the estimator gives when T is right)
    test       top-1 on the clean test images
A model without holdout predictions (CE for the recipe's compute) is predicted here into
`RUN/holdout_noise/`. Analysis only: no recipe reads this.

    python -m benchmarks.studies.holdout_noise runs/cifar10n-quick-asym40 [--base val_ce] \
        [--fraction 0.1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.datasets import harness


def anchor_transition(probs: np.ndarray, noisy: np.ndarray, fraction: float) -> np.ndarray:
    """T estimated from the images a model finds most typical of each class: their noisy labels."""
    n, C = probs.shape
    k = max(1, int(fraction * n / C))
    T = np.zeros((C, C))
    for i in range(C):
        top = np.argsort(-probs[:, i], kind="stable")[:k]
        T[i] = np.bincount(noisy[top], minlength=C) / k
    return T


def counted_transition(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """T counted from clean and noisy labels of the same images."""
    T = np.zeros((num_classes, num_classes))
    np.add.at(T, (clean, noisy), 1)
    return T / np.maximum(T.sum(1, keepdims=True), 1)


def corrected_scores(pred: np.ndarray, noisy: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Each image's share of trace(A T^-1), which is (1/n) sum_i T^-1[noisy_i, pred_i]: a mean,
    so two models' difference has a paired standard error like plain agreement's (pinv if T is
    singular)."""
    return np.linalg.pinv(T)[noisy, pred]


def corrected_top1(pred: np.ndarray, noisy: np.ndarray, T: np.ndarray) -> float:
    """trace(A T^-1): clean top-1 estimated from agreement with noisy labels."""
    return float(corrected_scores(pred, noisy, T).mean())


def val_preds(run: Path, model: str, work: Path) -> Path:
    """The model's holdout predictions: the recipe's val step, or made here once."""
    if (run / f"val_{model}" / "predictions.parquet").is_file():
        return run / f"val_{model}"
    out = work / f"val_{model}"
    if not (out / "predictions.parquet").is_file():
        from webly.inference.predict import PredictConfig, predict

        predict(run / model, run / "manifest/manifest.parquet", out,
                PredictConfig(split="val", batch_size=500, workers=0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a benchmarks/datasets/cifar10n.py run folder")
    ap.add_argument("--base", default="val_ce", help="the holdout predictions T is estimated from")
    ap.add_argument("--fraction", type=float, default=0.1,
                    help="anchors per class, as a fraction of holdout images per class")
    args = ap.parse_args()
    from webly.core.decisions import paired_se
    from webly.data.manifest import Manifest
    from webly.data.predictions import dense_predictions

    run = args.run
    manifest = Manifest(run / "manifest/manifest.parquet")
    C = manifest.num_classes
    noisy_of_row = np.asarray(manifest.read(["label"])["label"].fill_null(-1).to_numpy())
    clean_of_row = harness.true_labels_of_rows(run, manifest.root)
    train = clean_of_row >= 0
    oracle = counted_transition(clean_of_row[train], noisy_of_row[train], C)
    rows, probs = dense_predictions(run / args.base)
    anchors = anchor_transition(probs, noisy_of_row[rows], args.fraction)
    models = sorted(p.name[len("test_"):] for p in run.glob("test_*")
                    if (run / p.name[len("test_"):] / "model.safetensors").is_file())
    res = {"command": " ".join(["python -m benchmarks.studies.holdout_noise", *sys.argv[1:]]),
           "run": str(run), "base": args.base, "fraction": args.fraction,
           "transition_diagonal": {"anchors": np.round(np.diag(anchors), 3).tolist(),
                                   "oracle": np.round(np.diag(oracle), 3).tolist()},
           "models": {}}
    base_pred = probs.argmax(1)
    for m in models:
        vrows, vprobs = dense_predictions(val_preds(run, m, run / "holdout_noise"))
        trows, tprobs = dense_predictions(run / f"test_{m}")
        pred, noisy = vprobs.argmax(1), noisy_of_row[vrows]
        if not np.array_equal(vrows, rows):
            raise SystemExit(f"{run}: {m}'s holdout predictions and {args.base}'s differ in rows")
        res["models"][m] = {"noisy": round(100 * float(np.mean(pred == noisy)), 2)}
        for name, T in (("anchors", anchors), ("oracle", oracle)):
            cand, base = corrected_scores(pred, noisy, T), corrected_scores(base_pred, noisy, T)
            res["models"][m].update({
                name: round(100 * float(cand.mean()), 2),
                f"{name}_gain_over_base": round(100 * float(cand.mean() - base.mean()), 2),
                f"{name}_paired_se": round(paired_se(base, cand), 2)})
        res["models"][m]["test"] = round(
            100 * float(np.mean(tprobs.argmax(1) == noisy_of_row[trows])), 2)
    print(f"T's diagonal, anchors: {res['transition_diagonal']['anchors']}")
    print(f"T's diagonal, oracle:  {res['transition_diagonal']['oracle']}")
    print(f"{'model':10s} {'noisy':>7s} {'anchors':>8s} {'- base (SE)':>14s} {'oracle':>7s} "
          f"{'- base (SE)':>14s} {'test':>7s}")
    for m, s in res["models"].items():
        a, o = (f"{s[n + '_gain_over_base']:+.2f} ({s[n + '_paired_se']:.2f})"
                for n in ("anchors", "oracle"))
        print(f"{m:10s} {s['noisy']:7.2f} {s['anchors']:8.2f} {a:>14s} {s['oracle']:7.2f} "
              f"{o:>14s} {s['test']:7.2f}")
    (run / "holdout_noise.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
