"""`webly pseudo-label`: relabel training images with the best models' confident predictions.

Input: predictions of one model or an ensemble on the training split. An image whose predicted
class differs from its label is relabelled when the prediction is confident: probability >=
`threshold`, or (with `top_fraction`) among the most confident `top_fraction` of that predicted
class's images. With `drop_inconsistent`, an image whose prediction disagrees with its label but
is not confident enough to relabel is dropped (label -1); otherwise it keeps its label.

Text as a check on the label (`--text TAGS`, beyond the seed): each image's class probabilities
become the product of the images' and an out-of-fold keyword classifier's
(`webly.inference.evidence`); decisions (agree, relabel, drop) and the suspects' ranking read
that product.

The holdout chooses the threshold (`--thresholds 0.3,...,0.9 --probe TRAIN_PREDS HOLDOUT_PREDS`):
the two predictions folders carry one model's features (`predict --features`) on the training
images and on the holdout (the manifest's val split, noisy or clean); a linear probe per
candidate learns the labels that candidate gives and the holdout scores it; `threshold` is the
default the best candidate must beat by `probe_min_se` paired standard errors
(`webly.inference.probe`). The choice is a `webly.core.decisions.Decision` in `decision.json`.
With `--text-weights 0,0.5,2` the candidates are each text weight x each threshold (what the
text is worth, 0 being the images alone), and with `--against-given` the given labels as they are
join as the default: a round whose labels do not beat them keeps every given label (the report
says `"labels": "given"`), so a recipe that continues training on them spends nothing on text
that says nothing. `--probe-metric balanced_top1` scores the probes as a long-tailed benchmark is
judged: by top-1 the text's class prior alone can look like evidence.

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
from typing import Any, Literal

import numpy as np

from webly.core import decisions
from webly.core.config import opt
from webly.core.decisions import Decision
from webly.core.errors import WeblyError
from webly.core.files import write_atomic
from webly.data.labels import LabelsWriter
from webly.data.manifest import Manifest
from webly.data.predictions import iter_predictions, read_info, rows_of
from webly.inference.evidence import first_pass, text_probs
from webly.inference.probe import choose_labels, choose_threshold, probe_features, sample


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
    text_weights: list[float] | None = opt(None, "with --text and --thresholds: candidate text "
                                                 "weights (0 allowed: the images alone), each "
                                                 "with each threshold; text_weight is the "
                                                 "default")
    probe_metric: Literal["top1", "balanced_top1"] = opt(
        "top1", "with --thresholds: what the holdout scores each probe by (balanced_top1: the "
                "mean of the classes' top-1s, where the recipe is judged by it)")
    against_given: bool = opt(False, "with --thresholds: the given labels, unchanged, are a "
                                     "candidate and the default: the pseudo-labels replace "
                                     "them only where their probe beats the given labels' by "
                                     "probe_min_se SEs, else labels.parquet keeps them all")

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
            if self.probe_metric not in ("top1", "balanced_top1"):
                raise WeblyError(f"pseudo-label: probe_metric top1 or balanced_top1, got "
                                 f"{self.probe_metric!r}")
        elif self.text_weights is not None or self.against_given:
            raise WeblyError("pseudo-label: text_weights and against_given are candidates the "
                             "holdout chooses among: they need --thresholds and --probe")
        if self.text_weights is not None and (
                not self.text_weights or not all(0 <= w <= 10 for w in self.text_weights)):
            raise WeblyError("pseudo-label: text_weights must be one or more values within "
                             "[0, 10]")


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
    if cfg.text_weights is not None and text is None:
        raise WeblyError("pseudo-label: text_weights are weights of the text's evidence: they "
                         "need --text")
    from_text = None
    if text is not None:
        from_text = text_probs(text, preds_dir, labels, manifest.num_classes, cfg.text_folds)
    weights = sorted({cfg.text_weight, *(cfg.text_weights or [])})
    passes = {w: first_pass(preds_dir, labels, from_text, w) for w in weights}
    decision, weight, threshold = None, cfg.text_weight, cfg.threshold
    if probe is not None:
        decision = _choose(manifest, labels, passes, preds_dir, probe, cfg)
        weight, threshold = _candidate(decision.choice, cfg)
    rows, pred, conf, ok, given = passes[weight]
    original = labels[rows]
    ok &= original >= 0
    disagree = ok & (pred != original)
    confident = _top_fraction(pred, conf, ok, cfg.top_fraction) if cfg.top_fraction > 0 \
        else conf >= threshold
    new, relabel, drop = _decide(disagree, confident, pred, original, cfg.drop_inconsistent)
    if decision is not None and decision.choice == GIVEN:  # the round would not pay
        new, relabel, drop = original.copy(), np.zeros_like(relabel), np.zeros_like(drop)
    source = np.where(relabel, "pseudo", np.where(drop, "dropped", "original"))
    suspects = np.flatnonzero(disagree)  # the given label's probability low, another's high
    suspects = suspects[np.argsort(-conf[suspects], kind="stable")][: cfg.suspects]
    out = Path(out_dir)
    suspect_ids = _write_labels(out, preds_dir, cfg.soft_k, new, original, source, conf,
                                suspects, given, pred)
    report = _report(manifest, original, pred, ok, disagree, relabel, drop)
    if cfg.top_fraction == 0:
        report["threshold"] = threshold
    report["labels"] = "given" if decision is not None and decision.choice == GIVEN \
        else "pseudo"
    if text is not None:  # the weight used: the holdout's choice where it chose
        report["text"] = {"tags": str(text), "weight": weight, "folds": cfg.text_folds}
    if decision is not None:
        decisions.write(out, decision)
    write_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    names = manifest.class_names
    lines = [f"{suspect_ids[i]}\t{names[original[i]]}\t{names[pred[i]]}\t{conf[i]:.3f}\n"
             for i in suspects]
    write_atomic(out / "suspects.tsv", "id\tgiven_label\tpredicted\tconfidence\n" + "".join(lines))
    report = {k: v for k, v in report.items() if k not in ("per_class",)}
    if decision is not None:
        report["decision"] = decision.to_json()
    return report


GIVEN = "given"  # the candidate that keeps every given label (against_given)


def _name(weight: float, threshold: float, cfg: PseudoLabelConfig) -> str:
    """A candidate's name: its threshold, with text weights 'w{weight} t{threshold}'."""
    return f"w{weight:g} t{threshold:g}" if cfg.text_weights is not None else f"{threshold:g}"


