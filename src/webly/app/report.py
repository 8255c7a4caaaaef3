"""`webly report RUN`: one page for any run folder (a recipe's, the demo's, a benchmark's).

It reads what the steps left (`RUN/<id>/step.json` says each folder's stage) and shows what is
there: the results of every `evaluate` step (or a benchmark's rows, from `RUN/benchmark.json`),
what each `pseudo-label` step changed, training images with their thumbnail, web text, keywords
and the WordNet sense each keyword took, the given label, what the models predict and, where a
clean label file exists (`info/train_clean_filelist.txt` beside the data, or a generated set's
`truth/`), the true label; the keyword audit (a keyword-only classifier trained out-of-fold on the
noisy labels, scored against the clean ones), training curves, the keyword distribution and
per-class accuracy; and the label-issue explorer: the training images ranked by how likely their
label is wrong (the last pseudo-label step's `scores.parquet`: 1 - p(label) under the out-of-sample
predictions and, where the run has text, the title's keywords), with thumbnail, text, keywords,
given label, what the evidence believes and how sure; filtered by class and paged in the browser
(the first EXPLORER_MAX images), the whole ranking in `RUN/label_issues.csv` for relabelling. The
clean labels are read only here and only to measure. Writes `RUN/report.html` (images inlined,
except the explorer's thumbnails, which link to the image files) and `RUN/report.md`. Sections
plug into `SECTIONS`.
"""

from __future__ import annotations

import base64
import html
import json
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from webly.app.explorer import label_issues, label_issues_section
from webly.app.runs import Run, decisions
from webly.core.errors import WeblyError
from webly.core.files import write_atomic
from webly.core.progress import duration
from webly.data.labels import label_effect

METRICS = ("top1", "top5", "balanced_top1", "balanced_top5")


def text(value: str, limit: int = 300) -> str:
    """Web text for the page: capped, control characters and lone surrogates shown as U+FFFD (HTML
    forbids the one, UTF-8 cannot hold the other), escaped, and bidi-isolated so a stray
    right-to-left mark cannot reorder the rest of the row."""
    if len(value) > limit:
        value = value[:limit] + "…"
    value = "".join("\ufffd" if unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n" else c
                    for c in value)
    return f"<bdi>{html.escape(value)}</bdi>"


def image(path: Path) -> str:
    if not path.is_file():
        return "(missing)"
    data = base64.b64encode(path.read_bytes()).decode()
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return f'<img src="data:{mime};base64,{data}">'


