"""`webly run --data DIR [--budget 30m]`: the recipe for one's own data, sized from the data and
the time it may take.

DIR is class folders (`DIR/<class>/...`, or `DIR/train/<class>/...` with optional `val/` and
`test/`) with an optional sidecar of titles/tags (`DIR/text.jsonl` or `DIR/text.csv`, see
`webly.data.folder`), or a WebVision-layout tree. What is decided, in order:

1. index the data (`RUN/manifest`); without a val split, 10% of each class's training images
   are held out with their labels (a noisy holdout): every choice below is read there.
2. the text: with titles/tags on at least half the training images, tag them (`RUN/tags`): the
   holdout then decides what the text is worth (below); otherwise the images alone.
3. the image size: the largest of `SIZES` up to the images' own (median short side) at which the
   budget still affords `MIN_PASSES` passes over the training images per compute unit, and not
   below `MIN_SCALE` of a thumbnail's size nor, for photos, `MIN_SIZE` (the smallest such size
   when none affords them); the backbone follows the size (`backbone_for`). With no budget: the
   images' own size and 30 passes.
4. the epochs: what a draw costs is measured on this machine in seconds (a few optimizer steps
   of the backbone at the batch it trains with, and a few of the real images decoded at the
   size: `measure`); each step's epochs (and draws per epoch, so a fraction of an epoch counts)
   fill the budget left after indexing, tagging and measuring, counting validation, inference
   passes and decoding too. Each training step's loop then ends on its planned time
   (`time_budget_s`: its lr schedule follows the time spent), so the call ends on the budget
   when the machine's speed drifts from what was measured. A step that trains from random
   weights gets at least `MIN_STEPS` optimizer steps (the batch halves, down to 16, until it
   does; a plan that cannot says so) and a warmup of at least 100 (`settings.warmup_for`).

The recipe (`RUN/recipe.yaml`) and the plan behind it (`RUN/own_plan.json`) are written once; a
rerun reads them back (nothing is measured again) and resumes, like any recipe.

The steps. With text (the fashion53 system, BENCHMARKS.md): CE (1 unit) labels the training
images; the text joins as evidence (`pseudo-label --text`) and the holdout chooses the labels the
rest trains on, by a linear probe on CE's features per candidate: the given labels unless the
pseudo-labels of a text weight (0: the images alone) x threshold beat them by two paired SEs;
final continues CE on them (2 units: on the given labels it is CE continued, so text that says
nothing costs nothing). Without text, the
CIFAR-10N recipe's decision 1: CE (1 unit) -> half a unit more of it (ce_more); where it beat CE
on the holdout by a paired standard error, CE still learns from its labels and the rest (1.5
units) continues it (ce_rest); otherwise CE labels the training images, pseudo-labels keep what
it agrees with, and a new model trains on them (final, 1.5 units). The answer is the last model
trained unless an average of the models that ran, weights fitted on the holdout by top-1, beats
it there by two paired standard errors. The WT-Set and LW-Set chains are left out: on the
real-text benchmark neither beat plain CE as a labeller or a row (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from webly.app.own.measure import measure
from webly.app.own.plan import (
    BRANCHES,
    EPOCH_CAP,
    HOLDOUT,
    IMAGE_STEPS,
    MAX_PASSES,
    MIN_PASSES,
    MIN_PASSES_PRETRAINED,
    MIN_SCALE,
    MIN_SIZE,
    MIN_TEXT_SHARE,
    NO_BUDGET_PASSES,
    SIDECARS,
    SIZES,
    TEXT_STEPS,
    Facts,
    Plan,
    facts_of,
    optimizer_steps,
    parse_budget,
    plan_for,
    seconds,
    solve_passes,
    step_sizes,
    train_seconds,
)
from webly.app.own.recipe import data_steps, recipe_for, report_names
from webly.app.own.settings import Measured, backbone_for, batch_for, train_config
from webly.core.errors import WeblyError
from webly.core.files import write_atomic
from webly.core.progress import duration

__all__ = ["BRANCHES", "EPOCH_CAP", "HOLDOUT", "IMAGE_STEPS", "MAX_PASSES", "MIN_PASSES",
           "MIN_PASSES_PRETRAINED", "MIN_SCALE", "MIN_SIZE", "MIN_TEXT_SHARE", "NO_BUDGET_PASSES",
           "SIDECARS", "SIZES", "TEXT_STEPS",
           "Facts", "Measured", "Plan", "backbone_for", "batch_for", "data_steps", "facts_of",
           "measure", "optimizer_steps", "parse_budget", "plan_for", "prepare", "recipe_for",
           "report_names", "run_own", "seconds", "solve_passes", "starting_weights",
           "the_model",
           "step_sizes", "train_config", "train_seconds"]


def _log(message: str) -> None:
    print(f"[webly] {message}", file=sys.stderr, flush=True)


def _sidecar(data: Path) -> Path | None:
    found = [data / n for n in SIDECARS if (data / n).is_file()]
    return found[0] if found else None


def starting_weights(spec: str | None, backbone: str | None, out: Path,
                     log: Any = _log) -> tuple[tuple[str, str] | None, str]:
    """`--pretrained SPEC [--backbone NAME]` resolved once, before anything is measured: the
    weights saved as RUN/pretrained.safetensors (every step loads that file, so a timm download
    happens once), with their backbone, and where they came from. A timm name is its own
    backbone; a weights file needs --backbone."""
    if not spec:
        if backbone:
            raise WeblyError("--backbone with --data needs --pretrained (weights to start from); "
                             "from scratch the plan chooses the backbone")
        return None, ""
    from webly.training.checkpoints import pretrained_weights

    name = spec.removeprefix("timm:")
    is_file = Path(spec).exists() or "/" in spec or Path(spec).suffix in (
        ".pt", ".pth", ".bin", ".safetensors")
    if is_file and not backbone:
        raise WeblyError(f"--pretrained {spec}: a weights file needs --backbone naming its "
                         "architecture (a timm model name, e.g. resnet18)")
    backbone = backbone or name.split(".")[0]
    target = out / "pretrained.safetensors"
    if not target.is_file():
        from safetensors.torch import save_file

        from webly.training.models import create_backbone, load_all_but_head

        weights, source = pretrained_weights(spec, backbone)
        load_all_but_head(create_backbone(backbone, 2), weights)  # fits, or a one-line error
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(target))
        (out / "pretrained.json").write_text(json.dumps({"spec": spec, "source": source,
                                                         "backbone": backbone}) + "\n")
        log(f"starting weights: {source} -> {target}")
    return (str(target.resolve()), backbone), json.loads(
        (out / "pretrained.json").read_text())["source"]


def prepare(data: str | Path, out: str | Path, budget: str | None = None,
            log: Any = _log, pretrained: str | None = None,
            backbone: str | None = None) -> tuple[Plan, dict[str, Any]]:
    """Index (and tag) the data, measure, plan: the recipe and its plan, written to `out` (or
    read back from there when an earlier run wrote them)."""
    from webly.app.pipeline import run

    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise WeblyError(f"--data {data}: not a folder (expected class folders, or a WebVision "
                         "tree with info/)")
    plan_file, recipe_file = out / "own_plan.json", out / "recipe.yaml"
    if plan_file.is_file() and recipe_file.is_file():
        saved = json.loads(plan_file.read_text())
        if saved["data"] != str(data.resolve()):
            raise WeblyError(f"{out} holds a run of {saved['data']}, not {data}: choose another "
                             "-o, or delete it")
        if budget and parse_budget(budget) != saved["plan"]["budget_s"]:
            log(f"{plan_file} was planned for another budget: kept (delete it to plan again)")
        return Plan(**saved["plan"]), yaml.safe_load(recipe_file.read_text())
    budget_s = parse_budget(budget) if budget else None
    t0 = time.monotonic()
    start, source = starting_weights(pretrained, backbone, out, log)
    sidecar = _sidecar(data)
    run({"steps": data_steps(data, sidecar, False)}, out, log=log)
    facts = facts_of(out / "manifest" / "manifest.parquet")
    if "val" not in facts.images:
        raise WeblyError(f"{data}: no val split and none held out (too few images a class?)")
    if facts.text_share >= MIN_TEXT_SHARE:
        run({"steps": data_steps(data, sidecar, True)}, out, log=log)
    if budget_s:
        log("measuring the training loop on this machine's cores, with these images")
    plan = plan_for(facts, out / "manifest" / "manifest.parquet", budget_s,
                    time.monotonic() - t0, pretrained=start)
    recipe = recipe_for(plan, facts, data, sidecar)
    write_atomic(recipe_file, yaml.safe_dump(recipe, sort_keys=False))
    write_atomic(plan_file, json.dumps({"data": str(data.resolve()), "facts": asdict(facts),
                                        "plan": asdict(plan), "pretrained_from": source},
                                       indent=1) + "\n")
    return plan, recipe


def the_model(out: Path, plan: Plan) -> Path:
    """RUN/model: the last model the recipe trained (decision 1 chose which: `ce_rest` or
    `final`), a link to its folder (a copy of its exported files where links are refused), so
    that `webly classify RUN/model` is one command whatever was decided."""
    import shutil

    from webly.app.own.recipe import members

    trained = [m for m in members(plan) if (out / m / "model.safetensors").is_file()]
    if not trained:
        raise WeblyError(f"{out}: no model was exported")
    link = out / "model"
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    try:
        link.symlink_to(trained[-1], target_is_directory=True)
    except OSError:
        link.mkdir()
        for f in ("model.safetensors", "model.json"):
            shutil.copy2(out / trained[-1] / f, link / f)
    return link


def run_own(data: str | Path, out: str | Path, budget: str | None = None, *,
            dry_run: bool = False, log: Any = _log, pretrained: str | None = None,
            backbone: str | None = None) -> dict[str, Any]:
    """`webly run --data DIR`: plan (once), run the recipe, write the report."""
    from webly.app.pipeline import run
    from webly.app.report import write_report

    t0 = time.time()
    out = Path(out)
    plan, recipe = prepare(data, out, budget, log, pretrained, backbone)
    for line in plan.lines():
        log(line)
    if dry_run:
        return {"run_dir": str(out), "plan": str(out / "own_plan.json")}
    result = run(out / "recipe.yaml", out, log=log)
    facts = Facts(**json.loads((out / "own_plan.json").read_text())["facts"])
    report = write_report(out, report_names(plan, facts), title=f"webly: {Path(data).name}")
    model = the_model(out, plan)
    log(f"done in {duration(time.time() - t0)} (this call); the model: {model} (webly classify "
        f"{model} ...); report: {report['report']}")
    return {**result, "plan": str(out / "own_plan.json"), "report": report["report"],
            "model": str(model),
            "scores": {r["model"]: round(100 * r["balanced_top1"], 2) for r in report["ablation"]}}
