"""`webly evaluate` and `webly submit`: accuracy as WebVision measures it, and its file format.

Metrics: top-1 and top-5 accuracy, plain (over images) and class-balanced (accuracy per class,
averaged over the classes present: the WebVision challenge metric); a per-class table; the
confusion pairs most often mistaken. Images marked skipped by `webly predict` count as wrong.

Submission (`webly submit`): one line per test image, in the order of the manifest (which is the
order of `test_filelist.txt`): the image name, then its 5 most confident 0-based class ids.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from webly.config import opt
from webly.data.labels import read_name_labels
from webly.data.manifest import Manifest
from webly.data.predictions import Predictions, load_predictions
from webly.errors import WeblyError
from webly.files import save_figure, write_atomic


@dataclass
class EvaluateConfig:
    most_confused: int = opt(10, "confusion pairs listed in metrics.json")

    def validate(self) -> None:
        if self.most_confused < 0:
            raise WeblyError("evaluate.most_confused must be >= 0")


@dataclass
class SubmitConfig:
    top_k: int = opt(5, "class ids per line (the WebVision challenge scores 5)")

    def validate(self) -> None:
        if self.top_k < 1:
            raise WeblyError("submit.top_k must be positive")


def align(preds: Predictions, labels: dict[str, int]) -> np.ndarray:
    """Labels in prediction order; error listing ids missing on either side or duplicated."""
    dup = [i for i, n in Counter(preds.ids).items() if n > 1]
    predicted = set(preds.ids)
    missing = [i for i in labels if i not in predicted]
    extra = [i for i in preds.ids if i not in labels]
    for what, ids in (("duplicated in the predictions", dup), ("without a prediction", missing),
                      ("predicted but not labelled", extra)):
        if ids:
            raise WeblyError(f"{len(ids)} image ids {what}, first: {', '.join(ids[:5])}")
    return np.asarray([labels[i] for i in preds.ids], np.int64)


def metrics(top_i: np.ndarray, ok: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, Any]:
    hit1 = (top_i[:, 0] == y) & ok
    hit5 = (top_i[:, :5] == y[:, None]).any(1) & ok
    n = np.bincount(y, minlength=num_classes)
    c1 = np.bincount(y, weights=hit1, minlength=num_classes)
    c5 = np.bincount(y, weights=hit5, minlength=num_classes)
    present = n > 0
    return {"images": int(len(y)), "top1": float(hit1.mean()), "top5": float(hit5.mean()),
            "balanced_top1": float((c1[present] / n[present]).mean()),
            "balanced_top5": float((c5[present] / n[present]).mean()),
            "per_class": {"n": n, "top1": np.where(present, c1 / np.maximum(n, 1), np.nan),
                          "top5": np.where(present, c5 / np.maximum(n, 1), np.nan)}}


def evaluate(preds_dir: str | Path, manifest_path: str | Path, out_dir: str | Path | None = None,
             labels_file: str | Path | None = None, cfg: EvaluateConfig | None = None) -> dict[str,
                                                                                               Any]:
    cfg = cfg or EvaluateConfig()
    preds = load_predictions(preds_dir)
    manifest = Manifest(manifest_path)
    if labels_file:
        labels = read_name_labels(labels_file)
    else:
        t = manifest.read(["id", "label", "split"])
        t = t.filter(pc.and_(pc.equal(t["split"], preds.info["split"]), pc.is_valid(t["label"])))
        labels = dict(zip(t["id"].to_pylist(), t["label"].to_pylist(), strict=True))
        if not labels:
            raise WeblyError(f"{manifest_path} has no labels for split {preds.info['split']!r}; "
                             "pass --labels")
    y = align(preds, labels)
    C = manifest.num_classes
    ok = np.asarray([s == "ok" for s in preds.status])
    m = metrics(preds.top_i, ok, y, C)
    per = m.pop("per_class")
    confusions = Counter(zip(y[~(preds.top_i[:, 0] == y)].tolist(),
                             preds.top_i[~(preds.top_i[:, 0] == y), 0].tolist(), strict=True))
    names = manifest.class_names
    m["most_confused"] = [{"true": names[a], "predicted": names[b], "count": c}
                          for (a, b), c in confusions.most_common(cfg.most_confused)]
    m["skipped_images"] = int((~ok).sum())
    out = Path(out_dir or preds_dir)
    train_freq = _train_frequency(manifest)
    write_atomic(out / "per_class.tsv",
                 "class\twnid\tname\tval_images\ttrain_images\ttop1\ttop5\n" + "".join(
        f"{c}\t{manifest.classes[c]}\t{names[c]}\t{per['n'][c]}\t{train_freq[c]}\t"
        f"{per['top1'][c]:.4f}\t{per['top5'][c]:.4f}\n" for c in range(C)))
    write_atomic(out / "metrics.json", json.dumps(m, indent=1) + "\n")
    _plot(per, train_freq, out)
    return m


def _train_frequency(manifest: Manifest) -> np.ndarray:
    t = manifest.read(["label", "split"])
    labels = t.filter(pc.and_(pc.equal(t["split"], "train"), pc.is_valid(t["label"])))["label"]
    return np.bincount(labels.to_numpy().astype(np.int64), minlength=manifest.num_classes)


def _plot(per: dict[str, np.ndarray], train_freq: np.ndarray, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = per["top1"]
    present = ~np.isnan(acc)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.bar(np.arange(present.sum()), np.sort(acc[present])[::-1], width=1.0, color="C0")
    a.set(xlabel="class (sorted)", ylabel="top-1 accuracy", title="Per-class accuracy", ylim=(0, 1))
    b.scatter(train_freq[present], acc[present], s=12)
    if (train_freq[present] > 0).all():
        b.set_xscale("log")
    b.set(xlabel="training images of the class", ylabel="top-1 accuracy",
          title="Accuracy vs class frequency", ylim=(-0.02, 1.02))
    save_figure(fig, out / "per_class_accuracy.png", dpi=110)


def submit(preds_dir: str | Path, out_file: str | Path,
           cfg: SubmitConfig | None = None) -> dict[str, Any]:
    """Write the WebVision submission file from test-split predictions (top-5 needed)."""
    k = (cfg or SubmitConfig()).top_k
    preds = load_predictions(preds_dir)
    if preds.info["split"] != "test":
        raise WeblyError(f"{preds_dir} holds {preds.info['split']!r} predictions; "
                         "submit needs test")
    if preds.top_i.shape[1] < k:
        raise WeblyError(f"{preds_dir} keeps top-{preds.top_i.shape[1]}; predict with --top-k {k} "
                         "or more")
    dup = [i for i, n in Counter(preds.ids).items() if n > 1]
    if dup:
        raise WeblyError(f"{len(dup)} image ids duplicated in the predictions, first: "
                         f"{', '.join(dup[:5])}")
    order = np.argsort(preds.rows, kind="stable")  # manifest order = test_filelist order
    lines = [f"{preds.ids[i]} {' '.join(str(c) for c in preds.top_i[i, :k])}\n" for i in order]
    out = write_atomic(out_file, "".join(lines))
    return {"submission": str(out), "images": len(lines),
            "skipped_images_submitted_with_their_fallback": sum(s != "ok" for s in preds.status)}


def run_evaluate(*, preds: str, manifest: str, cfg: EvaluateConfig, out: Path,
                 labels: str | None = None) -> dict[str, Any]:
    """The `evaluate` stage."""
    return evaluate(preds, manifest, out, labels, cfg)


def run_submit(*, preds: str, cfg: SubmitConfig, out: Path) -> dict[str, Any]:
    """The `submit` stage."""
    return submit(preds, out, cfg)
