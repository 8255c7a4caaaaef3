"""The own-data recipe's steps from its plan (`recipe_for`) and the report's row names."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from webly.app.own.plan import HOLDOUT, Facts, Plan
from webly.app.own.settings import train_config


def _train_steps(plan: Plan, facts: Facts) -> list[dict[str, Any]]:
    base = {k: v for k, v in asdict(train_config(plan.size, plan.batch)).items()
            if k in ("backbone", "img_size", "augment", "in_memory", "crop_pct", "batch_size",
                     "accum_steps", "lr", "weight_decay", "schedule", "warmup_epochs",
                     "workers", "log_every", "seed")}

    def step(sid: str, **kw: Any) -> dict[str, Any]:
        s = plan.steps[sid]
        return {"id": sid, "manifest": "@manifest", "sampler": "balanced", **kw, **base,
                "epochs": s["epochs"], "samples_per_epoch": s["draws"]}

    top_k = min(facts.classes, 100)
    workers = base["workers"]
    if plan.text:
        first, labeller = "ft_wt", [
            step("pre_wt", stage="pretrain", set="wt", tags="@tags", normalise_targets=True),
            step("ft_wt", stage="finetune", pretrained="@pre_wt", export="best")]
        final = step("final", stage="finetune", labels="@pl", pretrained="@pre_wt",
                     export="best")
    else:
        first, labeller = "ce", [step("ce", stage="finetune", export="best")]
        final = step("final", stage="finetune", labels="@pl", export="best")
    text = {"text": "@tags"} if plan.text else {}
    return [*labeller,
            {"id": "train_preds", "stage": "predict", "model": f"@{first}",
             "manifest": "@manifest", "split": "train", "tta": "flip", "top_k": top_k,
             "batch_size": 500, "workers": workers},
            {"id": "pl", "stage": "pseudo-label", "manifest": "@manifest",
             "preds": "@train_preds", **text, "threshold": 0.5, "drop_inconsistent": True},
            final]


def data_steps(data: Path, sidecar: Path | None, text: bool) -> list[dict[str, Any]]:
    """index (holding out val where the data has none) [-> tag]."""
    index: dict[str, Any] = {"id": "manifest", "stage": "index", "root": str(data.resolve()),
                             "holdout": HOLDOUT}
    if sidecar:
        index["sidecar"] = str(sidecar.resolve())
    tag = {"id": "tags", "stage": "tag", "manifest": "@manifest", "workers": os.cpu_count() or 1}
    return [index, tag] if text else [index]


def recipe_for(plan: Plan, facts: Facts, data: Path, sidecar: Path | None) -> dict[str, Any]:
    """The steps (module docstring): index [-> tag] -> the labeller -> pseudo-labels -> final ->
    both members on val (and test), averaged with weights fitted on val, scored."""
    steps = data_steps(data, sidecar, plan.text)
    steps += _train_steps(plan, facts)
    first = "ft_wt" if plan.text else "ce"
    workers = train_config(plan.size, plan.batch).workers  # the training steps' own rule
    splits = ["val"] + (["test"] if facts.images.get("test") else [])
    for split in splits:
        for member in (first, "final"):
            steps.append({"id": f"{split}_{member}", "stage": "predict", "model": f"@{member}",
                          "manifest": "@manifest", "split": split, "batch_size": 500,
                          "workers": workers})
    for split in splits:
        steps.append({"id": f"{split}_ensemble", "stage": "ensemble",
                      "preds": [f"@{split}_{first}", f"@{split}_final"],
                      "fit": [f"@val_{first}", "@val_final"], "fit_labels": "@manifest",
                      "fit_metric": "top1", "fit_min_se": 2.0})
    scored = splits[-1]
    for member in (first, "final", "ensemble"):
        steps.append({"id": f"score_{member}", "stage": "evaluate",
                      "preds": f"@{scored}_{member}", "manifest": "@manifest"})
    return {"description": f"own data {data}: written by webly run --data (webly.app.own)",
            "steps": steps}


def report_names(plan: Plan, facts: Facts) -> dict[str, str]:
    where = "test" if facts.images.get("test") else "the holdout (noisy labels)"
    first = ("WT-Set pretraining -> finetune (the labeller)" if plan.text
             else "CE (the labeller)")
    return {f"score_{'ft_wt' if plan.text else 'ce'}": f"{first}, on {where}",
            "score_final": f"final: trained on the kept pseudo-labels, on {where}",
            "score_ensemble": f"both averaged, weights fitted on the holdout, on {where}"}
