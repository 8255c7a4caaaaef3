"""`webly pseudo-label`: relabel training images with the best models' confident predictions.

Input: predictions of one model or an ensemble on the training split. An image whose predicted
class differs from its label is relabelled when the prediction is confident: probability >=
`threshold`, or (with `top_fraction`) among the most confident `top_fraction` of that predicted
class's images. With `drop_inconsistent`, an image whose prediction disagrees with its label but
is not confident enough to relabel is dropped (label -1); otherwise it keeps its label.

Outputs in the folder:
    labels.parquet   row, id, label (new; -1 = dropped), original_label, source
                     (original | pseudo | dropped), confidence: `webly finetune --labels` reads it
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
from webly.data.labels import write_labels
from webly.data.manifest import Manifest
from webly.data.predictions import load_predictions
from webly.errors import WeblyError
from webly.files import write_atomic


@dataclass
class PseudoLabelConfig:
    threshold: float = opt(0.5, "relabel when the predicted class has at least this probability")
    top_fraction: float = opt(0.0, "instead: relabel the most confident fraction of each "
                                   "predicted class")
    drop_inconsistent: bool = opt(False, "drop images the models contradict but not confidently")
    suspects: int = opt(1000, "rows in suspects.tsv")

    def validate(self) -> None:
        if not 0 <= self.threshold <= 1 or not 0 <= self.top_fraction <= 1:
            raise WeblyError("pseudo-label: threshold and top_fraction must be within [0, 1]")


def pseudo_label(manifest_path: str | Path, preds_dir: str | Path, out_dir: str | Path,
                 cfg: PseudoLabelConfig) -> dict[str, Any]:
    cfg.validate()
    manifest = Manifest(manifest_path)
    preds = load_predictions(preds_dir)
    if preds.info["split"] != "train":
        raise WeblyError(f"{preds_dir} holds {preds.info['split']!r} predictions; pseudo-labels "
                         "need train")
    table = manifest.read(["label"])
    original = np.asarray(table["label"].fill_null(-1).to_numpy(), np.int64)[preds.rows]
    pred, conf = preds.top_i[:, 0].astype(np.int64), preds.top_p[:, 0].astype(np.float64)
    ok = np.asarray([s == "ok" for s in preds.status]) & (original >= 0)
    disagree = ok & (pred != original)
    if cfg.top_fraction > 0:
        confident = np.zeros(len(pred), bool)
        for c in np.unique(pred[ok]):
            members = np.flatnonzero(ok & (pred == c))
            keep = int(np.ceil(cfg.top_fraction * len(members)))
            confident[members[np.argsort(-conf[members], kind="stable")[:keep]]] = True
    else:
        confident = conf >= cfg.threshold
    relabel = disagree & confident
    drop = disagree & ~confident & cfg.drop_inconsistent
    new = np.where(relabel, pred, np.where(drop, -1, original))
    source = np.where(relabel, "pseudo", np.where(drop, "dropped", "original"))
    out = Path(out_dir)
    write_labels(out, {"row": preds.rows, "id": preds.ids, "label": new, "original_label": original,
                       "source": source.tolist(), "confidence": conf.astype(np.float32)})
    C, names = manifest.num_classes, manifest.class_names
    n = np.bincount(original[ok], minlength=C)
    changed = np.bincount(original[relabel], minlength=C)
    noise = np.bincount(original[disagree], minlength=C) / np.maximum(n, 1)
    most = np.argsort(-changed, kind="stable")[:10]
    report = {"images": int(ok.sum()), "relabelled": int(relabel.sum()), "dropped": int(drop.sum()),
              "estimated_noise_rate": float(disagree.sum() / max(ok.sum(), 1)),
              "per_class": [{"class": names[c], "images": int(n[c]),
                             "relabelled_away": int(changed[c]),
                             "estimated_noise_rate": round(float(noise[c]), 4)} for c in range(C)],
              "most_changed": [{"class": names[c], "relabelled_away": int(changed[c]),
                                "to": _most_common_targets(names, pred[relabel & (original == c)])}
                               for c in most if changed[c]]}
    write_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    # suspects: the given label's probability is low while another class's is high
    suspects = np.flatnonzero(disagree)
    suspects = suspects[np.argsort(-conf[suspects], kind="stable")][: cfg.suspects]
    rows = [f"{preds.ids[i]}\t{names[original[i]]}\t{names[pred[i]]}\t{conf[i]:.3f}\n"
            for i in suspects]
    write_atomic(out / "suspects.tsv", "id\tgiven_label\tpredicted\tconfidence\n" + "".join(rows))
    return {k: v for k, v in report.items() if k not in ("per_class",)}


def _most_common_targets(names: list[str], targets: np.ndarray) -> dict[str, int]:
    return dict(Counter(names[p] for p in targets).most_common(3))


def run_pseudo_label(*, manifest: str, preds: str, cfg: PseudoLabelConfig, out: Path) -> dict[str,
                                                                                              Any]:
    """The `pseudo-label` stage."""
    return pseudo_label(manifest, preds, out, cfg)