def _candidate(name: str, cfg: PseudoLabelConfig) -> tuple[float, float]:
    """(text weight, threshold) of a candidate's name (the given labels: the defaults')."""
    if name == GIVEN:
        return cfg.text_weight, cfg.threshold
    if cfg.text_weights is None:
        return cfg.text_weight, float(name)
    w, t = name.split()
    return float(w[1:]), float(t[1:])


def _choose(manifest: Manifest, labels: np.ndarray, passes: dict[float, tuple],
            preds_dir: str | Path, probe: list[str], cfg: PseudoLabelConfig) -> Decision:
    """The label set the holdout chooses (webly.inference.probe): each text weight's product
    with each threshold, and with `against_given` the given labels (the default then); printed
    and returned."""
    rows = next(iter(passes.values()))[0]
    same = Path(probe[0]).resolve() == Path(preds_dir).resolve()
    train, holdout, holdout_rows = probe_features(probe, rows, None if same else rows_of(probe[0]))
    # the labels each candidate gives, on the probe's sample only (never N x candidates)
    pick = sample(len(rows), cfg.probe_images)
    original = labels[rows][pick]
    thresholds = sorted({cfg.threshold, *(cfg.thresholds or [])})
    if cfg.text_weights is None and not cfg.against_given:  # the threshold alone
        _, pred, conf, ok, _ = passes[cfg.text_weight]
        p, c = pred[pick], conf[pick]
        d = ok[pick] & (original >= 0) & (p != original)
        labels_of = {t: _decide(d, c >= t, p, original, cfg.drop_inconsistent)[0]
                     for t in thresholds}
        res = choose_threshold(train[pick], labels_of, holdout, labels[holdout_rows],
                               manifest.num_classes, cfg.threshold, cfg.probe_min_se,
                               cfg.probe_metric)
    else:
        default = (cfg.text_weight, cfg.threshold)
        cands: dict[str, np.ndarray] = {GIVEN: original} if cfg.against_given else {}
        for w, t in sorted(((w, t) for w in passes for t in thresholds),
                           key=lambda c: (abs(c[0] - default[0]), abs(c[1] - default[1]), c)):
            _, pred, conf, ok, _ = passes[w]
            p, c = pred[pick], conf[pick]
            d = ok[pick] & (original >= 0) & (p != original)
            cands[_name(w, t, cfg)] = _decide(d, c >= t, p, original, cfg.drop_inconsistent)[0]
        res = choose_labels(train[pick], cands, holdout, labels[holdout_rows],
                            manifest.num_classes,
                            GIVEN if cfg.against_given else _name(*default, cfg),
                            cfg.probe_min_se, name="pseudo-labels", metric=cfg.probe_metric)
    what = "labels" if res.name == "pseudo-labels" else "threshold"
    print(f"[webly] pseudo-label: {what} {res.choice}: {res.why}", flush=True)
    return res


def _decide(disagree: np.ndarray, confident: np.ndarray, pred: np.ndarray,
            original: np.ndarray, drop_inconsistent: bool) -> tuple[np.ndarray, ...]:
    """The rule, in one place for the labels written and the probe's candidates: keep where the
    model agrees, relabel where it disagrees confidently, else drop (or keep): new labels (-1:
    dropped), relabelled, dropped."""
    relabel = disagree & confident
    drop = disagree & ~confident & drop_inconsistent
    return np.where(relabel, pred, np.where(drop, -1, original)), relabel, drop


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

    from webly.core.files import atomic_path

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


def run_pseudo_label(*, manifest: str, preds: str, cfg: PseudoLabelConfig,
                     out: Path, text: str | None = None,
                     probe: list[str] | None = None) -> dict[str, Any]:
    """The `pseudo-label` stage."""
    return pseudo_label(manifest, preds, out, cfg, text, probe)
