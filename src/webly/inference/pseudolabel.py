"""`webly pseudo-label`: relabel training images with the best models' confident predictions.

Input: predictions of one model or an ensemble on the training split. An image whose predicted
class differs from its label is relabelled when the prediction is confident: probability >=
`threshold`, or (with `top_fraction`) among the most confident `top_fraction` of that predicted
class's images. With `drop_inconsistent`, an image whose prediction disagrees with its label but
is not confident enough to relabel is dropped (label -1); otherwise it keeps its label.

Text as a check on the label (`--text TAGS`, beyond the seed): a title that names another class
than the label is evidence the label is wrong. A keyword-only classifier is trained out-of-fold on
the noisy labels (webly.labels.textclf: no image's label vouches for itself), and each image's
class probabilities become the product of the two

    log p(c) = log p_image(c) + text_weight log p_text(c) + const

the Bayes posterior of both views taken as independent given the class: the image models are
trained class-balanced (as the seed finetunes: a uniform prior), the text classifier on the label
frequencies (their prior), so the product counts the prior once. An image without keywords gets
p_text uniform: the images' alone. Decisions (agree, relabel, drop) and the suspects' ranking then
read p. Measured on fashion53 at --quick (one labeller): relabelling at p >= 0.5 kept 95.5% of the
training images with 2.4% wrong labels, against 44.4% with 5.7% from the images alone and 75.9%
with 0.6% from a geometric mean (text_weight 0.5 on both). The text classifier holds images x
classes float32 in memory: fine to ~10^8 entries (a few million images on 53 classes), not
WebVision's 16M x 5,000.

The holdout chooses the threshold (`--thresholds 0.3,...,0.9 --probe TRAIN_PREDS HOLDOUT_PREDS`):
the two predictions folders carry one model's features (`predict --features`) on the training
images and on the holdout (the manifest's val split, noisy or clean); a linear probe per
candidate learns the labels that candidate gives and the holdout scores it; `threshold` is the
default the best candidate must beat by `probe_min_se` paired standard errors
(webly.inference.probe). report.json records the choice and every candidate's score.

Outputs in the folder:
    labels.parquet   row, id, label (new; -1 = dropped), original_label, source
                     (original | pseudo | dropped), confidence, and with `soft_k` the top soft_k
                     classes and probabilities (soft targets): `webly finetune --labels` reads it
                     (schema in `webly.data.labels`)
    report.json      labels changed per class, estimated noise rate per class (how often the
                     models disagree with the given label), the most-changed classes
    suspects.tsv     images whose label the models doubt most, with scores, for checking by hand
    scores.parquet   row, id, label, and the given label's probability under the images
                     (p_image), the text (p_text, with --text) and both (p_label): 1 - p_label
                     ranks the labels most likely wrong (what `webly report`'s label-issue
                     explorer sorts by); the class the evidence believes (predicted) and its
                     probability (p_predicted)
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
    text_weight: float = opt(1.0, "with --text: weight of the text's evidence in the product "
                                  "with the images' (0: images only; 1: independent views)")
    text_folds: int = opt(5, "with --text: folds of the out-of-fold text classifier")
    thresholds: list[float] | None = opt(None, "candidate thresholds the holdout chooses among "
                                               "(with --probe), e.g. 0.3,0.5,0.7,0.9; "
                                               "`threshold` is the default they must beat")
    probe_min_se: float = opt(2.0, "with --thresholds: paired standard errors a candidate's "
                                   "probe must beat the default's by on the holdout")
    probe_images: int = opt(100_000, "with --thresholds: training images (a fixed sample) each "
                                     "probe learns from")

    def validate(self) -> None:
        if not 0 <= self.threshold <= 1 or not 0 <= self.top_fraction <= 1:
            raise WeblyError("pseudo-label: threshold and top_fraction must be within [0, 1]")
        if self.soft_k < 0 or self.suspects < 0:
            raise WeblyError("pseudo-label: soft_k and suspects must not be negative")
        if not 0 <= self.text_weight <= 10 or self.text_folds < 2:
            raise WeblyError("pseudo-label: text_weight must be within [0, 10], text_folds >= 2")
        if self.thresholds is not None:
            if not self.thresholds or not all(0 <= t <= 1 for t in self.thresholds):
                raise WeblyError("pseudo-label: thresholds must be one or more values within "
                                 "[0, 1]")
            if self.top_fraction > 0:
                raise WeblyError("pseudo-label: --thresholds chooses a threshold; it cannot be "
                                 "combined with --top-fraction")
            if self.probe_min_se < 0 or self.probe_images < 100:
                raise WeblyError("pseudo-label: probe_min_se >= 0, probe_images >= 100")


def pseudo_label(manifest_path: str | Path, preds_dir: str | Path, out_dir: str | Path,
                 cfg: PseudoLabelConfig, text: str | Path | None = None,
                 probe: list[str] | None = None) -> dict[str, Any]:
    """Two passes over the predictions, a row group at a time: decide (from each image's top-1
    and confidence: 17 bytes an image, or with `text` the product of experts), then write
    labels.parquet with the ids and soft targets."""
    cfg.validate()
    if (cfg.thresholds is None) != (probe is None):
        raise WeblyError("pseudo-label: --thresholds and --probe TRAIN_PREDS HOLDOUT_PREDS go "
                         "together (the probe is how the holdout chooses among them)")
    if probe is not None and len(probe) != 2:
        raise WeblyError("pseudo-label --probe needs two predictions folders: the train split "
                         "and the holdout, both with features.npy")
    manifest = Manifest(manifest_path)
    info = read_info(preds_dir)
    if info["split"] != "train":
        raise WeblyError(f"{preds_dir} holds {info['split']!r} predictions; pseudo-labels need "
                         "train")
    if cfg.soft_k > info["k"]:
        raise WeblyError(f"soft_k {cfg.soft_k} > the {info['k']} classes the predictions keep")
    labels = np.asarray(manifest.read(["label"])["label"].fill_null(-1).to_numpy(), np.int64)
    text_probs = None
    if text is not None:
        text_probs = _text_probs(text, preds_dir, labels, manifest.num_classes, cfg.text_folds)
    rows, pred, conf, ok, given = _first_pass(preds_dir, labels, text_probs, cfg.text_weight)
    original = labels[rows]
    ok &= original >= 0
    disagree = ok & (pred != original)
    decision, threshold = None, cfg.threshold
    if probe is not None:
        decision = _choose(manifest, labels, rows, preds_dir, probe, pred, conf, original,
                           disagree, cfg)
        threshold = decision["threshold"]
    confident = _top_fraction(pred, conf, ok, cfg.top_fraction) if cfg.top_fraction > 0 \
        else conf >= threshold
    new, relabel, drop = _decide(disagree, confident, pred, original, cfg.drop_inconsistent)
    source = np.where(relabel, "pseudo", np.where(drop, "dropped", "original"))
    suspects = np.flatnonzero(disagree)  # the given label's probability low, another's high
    suspects = suspects[np.argsort(-conf[suspects], kind="stable")][: cfg.suspects]
    out = Path(out_dir)
    suspect_ids = _write_labels(out, preds_dir, cfg.soft_k, new, original, source, conf,
                                suspects, given, pred)
    report = _report(manifest, original, pred, ok, disagree, relabel, drop)
    if cfg.top_fraction == 0:
        report["threshold"] = threshold
    if decision is not None:
        report["threshold_decision"] = decision
    write_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    names = manifest.class_names
    lines = [f"{suspect_ids[i]}\t{names[original[i]]}\t{names[pred[i]]}\t{conf[i]:.3f}\n"
             for i in suspects]
    write_atomic(out / "suspects.tsv", "id\tgiven_label\tpredicted\tconfidence\n" + "".join(lines))
    report = {k: v for k, v in report.items() if k not in ("per_class",)}
    if text is not None:
        report["text"] = {"tags": str(text), "weight": cfg.text_weight, "folds": cfg.text_folds}
    return report


def _choose(manifest: Manifest, labels: np.ndarray, rows: np.ndarray, preds_dir: str | Path,
            probe: list[str], pred: np.ndarray, conf: np.ndarray, original: np.ndarray,
            disagree: np.ndarray, cfg: PseudoLabelConfig) -> dict[str, Any]:
    """The threshold the holdout chooses (webly.inference.probe), printed and returned."""
    from webly.data.predictions import load_features
    from webly.inference.probe import choose_threshold, sample

    # the labeller's own folder (the usual case) was read already: its rows are `rows`
    same = Path(probe[0]).resolve() == Path(preds_dir).resolve()
    train_rows, holdout_rows = rows if same else _rows_of(probe[0]), _rows_of(probe[1])
    if not np.array_equal(train_rows, rows):
        raise WeblyError(f"{probe[0]} predicts other images than the {rows.size} training "
                         "images being labelled: predict the same manifest's train split")
    info = [read_info(d) for d in probe]
    if info[1]["split"] != "val":
        raise WeblyError(f"{probe[1]} holds {info[1]['split']!r} predictions; the probe is "
                         "scored on the holdout (val)")
    if [(i.get("model"), i.get("tta")) for i in info] != [(info[0].get("model"),
                                                          info[0].get("tta"))] * 2:
        raise WeblyError(f"{probe[0]} and {probe[1]}: features of one model with the same "
                         "test-time views are needed (model and tta must match)")
    train, holdout = (load_features(d) for d in probe)
    if train.shape[1] != holdout.shape[1] or len(holdout) != len(holdout_rows):
        raise WeblyError(f"{probe[0]} and {probe[1]}: features of different models or a "
                         "truncated features.npy")
    # the labels each candidate gives, on the probe's sample only (never N x candidates)
    pick = sample(len(rows), cfg.probe_images)
    d, c, p, o = disagree[pick], conf[pick], pred[pick], original[pick]
    labels_of = {t: _decide(d, c >= t, p, o, cfg.drop_inconsistent)[0]
                 for t in sorted({cfg.threshold, *cfg.thresholds})}
    res = choose_threshold(train[pick], labels_of, holdout, labels[holdout_rows],
                           manifest.num_classes, cfg.threshold, cfg.probe_min_se)
    print(f"[webly] pseudo-label: threshold {res['threshold']:g}: {res['why']}", flush=True)
    return res


def _decide(disagree: np.ndarray, confident: np.ndarray, pred: np.ndarray,
            original: np.ndarray, drop_inconsistent: bool) -> tuple[np.ndarray, ...]:
    """The rule, in one place for the labels written and the probe's candidates: keep where the
    model agrees, relabel where it disagrees confidently, else drop (or keep): new labels (-1:
    dropped), relabelled, dropped."""
    relabel = disagree & confident
    drop = disagree & ~confident & drop_inconsistent
    return np.where(relabel, pred, np.where(drop, -1, original)), relabel, drop


def _rows_of(preds_dir: str) -> np.ndarray:
    return np.concatenate([p.rows for p in iter_predictions(preds_dir)])


def _text_probs(tags: str | Path, preds_dir: str | Path, labels: np.ndarray, num_classes: int,
                folds: int) -> dict[int, np.ndarray]:
    """Out-of-fold keyword-classifier probabilities of the predicted rows: row -> [C]."""
    from webly.labels import textclf
    from webly.labels.tagging import load_tags

    keywords, _ = load_tags(tags)
    if keywords.shape[0] != len(labels):
        raise WeblyError(f"{tags} has {keywords.shape[0]} rows but the manifest {len(labels)}: "
                         "tag this manifest")
    rows = np.concatenate([p.rows for p in iter_predictions(preds_dir)])
    probs = textclf.out_of_fold(keywords[rows], labels[rows], rows, num_classes, folds)
    return {"rows": rows, "probs": probs}  # type: ignore[dict-item]


def _first_pass(preds_dir: str | Path, labels: np.ndarray, text: dict | None = None,
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
                  suspects: np.ndarray, given: np.ndarray, pred: np.ndarray
                  ) -> dict[int, str]:
    """Second pass: labels.parquet and scores.parquet row group by row group (never every id in
    memory); returns the suspects' ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from webly.files import atomic_path

    writer, pos, wanted, ids = LabelsWriter(out, soft_k), 0, set(suspects.tolist()), {}
    with atomic_path(out / "scores.parquet") as tmp:
        scores = None
        try:
            for p in iter_predictions(preds_dir):
                sl = slice(pos, pos + len(p.ids))
                table = pa.table({"row": p.rows, "id": pa.array(p.ids, pa.string()),
                                  "label": original[sl], "p_image": given[sl, 0],
                                  "p_text": given[sl, 1], "p_label": given[sl, 2],
                                  "predicted": pred[sl], "p_predicted": conf[sl]})
                scores = scores or pq.ParquetWriter(tmp, table.schema)
                scores.write_table(table)
                _write_part(writer, p, sl, soft_k, new, original, source, conf)
                ids.update({pos + j: p.ids[j] for j in range(len(p.ids)) if pos + j in wanted})
                pos += len(p.ids)
        except BaseException:
            writer.abort()
            raise
        finally:
            if scores is not None:
                scores.close()
    writer.close()
    return ids


