"""How well webly's label-issue ranking finds the wrong labels, beside cleanlab's on the same
predictions (a benchmark-only comparison: `pip install "webly[bench]"`).

    python -m benchmarks.studies.label_issues runs/fashion53-default-shipped --preds train_wt
    python -m benchmarks.studies.label_issues runs/cifar10n-quick-worst --preds train_ce
    python -m benchmarks.studies.label_issues runs/own_data/clothing10_15m --pl issues \
        --preds train_preds_rest --audit /tmp/c10/clothing10/train_label_audit.csv

RUN is a finished run folder whose data has clean training labels (the benchmarks' prepared copies:
`info/train_clean_filelist.txt`, read here only to score), or with --audit a curator's list of
which training labels changed (clothing10's: a real list of label problems). webly ranks by the
pseudo-label step's `scores.parquet` (1 - p(label): the images' predictions and, where the run has
text, the title's keyword classifier); cleanlab gets the same image predictions as full probability
vectors (PREDS must keep every class: `predict --top-k C`) and the same noisy labels: its label
quality score (self-confidence and normalised margin: AP over the whole ranking) and
`find_label_issues` (the set it flags: precision, recall). Metrics: average precision against the
clean labels and precision at k = the number of wrong labels. With --browser, also the time
Chromium takes to load and run RUN/report.html (the explorer's page) against an empty page. Prints
a table; writes RUN/label_issues.benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from webly.app.explorer import average_precision, precision_at_k
from webly.app.report import Run, write_report
from webly.data.predictions import dense_predictions, read_info

REMOVED = "REMOVED_IN_CURATED_SUBSET"  # clothing10's audit: left out of the curated set


def audited(run: Run, audit: Path) -> np.ndarray:
    """Per manifest row, what a curator's audit (`path,raw_label,curated_label`) did with its
    label: 0 kept it, 1 moved it to another class, 2 left the image out of the curated set
    (curated_label empty or `REMOVED`: wrong, unclear or unusable), -1 the audit does not list
    it. Paths match on their last two parts (`class/file`), so the audit's root need not be the
    run's."""
    import csv

    with open(audit, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "raw_label", "curated_label"} <= set(rows[0]):
        sys.exit(f"{audit}: expected a CSV with path, raw_label and curated_label columns")
    kind = {"/".join(Path(r["path"]).parts[-2:]):
            0 if r["curated_label"] == r["raw_label"] else
            2 if r["curated_label"] in ("", REMOVED) else 1 for r in rows}
    paths = run.manifest.read(["path"]).column(0).to_pylist()
    return np.array([kind.get("/".join(Path(q).parts[-2:]), -1) for q in paths])


def load(run: Path, pl: str, preds: str, audit: Path | None = None) -> dict[str, np.ndarray]:
    r = Run(run)
    s = pq.read_table(run / pl / "scores.parquet").to_pydict()
    rows = np.asarray(s["row"])
    label = np.asarray(s["label"])
    kind = None
    if audit is not None:
        kind = audited(r, audit)[rows]
        keep, wrong = (label >= 0) & (kind >= 0), kind > 0
    else:
        truth = r.truth()
        if truth is None:
            sys.exit(f"{run}: its data has no clean training labels to score against (--audit)")
        keep, wrong = (label >= 0) & (truth[rows] >= 0), truth[rows] != label
    info = read_info(run / preds)
    if (k := info["k"]) < (C := info["num_classes"]):
        sys.exit(f"{run / preds} keeps {k} of {C} classes: cleanlab needs full probability "
                 "vectors (predict --top-k C)")
    prow, probs = dense_predictions(run / preds)
    if not np.array_equal(prow, rows):
        sys.exit(f"{preds} and {pl} cover different images")
    return {"label": label[keep], "wrong": wrong[keep],
            **({"kind": kind[keep]} if kind is not None else {}),
            "p_label": np.asarray(s["p_label"], np.float64)[keep],
            "p_image": np.asarray(s["p_image"], np.float64)[keep], "probs": probs[keep]}


