"""The label-issue explorer, a section of `webly report RUN`: the training labels ranked by how
likely they are wrong, for the people who curate web-scale data (look, fix or drop, train again).

It ranks the last pseudo-label step's `scores.parquet` by p(label) (the given label's probability
under the out-of-sample image predictions and, where the run has text, the title's keyword
classifier), least likely first; writes the whole ranking to `RUN/label_issues.csv`; and puts the
first EXPLORER_MAX images on the page as data, which a small script filters by class and pages
(thumbnails link to the image files, loaded only for the page shown). Where the data has clean
labels, the ranking's average precision and precision at k = the number of wrong labels are
measured against them (the report's only use of them).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from webly.app.runs import Run

EXPLORER_MAX = 20_000  # ranked images the page carries (the CSV holds the whole ranking)
EXPLORER_PAGE = 50


def average_precision(score: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of ranking by `score` (highest first) against `positive`."""
    order = np.argsort(-score, kind="stable")
    hits = positive[order].astype(np.float64)
    if not hits.sum():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def precision_at_k(score: np.ndarray, positive: np.ndarray) -> float:
    """Precision of the top k by `score` (highest first), k = the number of positives."""
    k = int(positive.sum())
    return float(positive[np.argsort(-score, kind="stable")[:k]].mean()) if k else float("nan")


def label_issues(run: Run, ctx: dict[str, Any]) -> dict[str, Any] | None:
    """The training labels ranked most likely wrong first, from the last pseudo-label step's
    scores; writes the whole ranking to RUN/label_issues.csv."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    steps = [sid for sid in run.of("pseudo-label") if (run.path / sid / "scores.parquet").is_file()]
    if not steps or run.manifest is None:
        return None
    step = steps[-1]
    cols = ["row", "id", "label", "p_image", "p_text", "p_label", "predicted", "p_predicted"]
    scores = run.path / step / "scores.parquet"
    if "predicted" not in pq.read_schema(scores).names:  # written before the explorer
        return None
    t = pq.read_table(scores, columns=cols)
    p_label = t["p_label"].to_numpy(zero_copy_only=False)
    keep = np.flatnonzero((t["label"].to_numpy() >= 0) & ~np.isnan(p_label))
    order = keep[np.argsort(p_label[keep], kind="stable")]  # least likely label first
    ranked = t.take(pa.array(order))
    rows = ranked["row"].to_numpy()
    names = np.array(run.manifest.class_names, dtype=object)
    m = run.manifest.read(["path", "title"]).take(pa.array(rows))
    paths = m["path"]
    given, pred = ranked["label"].to_numpy(), ranked["predicted"].to_numpy()
    truth = ctx["truth"]
    table_cols = {"rank": np.arange(1, len(rows) + 1), "row": rows, "id": ranked["id"],
                  "path": paths, "given": names[given].astype(str),
                  "predicted": names[pred].astype(str),
                  **{c: ranked[c] for c in ("p_label", "p_image", "p_text", "p_predicted")}}
    res: dict[str, Any] = {"step": step, "images": len(rows), "csv": "label_issues.csv",
                           "has_text": bool(np.isfinite(ranked["p_text"].to_numpy(
                               zero_copy_only=False)).any())}
    if truth is not None:
        true = truth[rows]
        table_cols["true"] = np.where(true >= 0, names[np.maximum(true, 0)].astype(str), "")
        known = true >= 0
        wrong = (true != given)[known]
        k = int(wrong.sum())
        score = 1 - ranked["p_label"].to_numpy()[known]
        res.update(wrong_labels=k, ap=round(average_precision(score, wrong), 4),
                   precision_at_k=round(precision_at_k(score, wrong), 4) if k else None)
    with open(run.path / "label_issues.csv", "wb") as f:
        pacsv.write_csv(pa.table(table_cols), f)
    res["page"] = _explorer_items(run, ranked.slice(0, EXPLORER_MAX), m.slice(0, EXPLORER_MAX),
                                  truth)
    return res


def _explorer_items(run: Run, ranked: Any, m: Any, truth: np.ndarray | None
                    ) -> list[list[Any]]:
    """[row, thumbnail href, title, keywords, given, predicted, p_label, p_predicted, true] of
    the `ranked` scores, `m` their manifest rows (path, title)."""
    from webly.labels.tagging import load_tags

    rows = ranked["row"].to_numpy()
    titles, paths = m["title"].to_pylist(), m["path"]
    keywords, vocab = (load_tags(run.path / run.of("tag")[0]) if run.of("tag") else (None, []))
    root = Path(run.manifest.root)
    given, pred = ranked["label"].to_numpy(), ranked["predicted"].to_numpy()
    p_label, p_pred = ranked["p_label"].to_numpy(), ranked["p_predicted"].to_numpy()
    items = []
    for i, (row, path) in enumerate(zip(rows.tolist(), paths.to_pylist(), strict=True)):
        kws = [vocab[j] for j in keywords[row].indices[:8]] if keywords is not None else []
        items.append([row, Path(os.path.relpath(root / path, run.path)).as_posix(),
                      (titles[i] or "")[:160], ", ".join(kws), int(given[i]), int(pred[i]),
                      round(float(p_label[i]), 4), round(float(p_pred[i]), 4),
                      int(truth[row]) if truth is not None else -1])
    return items


EXPLORER_JS = """
const D = JSON.parse(document.getElementById('issues-data').textContent);
const PAGE = D.page_size, ALL = D.items.map((_, i) => i); let page = 0, view = ALL;
const sel = document.getElementById('issues-class'), body = document.getElementById('issues-body');
D.classes.forEach((c, i) => { const o = document.createElement('option'); o.value = i;
  o.textContent = c; sel.appendChild(o); });
