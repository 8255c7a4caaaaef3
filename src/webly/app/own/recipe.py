"""The own-data recipe's steps from its plan (`recipe_for`) and the report's row names."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from webly.app.own.plan import EPOCH_CAP, HOLDOUT, Facts, Plan
from webly.app.own.settings import train_config, warmup_for


def _train_steps(plan: Plan, facts: Facts) -> list[dict[str, Any]]:
    cfg = train_config(plan.size, plan.batch, plan.backbone, bool(plan.pretrained))
    base = {k: v for k, v in asdict(cfg).items()
            if k in ("backbone", "img_size", "augment", "in_memory", "crop_pct", "batch_size",
                     "accum_steps", "lr", "weight_decay", "schedule", "warmup_epochs",
                     "workers", "log_every", "seed")}

    fresh = {"pretrained": plan.pretrained} if plan.pretrained else {}  # where a model starts

    def step(sid: str, **kw: Any) -> dict[str, Any]:
        s = plan.steps[sid]
        # budgeted: the loop ends on its planned time, whatever the machine's speed does
        # meanwhile; its epochs are then only a bound (a machine much faster than measured)
        timed = ({"epochs": EPOCH_CAP * s["epochs"], "time_budget_s": s["seconds"]}
                 if s.get("seconds") else {"epochs": s["epochs"]})
        return {"id": sid, "manifest": "@manifest", "sampler": "balanced", **base, **kw,
                **timed, "samples_per_epoch": s["draws"],
                "warmup_epochs": warmup_for(s["draws"], plan.batch)}

    top_k = min(facts.classes, 100)
    workers = base["workers"]
    text = {"text": "@tags"} if plan.text else {}
    if plan.text:  # CE labels; the holdout decides whether the text's pseudo-labels pay
        first, when = "ce", {}
        labeller = [step("ce", stage="finetune", export="best", **fresh),
                    {"id": "val_probe", "stage": "predict", "model": "@ce",
                     "manifest": "@manifest", "split": "val", "tta": "center", "top_k": top_k,
                     "features": True, "batch_size": 500, "workers": workers}]
        final = [step("final", stage="finetune", labels="@pl", continue_from="@ce",
                      export="best")]
    else:  # decision 1: half a unit more CE against CE on the holdout (the CIFAR-10N recipe's)
        first, when = "ce", {"when": "not @decide_longer"}
        labeller = [step("ce", stage="finetune", export="best", **fresh),
                    step("ce_more", stage="finetune", continue_from="@ce", export="best"),
                    *[{"id": f"val_{m}", "stage": "predict", "model": f"@{m}",
                       "manifest": "@manifest", "split": "val", "batch_size": 500,
                       "workers": workers} for m in ("ce", "ce_more")],
                    {"id": "decide_longer", "stage": "gate", "rule": "beats",
                     "preds": ["@val_ce", "@val_ce_more"], "labels": "@manifest", "min_se": 1.0},
                    step("ce_rest", stage="finetune", continue_from="@ce_more", export="best",
                         when="@decide_longer"),
                    # no pseudo-label round: the longest CE still ranks the label issues for
                    # the report's explorer (the labelling pass the plan counts either way)
                    {"id": "train_preds_rest", "stage": "predict", "model": "@ce_rest",
                     "manifest": "@manifest", "split": "train", "tta": "flip", "top_k": top_k,
                     "batch_size": 500, "workers": workers, "when": "@decide_longer"},
                    {"id": "issues", "stage": "pseudo-label", "manifest": "@manifest",
                     "preds": "@train_preds_rest", "threshold": 0.5, "drop_inconsistent": True}]
        final = [step("final", stage="finetune", labels="@pl", export="best", seed=1, **fresh,
                      **when)]
    # with text, the holdout chooses the labels final trains on (the decision of `pl`): the given
    # ones (final is then CE continued) unless a text weight x threshold's pseudo-labels beat
    # them by 2 paired SEs, by a linear probe on CE's features per candidate
    choose = ({"thresholds": [0.3, 0.7, 0.9], "text_weight": 1.0, "text_weights": [0, 0.5, 2],
               "against_given": True, "probe": ["@train_preds", "@val_probe"]}
              if plan.text else {})
    return [*labeller,
            # with text one view: where the text does not pay, the pass is compute final lacks
            {"id": "train_preds", "stage": "predict", "model": f"@{first}",
             "manifest": "@manifest", "split": "train", "tta": "center" if plan.text else "flip",
             "top_k": top_k,
             "batch_size": 500, "workers": workers, **({"features": True} if plan.text else {}),
             **when},
            {"id": "pl", "stage": "pseudo-label", "manifest": "@manifest",
             "preds": "@train_preds", **text, "threshold": 0.5, "drop_inconsistent": True,
             **choose},
            *final]


def members(plan: Plan) -> list[str]:
    """The models the answer averages (those a decision skipped drop out)."""
    return ["ce", "final"] if plan.text else ["ce", "ce_more", "ce_rest", "final"]


def data_steps(data: Path, sidecar: Path | None, text: bool) -> list[dict[str, Any]]:
    """index (holding out val where the data has none) [-> tag]."""
    index: dict[str, Any] = {"id": "manifest", "stage": "index", "root": str(data.resolve()),
                             "holdout": HOLDOUT}
    if sidecar:
        index["sidecar"] = str(sidecar.resolve())
    tag = {"id": "tags", "stage": "tag", "manifest": "@manifest", "workers": os.cpu_count() or 1}
    return [index, tag] if text else [index]


def recipe_for(plan: Plan, facts: Facts, data: Path, sidecar: Path | None) -> dict[str, Any]:
    """The steps (`webly.app.own`'s docstring): index [-> tag] -> the labeller [-> decision 1]
    -> pseudo-labels -> final -> the members that ran on val (and test), averaged with weights
    fitted on val, scored."""
    steps = data_steps(data, sidecar, plan.text)
    steps += _train_steps(plan, facts)
    workers = train_config(plan.size, plan.batch, plan.backbone).workers  # the steps' own rule
    splits = ["val"] + (["test"] if facts.images.get("test") else [])
    done = set() if plan.text else {"val_ce", "val_ce_more"}  # decision 1's predictions
    for split in splits:
        for member in members(plan):
            if f"{split}_{member}" not in done:
                steps.append({"id": f"{split}_{member}", "stage": "predict",
                              "model": f"@{member}", "manifest": "@manifest", "split": split,
                              "batch_size": 500, "workers": workers})
    for split in splits:
        steps.append({"id": f"{split}_ensemble", "stage": "ensemble",
                      "preds": [f"@{split}_{m}" for m in members(plan)],
                      "fit": [f"@val_{m}" for m in members(plan)], "fit_labels": "@manifest",
                      "fit_metric": "top1", "fit_min_se": 2.0, "fit_default": "last"})
    scored = splits[-1]
    for member in [*members(plan), "ensemble"]:
        steps.append({"id": f"score_{member}", "stage": "evaluate",
                      "preds": f"@{scored}_{member}", "manifest": "@manifest"})
    return {"description": f"own data {data}: written by webly run --data (webly.app.own)",
            "steps": steps}


def report_names(plan: Plan, facts: Facts) -> dict[str, str]:
    where = "test" if facts.images.get("test") else "the holdout (noisy labels)"
    if plan.text:
        names = {"ce": "CE (1 unit; the labeller)",
                 "final": "final: CE continued on the labels the holdout chose (the given ones "
                          "or the text's pseudo-labels)"}
    else:
        names = {"ce": "CE (1 unit; the labeller)", "ce_more": "CE continued (+0.5 unit)",
                 "ce_rest": "CE continued (+1.5 units; decision 1: more CE paid)",
                 "final": "final: trained on the kept pseudo-labels (decision 1: more CE did "
                          "not pay)"}
    names["ensemble"] = "the models that ran, averaged (weights fitted on the holdout)"
    return {f"score_{k}": f"{v}, on {where}" for k, v in names.items()}