def measure(d: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    wrong, out = d["wrong"], {}
    probs = d["probs"] / d["probs"].sum(1, keepdims=True)
    rankings = {"webly (images and text)" if np.isfinite(d["p_label"]).all()
                and not np.allclose(d["p_label"], d["p_image"]) else "webly": 1 - d["p_label"],
                "webly, images only": 1 - d["p_image"]}
    for method in ("self_confidence", "normalized_margin"):
        rankings[f"cleanlab {method}"] = -get_label_quality_scores(d["label"], probs,
                                                                   method=method)
    for name, score in rankings.items():
        out[name] = {"ap": round(average_precision(score, wrong), 4),
                     "precision_at_k": round(precision_at_k(score, wrong), 4)}
        if "kind" in d:  # an audit: the labels moved to a class apart from the images left out
            for k, what in ((1, "moved"), (2, "left_out")):
                part = np.isin(d["kind"], [0, k])
                out[name][f"ap_{what}"] = round(average_precision(score[part],
                                                                  d["kind"][part] == k), 4)
    t0 = time.time()
    flagged = find_label_issues(d["label"], probs)
    out["cleanlab find_label_issues (its flagged set)"] = {
        "flagged": int(flagged.sum()), "precision": round(float(wrong[flagged].mean()), 4),
        "recall": round(float(flagged[wrong].mean()), 4), "seconds": round(time.time() - t0, 1)}
    return out


def browser_load(page: Path) -> dict[str, float] | None:
    """Seconds Chromium takes to load RUN/report.html and run its scripts (--dump-dom), minus an
    empty page's (the browser's own start), median of 3."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        blank = Path(tmp) / "blank.html"
        blank.write_text("<!doctype html><html><body></body></html>")

        def once(p: Path) -> float:
            t0 = time.time()
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                            "--no-first-run", f"--user-data-dir={tmp}/chrome", "--dump-dom",
                            p.resolve().as_uri()], check=True, capture_output=True, timeout=300)
            return time.time() - t0

        base = float(np.median([once(blank) for _ in range(3)]))
        full = float(np.median([once(page) for _ in range(3)]))
    return {"seconds": round(full - base, 2), "empty_page_seconds": round(base, 2),
            "bytes": page.stat().st_size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--pl", default="pl", help="the pseudo-label step")
    ap.add_argument("--preds", required=True, help="its train-split predictions step")
    ap.add_argument("--audit", type=Path,
                    help="a curator's audit of the training labels (clothing10's "
                         "train_label_audit.csv) instead of the data's clean label file")
    ap.add_argument("--browser", action="store_true", help="time the report in Chromium")
    args = ap.parse_args()
    d = load(args.run, args.pl, args.preds, args.audit)
    res = {"run": str(args.run), "images": len(d["wrong"]), "wrong_labels": int(d["wrong"].sum()),
           **({"moved": int((d["kind"] == 1).sum()), "left_out": int((d["kind"] == 2).sum())}
              if "kind" in d else {}),
           "rankings": measure(d)}
    if args.browser:
        report = write_report(args.run)["label_issues"]
        if not report:
            sys.exit(f"{args.run}: the report has no explorer (no pseudo-label step, or its "
                     "scores.parquet predates the explorer: rerun `webly pseudo-label`)")
        res["report"] = {"ranked_on_page": min(report["images"], 20_000),
                         "load": browser_load(args.run / "report.html")}
    (args.run / "label_issues.benchmark.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"{res['images']} training labels, {res['wrong_labels']} wrong "
          f"({100 * res['wrong_labels'] / res['images']:.1f}%)")
    print(f"{'ranking':48s} {'AP':>7s} {'P@k':>7s}" + ("  AP moved  AP left out" if args.audit
                                                         else ""))
    for name, m in res["rankings"].items():
        if "ap" in m:
            parts = (f"  {m['ap_moved']:8.3f}  {m['ap_left_out']:11.3f}" if "ap_moved" in m
                     else "")
            print(f"{name:48s} {m['ap']:7.3f} {m['precision_at_k']:7.3f}{parts}")
        else:
            print(f"{name:48s} flagged {m['flagged']}: precision {m['precision']:.3f}, "
                  f"recall {m['recall']:.3f}")
    if "report" in res:
        print(f"report with the explorer: {json.dumps(res['report'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
