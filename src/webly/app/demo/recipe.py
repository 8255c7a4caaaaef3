"""`webly demo`: the project's front door: `webly run` on a built-in recipe, then a report.

Generated WebVision-layout data -> index -> WT-Set tags -> LW-Set weights -> pretraining on each
-> finetuning from each and from scratch -> predictions -> ensemble labels the training set ->
pseudo-labels -> finetuning on them -> ensemble -> evaluation of every model on the clean
validation split -> submission file -> report.html / report.md. timm's test_resnet at 32 px keeps
it to a few minutes on a 2-core CPU. A second run reuses every finished step.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

TRAIN = dict(backbone="test_resnet", img_size=32, batch_size=32, accum_steps=1, lr=0.05,
             weight_decay=0.0, schedule="cosine", augment="resized_crop", crop_pct=0.875,
             workers=2, log_every=5)


def demo_recipe(seed: int = 0) -> dict[str, Any]:
    m = "@manifest"
    steps: list[dict[str, Any]] = [
        {"id": "data", "stage": "synth", "seed": seed,
         "val_per_class": 30},  # 720 val images: SE ~1.6 pts
        {"id": "manifest", "stage": "index", "root": "@data"},
        {"id": "tags", "stage": "tag", "manifest": m, "min_count": 3, "max_df": 0.3, "workers": 2,
         "chunk_rows": 256},  # parts of 256 rows: the demo's tagging shows its progress
        {"id": "weights", "stage": "weigh", "manifest": m, "tags": "@tags"},
        {"id": "wt", "stage": "pretrain", "set": "wt", "manifest": m, "tags": "@tags", "epochs": 16,
         **TRAIN},
        {"id": "lw", "stage": "pretrain", "set": "lw", "manifest": m, "label_weights": "@weights",
         "epochs": 16, **TRAIN},
        {"id": "ft_scratch", "stage": "finetune", "manifest": m, "epochs": 6, **TRAIN},
        {"id": "ft_wt", "stage": "finetune", "manifest": m, "pretrained": "@wt", "epochs": 6,
         **TRAIN},
        {"id": "ft_lw", "stage": "finetune", "manifest": m, "pretrained": "@lw", "epochs": 6,
         **TRAIN},
    ]
    for run in ("ft_scratch", "ft_wt", "ft_lw"):
        steps.append({"id": f"train_{run}", "stage": "predict", "model": f"@{run}", "manifest": m,
                      "split": "train", "workers": 2})
    steps += [
        {"id": "ens_train", "stage": "ensemble", "preds": ["@train_ft_scratch", "@train_ft_wt",
                                                           "@train_ft_lw"]},
        {"id": "pl", "stage": "pseudo-label", "manifest": m, "preds": "@ens_train",
         "threshold": 0.6},
        {"id": "ft_wt_pl", "stage": "finetune", "manifest": m, "labels": "@pl", "pretrained": "@wt",
         "epochs": 6, **TRAIN},
    ]
    models = ["ft_scratch", "ft_lw", "ft_wt", "ft_wt_pl"]
    for run in models:
        steps.append({"id": f"val_{run}", "stage": "predict", "model": f"@{run}", "manifest": m,
                      "split": "val", "workers": 2})
        steps.append({"id": f"score_{run.removeprefix('ft_')}", "stage": "evaluate",
                      "preds": f"@val_{run}", "manifest": m})
    steps += [
        {"id": "val_ens", "stage": "ensemble", "preds": [f"@val_{r}" for r in models]},
        {"id": "score_ens", "stage": "evaluate", "preds": "@val_ens", "manifest": m},
        {"id": "test_ft_wt_pl", "stage": "predict", "model": "@ft_wt_pl", "manifest": m,
         "split": "test", "workers": 2},
        {"id": "submission", "stage": "submit", "preds": "@test_ft_wt_pl"},
    ]
    return {"description": "webly's built-in demo", "steps": steps}


def run_demo(out: Path, *, fresh: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run the demo (reusing finished steps), write its report and `RUN/demo.json`, and end with
    a short table a person reads: the rows, what pseudo-labelling did, where the report is."""
    from webly.app.demo.report import write_report
    from webly.app.pipeline import run
    from webly.core.files import write_atomic

    if fresh and out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    run(demo_recipe(seed), out)
    result = write_report(out)
    result["seconds"] = round(time.time() - t0, 1)
    write_atomic(out / "demo.json", json.dumps(result, indent=1) + "\n")
    print(summary_table(result, out))
    return result


def summary_table(result: dict[str, Any], out: Path) -> str:
    """The demo's last word: the rows (in %, the clean validation split), the pseudo-label
    effect, the label issues and where the report and the numbers are."""
    lines = [f"webly demo: {result['seconds']:.0f} s, {out}", "",
             f"{'model':28s} {'top-1':>6s} {'top-5':>6s} {'bal. top-1':>11s} {'bal. top-5':>11s}"]
    lines += [f"{r['model']:28s} {100 * r['top1']:6.1f} {100 * r['top5']:6.1f} "
              f"{100 * r['balanced_top1']:11.1f} {100 * r['balanced_top5']:11.1f}"
              for r in result["ablation"]]
    pl = result.get("pseudo_labels") or {}
    if pl:
        line = (f"pseudo-labels: {pl['relabelled']} of {pl['train_images']} training labels "
                f"changed, {pl['dropped']} dropped")
        if "wrong_labels_before" in pl:
            line += (f"; wrong labels {pl['wrong_labels_before']} -> {pl['wrong_labels_after']} "
                     "(against the generator's truth)")
        lines += ["", line]
    li = result.get("label_issues") or {}
    if li:
        lines.append(f"label issues: {li['images']} training labels ranked in "
                     f"{out / li['csv']}" + (f" (average precision {li['ap']:.2f})"
                                             if li.get("ap") is not None else ""))
    lines += [f"report: {Path(result['report']).resolve()}",
              f"numbers: {(out / 'demo.json').resolve()}"]
    return "\n".join(lines)
