"""The demo's report: `report.html` (self-contained: images inlined) and `report.md`.

It shows the seed's ablation on generated data (no pretraining vs LW-Set vs WT-Set pretraining,
then + pseudo-labels, + ensemble; top-1/top-5 plain and class-balanced on the clean validation
split), the training curves, the keyword distribution, example images with their web text,
keywords and label weights, what pseudo-labelling changed (measured against the generator's
truth, which only the report reads), and per-class accuracy.
"""

from __future__ import annotations

import base64
import html
import json
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from webly.data.manifest import Manifest
from webly.files import write_atomic

ROWS = [("no pretraining", "score_scratch"), ("LW-Set pretraining", "score_lw"),
        ("WT-Set pretraining", "score_wt"), ("WT-Set + pseudo-labels", "score_wt_pl"),
        ("+ ensemble of the above", "score_ens")]


def _text(value: str, limit: int = 300) -> str:
    """Web text for the page: capped, control characters and lone surrogates shown as U+FFFD (HTML
    forbids the one, UTF-8 cannot hold the other), escaped, and bidi-isolated so a stray
    right-to-left mark cannot reorder the rest of the row."""
    if len(value) > limit:
        value = value[:limit] + "…"
    value = "".join("\ufffd" if unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n" else c
                    for c in value)
    return f"<bdi>{html.escape(value)}</bdi>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return f'<img src="data:{mime};base64,{data}">'


def ablation(run: Path) -> list[dict[str, Any]]:
    rows = []
    for name, step in ROWS:
        f = run / step / "metrics.json"
        if f.is_file():
            m = json.loads(f.read_text())
            keys = ("top1", "top5", "balanced_top1", "balanced_top5")
            rows.append({"model": name, **{k: m[k] for k in keys}})
    return rows


def pseudo_label_effect(run: Path) -> dict[str, Any]:
    t = pq.read_table(run / "pl/labels.parquet").to_pylist()
    truth_lines = (run / "data/truth/train_true_labels.txt").read_text().splitlines()
    truth = dict(line.split() for line in truth_lines)
    before = sum(int(truth[r["id"]]) != r["original_label"] for r in t)
    after = sum(int(truth[r["id"]]) != r["label"] for r in t if r["label"] >= 0)
    pseudo = [r for r in t if r["source"] == "pseudo"]
    right = sum(int(truth[r["id"]]) == r["label"] for r in pseudo)
    return {"train_images": len(t), "wrong_labels_before": before, "wrong_labels_after": after,
            "relabelled": len(pseudo), "relabelled_correctly": right}


def examples(run: Path, n: int = 6) -> list[dict[str, Any]]:
    m = Manifest(run / "manifest/manifest.parquet")
    kw = sp.load_npz(run / "tags/keywords.npz").tocsr()
    vocab = [line.split("\t")[0] for line in (run / "tags/vocab.tsv").read_text().splitlines()[1:]]
    w = sp.load_npz(run / "weights/label_weights.npz").tocsr()
    recs = [r for r in m.iter_records() if r.split == "train"]
    picks = np.linspace(0, len(recs) - 1, n).astype(int)
    out = []
    for i in picks:
        r = recs[i]
        row = w[i]
        order = np.argsort(-row.data)[:4]
        out.append({"path": m.root / r.path, "label": m.class_names[r.label], "title": r.title,
                    "tags": ", ".join(r.tags),
                    "keywords": ", ".join(vocab[j] for j in kw[i].indices),
                    "weights": ", ".join(f"{m.class_names[row.indices[j]].split(',')[0]} "
                                         f"{row.data[j]:.2f}"
                                         for j in order)})
    return out


def example_rows(ex: list[dict[str, Any]]) -> str:
    """The examples table's rows: image, label, web text, keywords, label weights."""
    return "".join(
        f"<tr><td>{_img(e['path'])}</td><td>{_text(e['label'])}</td><td>{_text(e['title'])}"
        f"<br><small>{_text(e['tags'])}</small></td><td>{_text(e['keywords'])}</td>"
        f"<td>{_text(e['weights'])}</td></tr>" for e in ex)


def write_report(run: str | Path) -> dict[str, Any]:
    run = Path(run)
    rows = ablation(run)
    pl = pseudo_label_effect(run)
    ex = examples(run)
    tag_stats = json.loads((run / "tags/stats.json").read_text())
    figs = [("Training curves (WT-Set pretrained, finetuned)", run / "ft_wt/training_curves.png"),
            ("Keyword distribution (WT-Set)", run / "tags/keyword_distribution.png"),
            ("Keywords per image", run / "tags/keywords_per_image.png"),
            ("Per-class accuracy (ensemble)", run / "score_ens/per_class_accuracy.png")]
    metrics = ("top1", "top5", "balanced_top1", "balanced_top5")
    cells = ["".join(f"<td>{100 * r[k]:.1f}</td>" for k in metrics) for r in rows]
    table = "".join(f"<tr><td>{html.escape(r['model'])}</td>{c}</tr>"
                    for r, c in zip(rows, cells, strict=True))
    heads = "".join(f"<th>{h}</th>" for h in ("model", "top-1", "top-5", "balanced top-1",
                                              "balanced top-5"))
    ex_heads = "".join(f"<th>{h}</th>" for h in ("image", "label", "title / tags", "keywords",
                                                 "label weights"))
    plots = "".join(f"<h2>{html.escape(t)}</h2>{_img(p)}" for t, p in figs if p.is_file())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>webly demo report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
img{{max-width:100%}} td img{{width:64px}}</style>
</head><body><h1>webly demo report</h1>
<p>Generated WebVision-layout data ({tag_stats['images']} images, text noise and label noise),
timm's <code>test_resnet</code> on a CPU. Accuracy on the clean validation split, in %.</p>
<h2>Ablation (as in the seed's table)</h2>
<table><tr>{heads}</tr>{table}</table>
<h2>Pseudo-labels</h2><p>{pl['relabelled']} training labels changed, {pl['relabelled_correctly']}
of them to the true concept; wrong training labels {pl['wrong_labels_before']} →
{pl['wrong_labels_after']} of {pl['train_images']} (measured against the generator's truth).</p>
<h2>Examples: web text, keywords (WT-Set), label weights (LW-Set)</h2>
<table><tr>{ex_heads}</tr>{example_rows(ex)}</table>
{plots}</body></html>"""
    write_atomic(run / "report.html", page)
    md = ["# webly demo report", "", "| model | top-1 | top-5 | balanced top-1 | balanced top-5 |",
          "|---|---:|---:|---:|---:|"]
    md += [f"| {r['model']} | " + " | ".join(f"{100 * r[k]:.1f}" for k in metrics) + " |"
           for r in rows]
    md += ["",
           f"Pseudo-labels: {pl['relabelled']} changed, {pl['relabelled_correctly']} correct; "
           "wrong "
           f"training labels {pl['wrong_labels_before']} → {pl['wrong_labels_after']} of "
           f"{pl['train_images']}.", ""]
    md += [f"![{t}]({p.relative_to(run)})" for t, p in figs if p.is_file()]
    write_atomic(run / "report.md", "\n".join(md) + "\n")
    return {"report": str(run / "report.html"), "ablation": rows, "pseudo_labels": pl}
