"""What the evidence believes of each training image: the models' predictions, and with titles
or tags the text's as well (`webly pseudo-label --text`).

A title that names another class than the label is evidence the label is wrong. A keyword-only
classifier is trained out-of-fold on the noisy labels (`webly.labels.textclf`: no image's label
vouches for itself), and each image's class probabilities become the product of the two

    log p(c) = log p_image(c) + text_weight log p_text(c) + const

the Bayes posterior of both views taken as independent given the class: the image models are
trained class-balanced (a uniform prior), the text classifier on the label frequencies (their
prior), so the product counts the prior once. An image without keywords gets p_text uniform: the
images' alone. The text classifier holds images x classes float32 in memory: fine to ~10^8
entries (a few million images on 53 classes), not WebVision's 16M x 5,000.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from webly.core.errors import WeblyError
from webly.data.predictions import iter_predictions, rows_of


def text_probs(tags: str | Path, preds_dir: str | Path, labels: np.ndarray, num_classes: int,
                folds: int) -> dict[int, np.ndarray]:
    """Out-of-fold keyword-classifier probabilities of the predicted rows: row -> [C]."""
    from webly.labels import textclf
    from webly.labels.tagging import load_tags

    keywords, _ = load_tags(tags)
    if keywords.shape[0] != len(labels):
        raise WeblyError(f"{tags} has {keywords.shape[0]} rows but the manifest {len(labels)}: "
                         "tag this manifest")
    rows = rows_of(preds_dir)
    probs = textclf.out_of_fold(keywords[rows], labels[rows], rows, num_classes, folds)
    return {"rows": rows, "probs": probs}  # type: ignore[dict-item]


def first_pass(preds_dir: str | Path, labels: np.ndarray, text: dict | None = None,
                weight: float = 0.0) -> tuple[np.ndarray, ...]:
    """rows, top-1, its probability, ok, and the given label's probability under the images, the
    text and both ([n, 3]; NaN where there is no text or no label)."""
    parts, pos = [], 0
    for p in iter_predictions(preds_dir):
        n = len(p.rows)
        y = labels[p.rows]
        has = y >= 0
        given = np.full((n, 3), np.nan, np.float32)
        # the given label's probability from the top-k alone (no [n, C] array without text)
        given[has, 0] = p.probability_of(y)[has]
        pred, conf = p.top_i[:, 0].astype(np.int64), p.top_p[:, 0].astype(np.float64)
        if text is not None:
            tp = text["probs"][pos:pos + n]
            if not np.array_equal(text["rows"][pos:pos + n], p.rows):
                raise WeblyError(f"{preds_dir}: predictions changed while reading them")
            img = p.dense()
            logp = np.log(np.maximum(img, 1e-8)) + weight * np.log(np.maximum(tp, 1e-8))
            comb = np.exp(logp - logp.max(1, keepdims=True))
            comb /= comb.sum(1, keepdims=True)
            given[has, 1] = tp[has, y[has]]
            given[has, 2] = comb[has, y[has]]
            pred, conf = comb.argmax(1).astype(np.int64), comb.max(1).astype(np.float64)
        else:
            given[:, 2] = given[:, 0]
        parts.append((p.rows, pred, conf, p.ok, given))
        pos += n
    return tuple(np.concatenate(c) for c in zip(*parts, strict=True))