function cell(tr, value) { const td = document.createElement('td'); td.textContent = value;
  tr.appendChild(td); return td; }
function render() {
  body.textContent = '';
  view.slice(page * PAGE, (page + 1) * PAGE).forEach(i => {
    const r = D.items[i], tr = document.createElement('tr');
    cell(tr, i + 1);
    const img = document.createElement('img'); img.loading = 'lazy'; img.src = r[1];
    img.alt = r[1]; cell(tr, '').appendChild(img);
    const t = cell(tr, r[2]); const kw = document.createElement('small');
    kw.textContent = r[3]; t.appendChild(document.createElement('br')); t.appendChild(kw);
    cell(tr, D.classes[r[4]]); cell(tr, (100 * r[6]).toFixed(1) + '%');
    cell(tr, D.classes[r[5]]); cell(tr, (100 * r[7]).toFixed(1) + '%');
    if (D.has_truth) cell(tr, r[8] >= 0 ? D.classes[r[8]] : '');
    body.appendChild(tr);
  });
  const n = view.length, a = Math.min(n, page * PAGE + 1), b = Math.min(n, (page + 1) * PAGE);
  document.getElementById('issues-where').textContent = `${a}-${b} of ${n}`;
}
function go(d) { const last = Math.max(0, Math.ceil(view.length / PAGE) - 1);
  page = Math.min(last, Math.max(0, page + d)); render(); }
sel.onchange = () => { const c = +sel.value;
  view = c < 0 ? ALL : ALL.filter(i => D.items[i][4] === c || D.items[i][5] === c); page = 0;
  render(); };
document.getElementById('issues-prev').onclick = () => go(-1);
document.getElementById('issues-next').onclick = () => go(1);
render();
"""


def label_issues_section(run: Run, ctx: dict[str, Any]) -> str:
    li = ctx.get("label_issues")
    if not li:
        return ""
    payload = {"classes": list(run.manifest.class_names), "items": li["page"],
               "page_size": EXPLORER_PAGE, "has_truth": ctx["truth"] is not None}
    # no "<" at all inside the script element: web text cannot end it or open a comment there
    data = json.dumps(payload, separators=(",", ":")).replace("<", "\\u003c")
    evidence = "the images' out-of-sample predictions" + (
        " and the title's keywords" if li["has_text"] else "")
    measured = ""
    if "ap" in li:
        measured = (f" Against the clean labels ({li['wrong_labels']} wrong): average precision "
                    f"{li['ap']:.3f}, precision at k = {li['wrong_labels']}: "
                    f"{li['precision_at_k'] if li['precision_at_k'] is not None else 'n/a'}.")
    heads = ["rank", "image", "title / keywords", "given label", "p(given)", "believed",
             "p(believed)"] + (["true label"] if ctx["truth"] is not None else [])
    return (f"<h2 id='label-issues'>Label issues ({html.escape(li['step'])})</h2><p>{li['images']} "
            f"training labels ranked by how likely they are wrong (the given label's probability "
            f"under {evidence}), most doubtful first; the page holds the first "
            f"{min(li['images'], EXPLORER_MAX)}, <a href='{li['csv']}'>{li['csv']}</a> the whole "
            f"ranking for relabelling.{measured}</p>"
            "<p>class (given or believed): <select id='issues-class'><option value='-1'>all"
            "</option></select> <button id='issues-prev'>&lt; previous</button> "
            "<span id='issues-where'></span> <button id='issues-next'>next &gt;</button></p>"
            "<table id='issues'><thead><tr>" + "".join(f"<th>{h}</th>" for h in heads)
            + "</tr></thead><tbody id='issues-body'></tbody></table>"
            f"<script type='application/json' id='issues-data'>{data}</script>"
            f"<script>{EXPLORER_JS}</script>")
