"""`webly pseudo-label`: relabel training images with the best models' confident predictions.

Input: predictions of one model or an ensemble on the training split. An image whose predicted
class differs from its label is relabelled when the prediction is confident: probability >=
`threshold`, or (with `top_fraction`) among the most confident `top_fraction` of that predicted
class's images. With `drop_inconsistent`, an image whose prediction disagrees with its label but
is not confident enough to relabel is dropped (label -1); otherwise it keeps its label.

Outputs in the folder:
    labels.parquet   row, id, label (new; -1 = dropped), original_label, source
                     (original | pseudo | dropped), confidence, and with `soft_k` the top soft_k
                     classes and probabilities (soft targets): `webly finetune --labels` reads it
                     (schema in `webly.data.labels`)
    report.json      labels changed per class, estimated noise rate per class (how often the
                     models disagree with the given label), the most-changed classes
    suspects.tsv     images whose label the models doubt most, with scores, for checking by hand
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from webly.config import opt
from webly.data.labels import LabelsWriter
from webly.data.manifest import Manifest
from webly.data.predictions import iter_predictions, read_info
from webly.errors import WeblyError
from webly.files import write_atomic


@dataclass
class PseudoLabelConfig:
    threshold: float = opt(0.5, "relabel when the predicted class has at least this probability")
    top_fraction: float = opt(0.0, "instead: relabel the most confident fraction of each "
                                   "predicted class")
    drop_inconsistent: bool = opt(False, "drop images the models contradict but not confidently")
    suspects: int = opt(1000, "rows in suspects.tsv")
    soft_k: int = opt(0, "also store each image's top soft_k classes and probabilities (soft "
                         "targets); 0: hard labels only")

    def validate(self) -> None:
        if not 0 <= self.threshold <= 1 or not 0 <= self.top_fraction <= 1:
            raise WeblyError("pseudo-label: threshold and top_fraction must be within [0, 1]")
        if self.soft_k < 0 or self.suspects < 0:
            raise WeblyError("pseudo-label: soft_k and suspects must not be negative")


def pseudo_label(manifest_path: str | Path, preds_dir: str | Path, out_dir: str | Path,
                 cfg: PseudoLabelConfig) -> dict[str, Any]:
    """Two passes over the predictions, a row group at a time: decide (from each image's top-1
    and confidence: 17 bytes an image), then write labels.parquet with the ids and soft targets."""
    cfg.validate()
    manifest = Manifest(manifest_path)
    info = read_info(preds_dir)
    if info["split"] != "train":
        raise WeblyError(f"{preds_dir} holds {info['split']!r} predictions; pseudo-labels need "
                         "train")
    if cfg.soft_k > info["k"]:
        raise WeblyError(f"soft_k {cfg.soft_k} > the {info['k']} classes the predictions keep")
    rows, pred, conf, ok = _first_pass(preds_dir)
    labels = manifest.read(["label"])["label"].fill_null(-1).to_numpy()
    original = np.asarray(labels, np.int64)[rows]
    ok &= original >= 0
    disagree = ok & (pred != original)
    confident = _top_fraction(pred, conf, ok, cfg.top_fraction) if cfg.top_fraction > 0 \
        else conf >= cfg.threshold
    relabel = disagree & confident
    drop = disagree & ~confident & cfg.drop_inconsistent
    new = np.where(relabel, pred, np.where(drop, -1, original))
    source = np.where(relabel, "pseudo", np.where(drop, "dropped", "original"))
    suspects = np.flatnonzero(disagree)  # the given label's probability low, another's high
    suspects = suspects[np.argsort(-conf[suspects], kind="stable")][: cfg.suspects]
    out = Path(out_dir)
    suspect_ids = _write_labels(out, preds_dir, cfg.soft_k, new, original, source, conf, suspects)
    report = _report(manifest, original, pred, ok, disagree, relabel, drop)
    write_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    names = manifest.class_names
    lines = [f"{suspect_ids[i]}\t{names[original[i]]}\t{names[pred[i]]}\t{conf[i]:.3f}\n"
             for i in suspects]
    write_atomic(out / "suspects.tsv", "id\tgiven_label\tpredicted\tconfidence\n" + "".join(lines))
    return {k: v for k, v in report.items() if k not in ("per_class",)}


def _first_pass(preds_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    parts = [(p.rows, p.top_i[:, 0].astype(np.int64), p.top_p[:, 0].astype(np.float64), p.ok)
             for p in iter_predictions(preds_dir)]
    return tuple(np.concatenate(c) for c in zip(*parts, strict=True))  # type: ignore[return-value]


def _top_fraction(pred: np.ndarray, conf: np.ndarray, ok: np.ndarray,
                  fraction: float) -> np.ndarray:
    """The most confident `fraction` of each predicted class's images (ties: the earlier row),
    by one sort over all images: O(N log N) whatever the number of classes."""
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort((-conf[idx], pred[idx]))]  # by class, most confident first
    p = pred[order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]]) if len(p) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(p)])
    rank = np.arange(len(p)) - np.repeat(starts, sizes)
    confident = np.zeros(len(pred), bool)
    confident[order[rank < np.ceil(fraction * np.repeat(sizes, sizes))]] = True
    return confident


def _write_labels(out: Path, preds_dir: str | Path, soft_k: int, new: np.ndarray,
                  original: np.ndarray, source: np.ndarray, conf: np.ndarray,
                  suspects: np.ndarray) -> dict[int, str]:
    """Second pass: labels.parquet row group by row group; returns the suspects' ids."""
    writer, pos, wanted, ids = LabelsWriter(out, soft_k), 0, set(suspects.tolist()), {}
    try:
        for p in iter_predictions(preds_dir):
            sl = slice(pos, pos + len(p.ids))
            cols = {"row": p.rows, "id": p.ids, "label": new[sl], "original_label": original[sl],
                    "source": source[sl].tolist(), "confidence": conf[sl].astype(np.float32)}
            if soft_k:
                cols.update(soft_idx=p.top_i[:, :soft_k], soft_prob=p.top_p[:, :soft_k])
            writer.write(cols)
            ids.update({pos + j: p.ids[j] for j in range(len(p.ids)) if pos + j in wanted})
            pos += len(p.ids)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return ids


