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

from webly.core.config import opt
from webly.core.errors import WeblyError
from webly.core.files import atomic_path, save_figure, write_atomic
from webly.data.labels import read_name_labels
from webly.data.manifest import Manifest
from webly.data.predictions import Predictions, iter_predictions, read_info


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


class Scores:
    """Top-1/top-5 counts per class, accumulated a batch at a time (memory: C, not N)."""

    def __init__(self, num_classes: int) -> None:
        self.C = num_classes
        self.n, self.c1, self.c5 = (np.zeros(num_classes) for _ in range(3))
        self.skipped = 0
        self.confusions: Counter = Counter()

    def add(self, top_i: np.ndarray, ok: np.ndarray, y: np.ndarray) -> None:
        hit1 = (top_i[:, 0] == y) & ok
        hit5 = (top_i[:, :5] == y[:, None]).any(1) & ok
        self.n += np.bincount(y, minlength=self.C)
        self.c1 += np.bincount(y, weights=hit1, minlength=self.C)
        self.c5 += np.bincount(y, weights=hit5, minlength=self.C)
        self.skipped += int((~ok).sum())
        wrong = top_i[:, 0] != y
        pairs, counts = np.unique(y[wrong].astype(np.int64) * self.C + top_i[wrong, 0],
                                  return_counts=True)
        self.confusions.update(dict(zip(pairs.tolist(), counts.tolist(), strict=True)))

    def result(self) -> dict[str, Any]:
        present, images = self.n > 0, self.n.sum()
        rate = lambda c: np.where(present, c / np.maximum(self.n, 1), np.nan)  # noqa: E731
        return {"images": int(images), "top1": float(self.c1.sum() / max(images, 1)),
                "top5": float(self.c5.sum() / max(images, 1)),
                "balanced_top1": float((self.c1[present] / self.n[present]).mean()),
                "balanced_top5": float((self.c5[present] / self.n[present]).mean()),
                "per_class": {"n": self.n.astype(np.int64), "top1": rate(self.c1),
                              "top5": rate(self.c5)}}


def metrics(top_i: np.ndarray, ok: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, Any]:
    s = Scores(num_classes)
    s.add(top_i, ok, y)
    return s.result()


class _Truth:
    """The true label of each predicted image, checked: no duplicate, none missing, none extra.
    From the manifest (aligned by row: N bytes) or from a 'name label' file (aligned by id)."""

    def __init__(self, manifest: Manifest, split: str, labels_file: str | Path | None) -> None:
        self.by_id = read_name_labels(labels_file) if labels_file else None
        t = manifest.read(["label", "split"])
        wanted = pc.and_(pc.equal(t["split"], split), pc.is_valid(t["label"]))
        self.labels = np.asarray(t["label"].fill_null(-1).to_numpy(), np.int64)
        self.labelled = wanted.to_numpy(zero_copy_only=False)
        train = pc.and_(pc.equal(t["split"], "train"), pc.is_valid(t["label"]))
        self.train_frequency = np.bincount(self.labels[train.to_numpy(zero_copy_only=False)],
                                           minlength=manifest.num_classes)
        if self.by_id is None and not self.labelled.any():
            raise WeblyError(f"{manifest.path} has no labels for split {split!r}; pass --labels")
        self.seen = np.zeros(len(self.labels), bool)
        self.seen_ids: set[str] = set()
        self.manifest = manifest

    def __call__(self, p: Predictions) -> np.ndarray:
        if self.by_id is not None:
            dup = list(dict.fromkeys([i for i in p.ids if i in self.seen_ids]
                                     + [i for i, n in Counter(p.ids).items() if n > 1]))
            extra = [i for i in p.ids if i not in self.by_id]
            self.seen_ids.update(p.ids)
            _fail([("duplicated in the predictions", dup), ("predicted but not labelled", extra)])
            return np.asarray([self.by_id[i] for i in p.ids], np.int64)
        rows, counts = np.unique(p.rows, return_counts=True)
        again = self.seen[p.rows] | np.isin(p.rows, rows[counts > 1])
        self.seen[p.rows] = True
        extra = ~self.labelled[p.rows]
        dup = list(dict.fromkeys(i for i, d in zip(p.ids, again, strict=True) if d))
        _fail([("duplicated in the predictions", dup),
               ("predicted but not labelled", [i for i, e in zip(p.ids, extra, strict=True)
                                               if e])])
        return self.labels[p.rows]

    def check_complete(self) -> None:
        if self.by_id is not None:
            missing = [i for i in self.by_id if i not in self.seen_ids]
        else:
            rows = np.flatnonzero(self.labelled & ~self.seen)[:5]
            ids = self.manifest.read(["id"])["id"].take(rows).to_pylist() if len(rows) else []
            missing = [None] * int((self.labelled & ~self.seen).sum())
            missing[: len(ids)] = ids
        _fail([("without a prediction", missing)])