def _write_part(writer: LabelsWriter, p: Any, sl: slice, soft_k: int, new: np.ndarray,
                original: np.ndarray, source: np.ndarray, conf: np.ndarray) -> None:
    cols = {"row": p.rows, "id": p.ids, "label": new[sl], "original_label": original[sl],
            "source": source[sl].tolist(), "confidence": conf[sl].astype(np.float32)}
    if soft_k:
        cols.update(soft_idx=p.top_i[:, :soft_k], soft_prob=p.top_p[:, :soft_k])
    writer.write(cols)


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


def label_effect(labels: str | Path, truth: np.ndarray | None = None) -> dict[str, Any]:
    """What a pseudo-labelling did to its labels (a labels.parquet): changed, dropped, kept; with
    `truth` (each manifest row's clean label, -1: unknown, as a benchmark or a dataset's truth
    files give it) how many wrong labels it fixed, added and removed. The one reader for the
    report and the benchmarks, so the two cannot disagree."""
    import pyarrow.parquet as pq

    t = pq.read_table(labels, columns=["row", "label", "original_label", "source"]).to_pydict()
    new, orig, src = np.array(t["label"]), np.array(t["original_label"]), np.array(t["source"])
    kept, dropped, pseudo = new >= 0, src == "dropped", src == "pseudo"
    res: dict[str, Any] = {"train_images": len(new), "relabelled": int(pseudo.sum()),
                           "dropped": int(dropped.sum()), "kept": int(kept.sum()),
                           "kept_share": round(int(kept.sum()) / max(len(new), 1), 4)}
    if truth is None:
        return res
    true = truth[np.array(t["row"], dtype=np.int64)]
    known = true >= 0  # only rows with a clean label count as right or wrong
    wrong_before = int(((orig != true) & known).sum())
    wrong_after = int(((new != true) & kept & known).sum())
    res.update(
        images_without_truth=int((~known).sum()),
        wrong_labels_before=wrong_before,
        noise_before=round(wrong_before / max(int(known.sum()), 1), 4),
        relabelled_to_true=int((pseudo & (new == true) & known).sum()),
        relabelled_away_from_true=int((pseudo & (orig == true) & known).sum()),
        dropped_that_were_wrong=int((dropped & (orig != true) & known).sum()),
        wrong_labels_after=wrong_after,
        noise_after=round(wrong_after / max(int((kept & known).sum()), 1), 4),
        wrong_labels_removed=round(1 - wrong_after / max(wrong_before, 1), 4))
    return res


def run_pseudo_label(*, manifest: str, preds: str, cfg: PseudoLabelConfig,
                     out: Path, text: str | None = None,
                     probe: list[str] | None = None) -> dict[str, Any]:
    """The `pseudo-label` stage."""
    return pseudo_label(manifest, preds, out, cfg, text, probe)