def _report(manifest: Manifest, original: np.ndarray, pred: np.ndarray, ok: np.ndarray,
            disagree: np.ndarray, relabel: np.ndarray, drop: np.ndarray) -> dict[str, Any]:
    C, names = manifest.num_classes, manifest.class_names
    n = np.bincount(original[ok], minlength=C)
    changed = np.bincount(original[relabel], minlength=C)
    noise = np.bincount(original[disagree], minlength=C) / np.maximum(n, 1)
    most = np.argsort(-changed, kind="stable")[:10]
    return {"images": int(ok.sum()), "relabelled": int(relabel.sum()), "dropped": int(drop.sum()),
            "estimated_noise_rate": float(disagree.sum() / max(ok.sum(), 1)),
            "per_class": [{"class": names[c], "images": int(n[c]),
                           "relabelled_away": int(changed[c]),
                           "estimated_noise_rate": round(float(noise[c]), 4)} for c in range(C)],
            "most_changed": [{"class": names[c], "relabelled_away": int(changed[c]),
                              "to": _most_common_targets(names, pred[relabel & (original == c)])}
                             for c in most if changed[c]]}


def _most_common_targets(names: list[str], targets: np.ndarray) -> dict[str, int]:
    return dict(Counter(names[p] for p in targets).most_common(3))


def run_pseudo_label(*, manifest: str, preds: str, cfg: PseudoLabelConfig,
                     out: Path) -> dict[str, Any]:
    """The `pseudo-label` stage."""
    return pseudo_label(manifest, preds, out, cfg)