def _fail(problems: list[tuple[str, list]]) -> None:
    for what, ids in problems:
        if ids:
            raise WeblyError(f"{len(ids)} image ids {what}, first: {', '.join(map(str, ids[:5]))}")


def evaluate(preds_dir: str | Path, manifest_path: str | Path, out_dir: str | Path | None = None,
             labels_file: str | Path | None = None, cfg: EvaluateConfig | None = None
             ) -> dict[str, Any]:
    """Stream the predictions a row group at a time; write metrics, a per-class table, plots."""
    cfg = cfg or EvaluateConfig()
    manifest = Manifest(manifest_path)
    info = read_info(preds_dir)
    truth = _Truth(manifest, info["split"], labels_file)
    scores = Scores(manifest.num_classes)
    for p in iter_predictions(preds_dir):
        scores.add(p.top_i, p.ok, truth(p))
    truth.check_complete()
    m = scores.result()
    per = m.pop("per_class")
    names, C = manifest.class_names, manifest.num_classes
    m["most_confused"] = [{"true": names[key // C], "predicted": names[key % C], "count": c}
                          for key, c in scores.confusions.most_common(cfg.most_confused)]
    m["skipped_images"] = scores.skipped
    out = Path(out_dir or preds_dir)
    train_freq = truth.train_frequency  # from the columns already read
    write_atomic(out / "per_class.tsv",
                 "class\twnid\tname\tval_images\ttrain_images\ttop1\ttop5\n" + "".join(
        f"{c}\t{manifest.classes[c]}\t{names[c]}\t{per['n'][c]}\t{train_freq[c]}\t"
        f"{per['top1'][c]:.4f}\t{per['top5'][c]:.4f}\n" for c in range(C)))
    write_atomic(out / "metrics.json", json.dumps(m, indent=1) + "\n")
    _plot(per, train_freq, out)
    return m


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
    """Write the WebVision submission file from test-split predictions, streamed: one line per
    image in manifest order (= test_filelist order), the image name then its top-k class ids."""
    k = (cfg or SubmitConfig()).top_k
    info = read_info(preds_dir)
    if info["split"] != "test":
        raise WeblyError(f"{preds_dir} holds {info['split']!r} predictions; submit needs test")
    if info["k"] < k:
        raise WeblyError(f"{preds_dir} keeps top-{info['k']}; predict with --top-k {k} or more")
    seen: set[str] = set()
    last_row, images, skipped = -1, 0, 0
    with atomic_path(out_file) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for p in iter_predictions(preds_dir):
            dup = [i for i in p.ids if i in seen] + [i for i, n in Counter(p.ids).items() if n > 1]
            if dup:
                raise WeblyError(f"{len(dup)} image ids duplicated in the predictions, first: "
                                 f"{', '.join(dup[:5])}")
            if p.rows[0] <= last_row or (np.diff(p.rows) <= 0).any():
                raise WeblyError(f"{preds_dir} is not in manifest order (rewrite it with "
                                 "`webly predict` or `webly ensemble`)")
            seen.update(p.ids)
            last_row, images, skipped = int(p.rows[-1]), images + len(p.ids), skipped + int(
                (~p.ok).sum())
            f.writelines(f"{i} {' '.join(map(str, top[:k]))}\n"
                         for i, top in zip(p.ids, p.top_i.tolist(), strict=True))
    return {"submission": str(out_file), "images": images,
            "skipped_images_submitted_with_their_fallback": skipped}


def run_evaluate(*, preds: str, manifest: str, cfg: EvaluateConfig, out: Path,
                 labels: str | None = None) -> dict[str, Any]:
    """The `evaluate` stage."""
    return evaluate(preds, manifest, out, labels, cfg)


def run_submit(*, preds: str, cfg: SubmitConfig, out: Path) -> dict[str, Any]:
    """The `submit` stage."""
    return submit(preds, out, cfg)
