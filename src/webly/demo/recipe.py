"""`webly demo`: the project's front door: `webly run` on a built-in recipe, then a report.

Generated WebVision-layout data -> index -> WT-Set tags -> LW-Set weights -> pretraining on each
-> finetuning from each and from scratch -> predictions -> ensemble labels the training set ->
pseudo-labels -> finetuning on them -> ensemble -> evaluation of every model on the clean
validation split -> submission file -> report.html / report.md. timm's test_resnet at 32 px keeps
it to a few minutes on a 2-core CPU. A second run reuses every finished step.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

TRAIN = dict(backbone="test_resnet", img_size=32, batch_size=32, accum_steps=1, lr=0.05,
             weight_decay=0.0, schedule="cosine", workers=2, log_every=5)


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
    from webly.demo.report import write_report
    from webly.pipeline import run

    if fresh and out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    run(demo_recipe(seed), out)
    result = write_report(out)
    result["seconds"] = round(time.time() - t0, 1)
    print(f"demo report: {Path(result['report']).resolve()}")
    return result