def table(heads: list[str], rows: list[list[str]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>")


def results(run: Run, names: dict[str, str]) -> list[dict[str, Any]]:
    """Every evaluate step's metrics (named by `names` where given), in %."""
    rows = []
    for sid in names or run.of("evaluate"):
        f = run.path / sid / "metrics.json"
        if f.is_file():
            m = json.loads(f.read_text())
            rows.append({"model": names.get(sid, sid), **{k: m[k] for k in METRICS}})
    return rows


def results_section(run: Run, ctx: dict[str, Any]) -> str:
    bench = run.path / "benchmark.json"
    if bench.is_file():
        b = json.loads(bench.read_text())
        keys = ["compute_units", *METRICS] + (["damage_recovered"] if "damage_recovered"
                                              in b["rows"][0] else [])
        rows = [[text(r["row"]), text(r["model"])] + [f"{r[k]}" for k in keys] for r in b["rows"]]
        return ("<h2>Results (benchmark rows, clean test split)</h2>"
                + table(["row", "model", *[k.replace("_", " ") for k in keys]], rows)
                + f"<p>{text(b.get('command', ''))}</p>")
    rows = [[text(r["model"])] + [f"{100 * r[k]:.1f}" for k in METRICS] for r in ctx["ablation"]]
    # with web text the rows are the seed's pretraining ablation; without, plain results
    head = "Ablation (as in the seed's table)" if run.of("tag") else "Results"
    return (f"<h2>{head}</h2>"
            + table(["model", "top-1", "top-5", "balanced top-1", "balanced top-5"], rows))


NEAR_CHANCE = 1.5  # top-1 under this many times chance: the model learnt little
MOST_DROPPED = 0.5  # a pseudo-label step that keeps under this share of the images


def warnings(run: Run, ctx: dict[str, Any]) -> list[str]:
    """Plain warnings a user must not miss: a model near chance, a pseudo-label step that threw
    most of the training images away, a run that overran its budget."""
    out = []
    classes = run.manifest.num_classes if run.manifest is not None else 0
    for r in ctx["ablation"] if classes > 1 else []:
        chance = 1 / classes
        if r["top1"] < NEAR_CHANCE * chance:
            out.append(f"{r['model']}: top-1 {100 * r['top1']:.1f}% is near chance "
                       f"({100 * chance:.1f}% for {classes} classes): the model learnt little. "
                       "A smaller image size or backbone, more passes a unit (a longer "
                       "budget) or pretrained weights (--pretrained) may help.")
    for p in ctx["pseudo_labels"]:
        if p["train_images"] and p["kept_share"] < MOST_DROPPED:
            out.append(f"{p['step']} kept {p['kept']} of {p['train_images']} training images "
                       f"({100 * p['kept_share']:.0f}%): the model after it trains on under "
                       "half the data; its labeller was likely too weak to judge the labels.")
    b = ctx["budget"]
    if b and b["budget_s"] and b["spent_s"] > 1.1 * b["budget_s"]:
        out.append(f"the run took {duration(b['spent_s'])} of a {duration(b['budget_s'])} "
                   "budget")
    return out


def warnings_section(run: Run, ctx: dict[str, Any]) -> str:
    if not ctx["warnings"]:
        return ""
    return "<h2>Warnings</h2><ul>" + "".join(f"<li>{text(w, 600)}</li>"
                                             for w in ctx["warnings"]) + "</ul>"


def budget(run: Run) -> dict[str, Any] | None:
    """`webly run --data`'s plan against what the run spent: before training (indexing, tagging,
    measuring), each step's seconds (its step.json), the total against the budget."""
    f = run.path / "own_plan.json"
    if not f.is_file():
        return None
    plan = json.loads(f.read_text())["plan"]
    steps = {sid: float(r.get("seconds", 0.0)) for sid, r in run.steps.items()
             if r.get("stage") not in ("index", "tag")}
    before = float(plan.get("spent_s") or 0.0)
    return {"budget_s": plan.get("budget_s"), "estimated_s": plan.get("estimated_s"),
            "before_training_s": before, "steps_s": steps,
            "spent_s": round(before + sum(steps.values()), 1)}


def budget_section(run: Run, ctx: dict[str, Any]) -> str:
    b = ctx["budget"]
    if not b:
        return ""
    rows = [["before training (index, tag, measure)", duration(b["before_training_s"])]]
    rows += [[text(sid), duration(sec)] for sid, sec in b["steps_s"].items()]
    rows += [["<b>total</b>", f"<b>{duration(b['spent_s'])}</b>"]]
    if b["budget_s"]:
        rows += [["the plan's estimate", duration(b["estimated_s"] or 0)],
                 ["the budget", duration(b["budget_s"])]]
    return "<h2>Time against the budget</h2>" + table(["part", "time"], rows)


def decisions_section(run: Run, ctx: dict[str, Any]) -> str:
    if not ctx["decisions"]:
        return ""
    return ("<h2>Decisions made on the holdout</h2>"
            + table(["step", "decision", "why"], [[text(c) for c in r] for r in ctx["decisions"]]))


def pseudo_label_effect(run: Run, step: str, truth: np.ndarray | None) -> dict[str, Any]:
    return {"step": step, **label_effect(run.path / step / "labels.parquet", truth)}


def pseudo_section(run: Run, ctx: dict[str, Any]) -> str:
    parts = []
    for p in ctx["pseudo_labels"]:
        s = (f"<b>{text(p['step'])}</b>: {p['relabelled']} training labels changed, "
             f"{p['dropped']} dropped of {p['train_images']}")
        if "wrong_labels_before" in p:
            s += (f"; {p['relabelled_to_true']} changed to the true class; wrong training labels "
                  f"{p['wrong_labels_before']} → {p['wrong_labels_after']} (against the clean "
                  "labels)")
        parts.append(f"<p>{s}.</p>")
    return "<h2>Pseudo-labels</h2>" + "".join(parts) if parts else ""


def _predicted(run: Run) -> dict[int, str]:
    """Manifest row -> the predicted class of the last train-split prediction, if any."""
    from webly.data.predictions import iter_predictions

    for sid in reversed(run.of("predict") + run.of("ensemble")):
        summary = run.steps[sid].get("summary") or {}
        info = run.path / sid
        if summary.get("split", "") == "train" or "train" in sid:
            try:
                return {int(r): int(i) for p in iter_predictions(info)
                        for r, i in zip(p.rows, p.top_i[:, 0], strict=True)}
            except WeblyError:
                continue
    return {}


def examples(run: Run, ctx: dict[str, Any], n: int = 20) -> list[dict[str, str]]:
    """`n` training images spread over the manifest, with their text, keywords and labels."""
    from webly.labels.tagging import load_tags

    m, tags = run.manifest, run.of("tag")
    if m is None:
        return []
    t = m.read(["path", "split", "label", "title", "tags"]).to_pydict()
    train = [i for i, s in enumerate(t["split"]) if s == "train"]
    keywords, vocab, senses = None, [], []
    if tags:
        keywords, vocab = load_tags(run.path / tags[0])
        rows = [line.split("\t") for line in
                (run.path / tags[0] / "vocab.tsv").read_text().splitlines()[1:]]
        senses = [_sense_name(r[2]) if len(r) > 2 else "" for r in rows]
    pred, truth, names = _predicted(run), ctx["truth"], m.class_names
    out = []
    for i in (np.linspace(0, len(train) - 1, min(n, len(train))).astype(int) if train else []):
        row = train[i]
        kws = [vocab[j] + (f" [{senses[j]}]" if senses[j] else "")
               for j in keywords[row].indices] if keywords is not None else []
        label = t["label"][row]
        out.append({"has_text": bool(t["title"][row] or t["tags"][row]),
                    "image": image(m.image_path(t["path"][row])),
                    "text": text(t["title"][row] or "") + (
                        f"<br><small>{text(', '.join(t['tags'][row]))}</small>"
                        if t["tags"][row] else ""),
                    "keywords": text(", ".join(kws)),
                    "given": text(names[label]) if label is not None and label >= 0 else "",
                    "predicted": text(names[pred[row]]) if row in pred else "",
                    "true": text(names[truth[row]]) if truth is not None and truth[row] >= 0
                    else ""})
    return out


def _sense_name(wnid: str) -> str:
    if not wnid:
        return ""
    from webly.labels.wordnet import synset_from_wnid

    try:
        return synset_from_wnid(wnid).name()
    except WeblyError:
        return wnid


def examples_section(run: Run, ctx: dict[str, Any]) -> str:
    ex = examples(run, ctx)
    if not ex:
        return ""
    has_text = bool(run.of("tag")) or any(e["has_text"] for e in ex)
    names = {"image": "image", "text": "title / tags", "keywords": "keywords [WordNet sense]",
             "given": "given label", "predicted": "predicted", "true": "true label"}
    keys = ["image"] + (["text", "keywords"] if has_text else []) + ["given", "predicted"] + (
        ["true"] if ctx["truth"] is not None else [])
    head = ("Examples: web text, keywords (WT-Set) and their senses, labels" if has_text else
            "Examples: training images and their labels")
    return f"<h2>{head}</h2>" + table([names[k] for k in keys], [[e[k] for k in keys] for e in ex])


def audit(run: Run, ctx: dict[str, Any]) -> dict[str, float] | None:
    """The keyword audit: from the benchmark when it measured it, else computed here when the data
    has clean labels and the run has a tag set."""
    bench = run.path / "benchmark.json"
    if bench.is_file() and "keyword_audit" in (b := json.loads(bench.read_text())):
        return b["keyword_audit"]
    if ctx["truth"] is None or not run.of("tag") or run.manifest is None:
        return None
    from webly.labels import textclf
    from webly.labels.tagging import load_tags

    keywords, _ = load_tags(run.path / run.of("tag")[0])
    labels = run.manifest.read(["label"]).column(0).fill_null(-1).to_numpy()
    rows = np.flatnonzero((ctx["truth"] >= 0) & (labels >= 0))
    if not len(rows):
        return None
    return textclf.audit(keywords[rows], labels[rows], ctx["truth"][rows], rows,
                         run.manifest.num_classes)


def audit_section(run: Run, ctx: dict[str, Any]) -> str:
    a = ctx["audit"]
    if a is None:
        return ""
    return ("<h2>Keyword audit</h2><p>A keyword-only linear classifier, trained out-of-fold on the "
            f"noisy labels and scored against the clean ones: balanced top-1 "
            f"{a['balanced_top1']:.1f}%, top-1 {a['top1']:.1f}% ({a['images_with_keywords']:.1f}% "
            "of the training images have a keyword): how much the keywords say about the "
            "images.</p>")


def figures(run: Run) -> list[tuple[str, Path]]:
    figs = [(f"Training curves ({sid})", run.path / sid / "training_curves.png")
            for sid in run.of("finetune")[-2:]]
    for sid in run.of("tag")[:1]:
        figs += [("Keyword distribution (WT-Set)", run.path / sid / "keyword_distribution.png"),
                 ("Keywords per image", run.path / sid / "keywords_per_image.png")]
    last = run.of("evaluate")[-1:]
    figs += [(f"Per-class accuracy ({sid})", run.path / sid / "per_class_accuracy.png")
             for sid in last]
    return [(t, p) for t, p in figs if p.is_file()]


Section = Callable[[Run, dict[str, Any]], str]
SECTIONS: list[Section] = [warnings_section, results_section, budget_section, decisions_section,
                           pseudo_section, audit_section, examples_section, label_issues_section]


def write_report(run_dir: str | Path, names: dict[str, str] | None = None,
                 title: str = "webly report") -> dict[str, Any]:
    """report.html and report.md for a run folder; `names`: evaluate step -> row name (and the
    rows shown, in that order)."""
    run = Run(Path(run_dir))
    truth = run.truth()
    ctx: dict[str, Any] = {"truth": truth, "ablation": results(run, names or {}),
                           "pseudo_labels": [pseudo_label_effect(run, s, truth)
                                             for s in run.of("pseudo-label")]}
    ctx["audit"] = audit(run, ctx)
    ctx["budget"] = budget(run)
    ctx["warnings"] = warnings(run, ctx)
    ctx["decisions"] = decisions(run)
    ctx["label_issues"] = label_issues(run, ctx)
    figs = figures(run)
    body = "".join(section(run, ctx) for section in SECTIONS)
    plots = "".join(f"<h2>{html.escape(t)}</h2>{image(p)}" for t, p in figs)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
img{{max-width:100%}} td img{{width:64px}}</style>
</head><body><h1>{html.escape(title)}</h1><p>{html.escape(str(run.path))}: {len(run.steps)}
steps. Accuracy in %.</p>{body}{plots}</body></html>"""
    write_atomic(run.path / "report.html", page)
    md = [f"# {title}", ""] + [f"**Warning**: {w}" for w in ctx["warnings"]]
    md += ["", "| model | top-1 | top-5 | balanced top-1 | balanced top-5 |",
           "|---|---:|---:|---:|---:|"]
    md += [f"| {r['model']} | " + " | ".join(f"{100 * r[k]:.1f}" for k in METRICS) + " |"
           for r in ctx["ablation"]]
    md += [""] + [f"Pseudo-labels ({p['step']}): {p['relabelled']} changed, {p['dropped']} "
                  f"dropped of {p['train_images']}." for p in ctx["pseudo_labels"]]
    md += [f"Decision ({d[0]}): {d[1]}: {d[2]}" for d in ctx["decisions"]]
    if ctx["audit"]:
        md.append(f"Keyword audit: balanced top-1 {ctx['audit']['balanced_top1']:.1f}%.")
    if li := ctx["label_issues"]:
        md.append(f"Label issues ({li['step']}): {li['images']} labels ranked in "
                  f"{li['csv']}" + (f"; average precision {li['ap']:.3f} against the clean "
                                    "labels." if "ap" in li else "."))
    md += [""] + [f"![{t}]({p.relative_to(run.path)})" for t, p in figs]
    write_atomic(run.path / "report.md", "\n".join(md) + "\n")
    return {"report": str(run.path / "report.html"), "ablation": ctx["ablation"],
            "pseudo_labels": ctx["pseudo_labels"][0] if ctx["pseudo_labels"] else {},
            "keyword_audit": ctx["audit"], "decisions": ctx["decisions"],
            "warnings": ctx["warnings"], "budget": ctx["budget"],
            "label_issues": {k: v for k, v in (ctx["label_issues"] or {}).items() if k != "page"}}
