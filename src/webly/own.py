"""`webly run --data DIR [--budget 30m]`: the recipe for one's own data, sized from the data and
the time it may take.

DIR is class folders (`DIR/<class>/...`, or `DIR/train/<class>/...` with optional `val/` and
`test/`) with an optional sidecar of titles/tags (`DIR/text.jsonl` or `DIR/text.csv`, see
`webly.data.folder`), or a WebVision-layout tree. What is decided, in order:

1. index the data (`RUN/manifest`); without a val split, 10% of each class's training images
   are held out with their labels (a noisy holdout): every choice below is read there.
2. the text: with titles/tags on at least half the training images, tag them (`RUN/tags`) and
   use the WT-Set chain; otherwise the images alone.
3. the image size: the largest of `SIZES` up to the images' own (median short side) at which the
   budget still affords `MIN_PASSES` passes over the training images per compute unit, and not
   below `MIN_SCALE` of the images' size (the smallest such size when none affords them); the
   backbone follows the size (`backbone_for`). With no budget: the images' own size and 30 passes.
4. the epochs: the training time per image is measured on this machine (a short run of the real
   training loop on the real images, `measure`); each step's epochs (and draws per epoch, so a
   fraction of an epoch counts) fill the budget left after indexing, tagging and measuring,
   counting validation, inference passes and decoding too.

The recipe (`RUN/recipe.yaml`) and the plan behind it (`RUN/own_plan.json`) are written once; a
rerun reads them back (nothing is measured again) and resumes, like any recipe.

The steps. With text (the fashion53 system, BENCHMARKS.md): WT-Set pretraining (1/2 unit) ->
new head, class-balanced finetune (1/2) -> it labels the training images with the title's
evidence (`pseudo-label --text`) -> a new head on the WT-Set backbone finetunes on what is kept
(2 units) -> the two averaged with weights fitted on the holdout. Without text: CE (1 unit) ->
pseudo-labels -> a new model on what is kept (1 unit) -> the two averaged, fitted on the
holdout. LW-Set pretraining is left out: on the real-text benchmark it did not beat plain CE.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stderr
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from webly.errors import WeblyError
from webly.files import write_atomic
from webly.progress import duration

SIZES = (16, 20, 24, 32, 40, 48, 64, 96, 128, 160, 192, 224)
# The size rule's two numbers come from the CIFAR-10N holdout sweep at equal compute (v6, in
# configs/cifar10n/recipe.yaml): 24 px at 8.9 passes lost to 20 px at 13.8, and 16 px (half the
# images' size) at 20 passes lost to 20 px too.
MIN_PASSES = 10.0  # passes per unit below which a smaller image size buys more passes
MIN_SCALE = 0.6  # ...but never smaller than this share of the images' own size
NO_BUDGET_PASSES = 30.0
MAX_PASSES = 200.0  # a budget beyond this many passes per unit is left unspent (said so)
HOLDOUT = 0.1
MIN_TEXT_SHARE = 0.5
STEP_OVERHEAD_S = 3.0  # a step's start: manifest, model, loader
FORWARD_SPEEDUP = 3.0  # a forward pass costs about a third of a training step
SIDECARS = ("text.jsonl", "text.csv")


def parse_budget(text: str) -> float:
    """'30m', '1h30m', '90s', '2h' -> seconds."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*"
                         r"(?:(\d+(?:\.\d+)?)s)?\s*", text or "")
    if not text or not parts or not any(parts.groups()):
        raise WeblyError(f"--budget takes a time such as 30m, 1h30m or 90s; got {text!r}")
    h, m, s = (float(x or 0) for x in parts.groups())
    seconds = 3600 * h + 60 * m + s
    if seconds <= 0:
        raise WeblyError(f"--budget must be positive, got {text!r}")
    return seconds


def backbone_for(size: int) -> str:
    """Small images: webly's CIFAR ResNet-9; larger: timm's ResNet-18 (trained from scratch on
    a user's 1k-1M images, a small network is the sound default)."""
    return "cifar_resnet9" if size <= 64 else "resnet18"


def batch_for(images: int) -> int:
    """128 (the benchmarks' batch), smaller for small data: at least ~40 steps an epoch."""
    return int(min(128, max(16, 2 ** math.floor(math.log2(max(images / 40, 1))))))


@dataclass
class Facts:
    """What the plan reads off the indexed data."""

    images: dict[str, int]
    classes: int
    text_share: float
    side: int  # median short side of the training images, px
    layout: str


@dataclass
class Rate:
    """Seconds a training draw costs (measured) and a decode (measured), at one size."""

    backbone: str
    size: int
    train_s: float
    decode_s: float


@dataclass
class Plan:
    budget_s: float | None
    spent_s: float
    text: bool
    size: int
    backbone: str
    batch: int
    passes: float  # passes over the training images per compute unit
    steps: dict[str, dict[str, Any]]
    estimated_s: float
    rates: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"own data: {'with text (WT-Set chain)' if self.text else 'images only'}; "
                 f"{self.backbone} at {self.size} px, batch {self.batch}; "
                 f"{self.passes:.1f} passes a unit"]
        lines += [f"  {sid}: {s['epochs']} epochs of {s['draws']} draws ({s['units']:g} units)"
                  for sid, s in self.steps.items()]
        budget = f" of a {duration(self.budget_s)} budget" if self.budget_s else ""
        lines.append(f"estimated {duration(self.estimated_s)} in all{budget} "
                     f"({duration(self.spent_s)} spent indexing, tagging and measuring)")
        return lines + [f"note: {n}" for n in self.notes]


def facts_of(manifest_path: Path, sample: int = 200) -> Facts:
    from PIL import Image

    from webly.data.manifest import Manifest

    m = Manifest(manifest_path)
    t = m.read(["split", "path", "title", "description", "tags"])
    split = t["split"].to_pylist()
    images = {s: split.count(s) for s in ("train", "val", "test") if s in split}
    train = [i for i, s in enumerate(split) if s == "train"]
    if not train:
        raise WeblyError(f"{manifest_path}: no training images")
    titles, descs, tags = (t[c].to_pylist() for c in ("title", "description", "tags"))
    with_text = sum(bool(titles[i] or descs[i] or tags[i]) for i in train)
    paths = t["path"].to_pylist()
    sides = []
    for i in train[:: max(len(train) // sample, 1)][:sample]:
        try:
            with Image.open(m.image_path(paths[i])) as img:
                sides.append(min(img.size))
        except OSError:
            continue
    if not sides:
        raise WeblyError(f"{manifest_path}: none of {sample} sampled training images opens")
    return Facts(images, m.num_classes, with_text / len(train), int(statistics.median(sides)),
                 m.meta.get("layout", ""))


def train_config(size: int, batch: int, **over: Any) -> Any:
    """The training options every step of the own-data recipe shares (the benchmarks' proven
    settings for small-image training, lr scaled linearly from 0.1 at batch 128)."""
    from webly.training.config import TrainConfig

    small = size <= 64
    base = {"backbone": backbone_for(size), "img_size": size,
            "augment": "pad_crop" if small else "resized_crop", "in_memory": small,
            "crop_pct": 1.0 if small else 0.875, "batch_size": batch, "accum_steps": 1,
            "lr": round(0.1 * batch / 128, 6), "weight_decay": 5e-4, "schedule": "cosine",
            "warmup_epochs": 0.5, "workers": 0 if small else min(4, os.cpu_count() or 1),
            "log_every": 50, "seed": 0, "export": "best"}
    return replace(TrainConfig(), **{**base, **over})


def measure(manifest_path: Path, size: int, batch: int) -> Rate:
    """A short run of the real training loop on the real images: seconds a draw, from the plan's
    estimate after its first steps (`webly.training.plan`), and seconds an image decode."""
    import numpy as np
    import scipy.sparse as sp

    from webly.data.images import resize_uint8, try_decode
    from webly.data.manifest import Manifest
    from webly.training.engine import train
    from webly.training.plan import ESTIMATE_AFTER, WARM_STEPS
    from webly.training.trainsets import finetune_data

    m = Manifest(manifest_path)
    data = finetune_data(m)
    steps = WARM_STEPS + ESTIMATE_AFTER + 1
    n = min(len(data.rows), batch * (steps + 2))
    pick = np.linspace(0, len(data.rows) - 1, n).astype(np.int64)
    sub = replace(data, rows=data.rows[pick], targets=data.targets[pick],
                  membership=sp.csc_matrix(data.membership.tocsr()[pick]),
                  val_rows=data.val_rows[:0], val_labels=data.val_labels[:0])
    paths = m.read(["path"]).column(0)
    t0 = time.perf_counter()
    for row in sub.rows[:64]:
        img, _ = try_decode(m.image_path(paths[int(row)].as_py()))
        if img is not None:
            resize_uint8(img, (size, size))
    decode_s = (time.perf_counter() - t0) / min(64, len(sub.rows))
    cfg = train_config(size, batch, epochs=1, samples_per_epoch=batch * (steps + 1),
                       max_steps=steps, tensorboard=False, export="last",
                       warmup_epochs=0.0)
    # the short run's own plan and progress (and its few-steps warning) go to a log, not the user
    log = Path(manifest_path).parent.parent / f"measure_{size}px.log"
    with tempfile.TemporaryDirectory() as tmp, open(log, "w") as f, redirect_stderr(f):
        summary = train(sub, cfg, Path(tmp) / "measure", task="finetune")
    plan = summary["plan"]
    if not plan.get("seconds_per_step"):
        raise WeblyError(f"could not time the training loop ({steps} steps of {batch})")
    train_s = plan["seconds_per_step"] / batch
    return Rate(cfg.backbone, size, train_s, decode_s)


TEXT_STEPS = {"pre_wt": 0.5, "ft_wt": 0.5, "final": 2.0}  # training step -> compute units
IMAGE_STEPS = {"ce": 1.0, "final": 1.0}


def step_sizes(units: dict[str, float], passes: float, train_images: int,
               batch: int) -> dict[str, dict[str, Any]]:
    """Each training step's epochs and draws an epoch for `passes` per unit (a fraction of an
    epoch is spent as fewer draws an epoch, never less than one optimizer step)."""
    out = {}
    for sid, u in units.items():
        draws = max(round(u * passes * train_images), batch)
        epochs = max(1, round(u * passes))
        out[sid] = {"units": u, "epochs": epochs, "draws": max(draws // epochs, batch)}
    return out


def seconds(steps: dict[str, dict[str, Any]], rate: Rate, facts: Facts, text: bool) -> float:
    """The recipe's time at `rate`: training draws, validation each epoch, decoding into memory,
    the inference passes (training images with their mirrors; val and test per member) and each
    step's start."""
    n_train, n_val = facts.images.get("train", 0), facts.images.get("val", 0)
    n_test = facts.images.get("test", 0)
    fwd = rate.train_s / FORWARD_SPEEDUP
    memory = rate.size <= 64
    total = 0.0
    for sid, s in steps.items():
        total += s["epochs"] * s["draws"] * rate.train_s + STEP_OVERHEAD_S
        total += n_train * rate.decode_s if memory else 0.0
        if sid != "pre_wt":  # WT-Set pretraining has no class labels to validate on
            total += s["epochs"] * n_val * (fwd + rate.decode_s)
    total += n_train * (2 * fwd + rate.decode_s)  # the labeller's pass (with mirrors)
    total += 2 * (n_val + n_test) * (fwd + rate.decode_s)  # both members on val and test
    return total + STEP_OVERHEAD_S * (6 + 3 * bool(n_test) + int(text))


def solve_passes(units: dict[str, float], rate: Rate, facts: Facts, text: bool, batch: int,
                 left_s: float) -> float:
    """The most passes per unit whose recipe fits in `left_s` (bisection; at least 0.05)."""
    lo, hi = 0.05, MAX_PASSES
    n = facts.images["train"]
    if seconds(step_sizes(units, hi, n, batch), rate, facts, text) <= left_s:
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        fits = seconds(step_sizes(units, mid, n, batch), rate, facts, text) <= left_s
        lo, hi = (mid, hi) if fits else (lo, mid)
    return round(lo, 3)


def plan_for(facts: Facts, manifest: Path, budget_s: float | None, spent_s: float,
             measure_fn: Any = measure) -> Plan:
    """Text or not, image size, backbone, batch and epochs (see the module docstring)."""
    text = facts.text_share >= MIN_TEXT_SHARE
    units = TEXT_STEPS if text else IMAGE_STEPS
    batch = batch_for(facts.images["train"])
    sizes = [s for s in SIZES if MIN_SCALE * facts.side <= s <= facts.side]
    sizes = sizes or [max([s for s in SIZES if s <= facts.side] or [SIZES[0]])]
    notes = [f"{facts.text_share:.0%} of the training images have text"
             + ("" if text else f" (under {MIN_TEXT_SHARE:.0%}: images only)")]
    if budget_s is None:
        size = sizes[-1]
        steps = step_sizes(units, NO_BUDGET_PASSES, facts.images["train"], batch)
        return Plan(None, spent_s, text, size, backbone_for(size), batch, NO_BUDGET_PASSES,
                    steps, 0.0, [], notes + ["no --budget: the images' own size, "
                                             f"{NO_BUDGET_PASSES:g} passes a unit"])
    t0 = time.monotonic()
    measured: dict[str, Rate] = {}  # backbone -> a measurement at its smallest candidate size

    def rate_at(size: int) -> Rate:
        bb = backbone_for(size)
        if bb not in measured:  # at its largest size, up to 96 px (a short measurement)
            at = min(max(s for s in sizes if backbone_for(s) == bb), 96)
            measured[bb] = measure_fn(manifest, at, batch)
        r = measured[bb]
        return replace(r, size=size, train_s=r.train_s * (size / r.size) ** 2)

    def passes_at(rate: Rate) -> float:
        left = budget_s - spent_s - (time.monotonic() - t0)
        return solve_passes(units, rate, facts, text, batch, left)

    size = sizes[0]
    for s in reversed(sizes):
        if passes_at(rate_at(s)) >= MIN_PASSES:
            size = s
            break
    rate = rate_at(size)
    rates = list(measured.values())
    if measured[rate.backbone].size != size:
        rate = measure_fn(manifest, size, batch)
        rates.append(rate)
    passes = passes_at(rate)
    spent = spent_s + time.monotonic() - t0
    if passes < 1:
        notes.append(f"the budget affords {passes:.2f} passes a unit at {size} px: expect a "
                     "weak model; a longer --budget trains more")
    if passes >= MAX_PASSES:
        notes.append(f"the budget is more than {MAX_PASSES:g} passes a unit need: "
                     "the rest is left unspent")
    steps = step_sizes(units, passes, facts.images["train"], batch)
    return Plan(budget_s, round(spent, 1), text, size, rate.backbone, batch, passes, steps,
                round(spent + seconds(steps, rate, facts, text), 1),
                [asdict(r) for r in rates], notes)


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
    splits = ["val"] + (["test"] if facts.images.get("test") else [])
    for split in splits:
        for member in (first, "final"):
            steps.append({"id": f"{split}_{member}", "stage": "predict", "model": f"@{member}",
                          "manifest": "@manifest", "split": split, "batch_size": 500,
                          "workers": 0 if plan.size <= 64 else min(4, os.cpu_count() or 1)})
    for split in splits:
        steps.append({"id": f"{split}_ensemble", "stage": "ensemble",
                      "preds": [f"@{split}_{first}", f"@{split}_final"],
                      "fit": [f"@val_{first}", "@val_final"], "fit_labels": "@manifest"})
    scored = splits[-1]
    for member in (first, "final", "ensemble"):
        steps.append({"id": f"score_{member}", "stage": "evaluate",
                      "preds": f"@{scored}_{member}", "manifest": "@manifest"})
    return {"description": f"own data {data}: written by webly run --data (webly.own)",
            "steps": steps}


def report_names(plan: Plan, facts: Facts) -> dict[str, str]:
    where = "test" if facts.images.get("test") else "the holdout (noisy labels)"
    first = ("WT-Set pretraining -> finetune (the labeller)" if plan.text
             else "CE (the labeller)")
    return {f"score_{'ft_wt' if plan.text else 'ce'}": f"{first}, on {where}",
            "score_final": f"final: trained on the kept pseudo-labels, on {where}",
            "score_ensemble": f"both averaged, weights fitted on the holdout, on {where}"}


def _log(message: str) -> None:
    print(f"[webly] {message}", file=sys.stderr, flush=True)


def _sidecar(data: Path) -> Path | None:
    found = [data / n for n in SIDECARS if (data / n).is_file()]
    return found[0] if found else None


def prepare(data: str | Path, out: str | Path, budget: str | None = None,
            log: Any = _log) -> tuple[Plan, dict[str, Any]]:
    """Index (and tag) the data, measure, plan: the recipe and its plan, written to `out` (or
    read back from there when an earlier run wrote them)."""
    from webly.pipeline import run

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
                    time.monotonic() - t0)
    recipe = recipe_for(plan, facts, data, sidecar)
    write_atomic(recipe_file, yaml.safe_dump(recipe, sort_keys=False))
    write_atomic(plan_file, json.dumps({"data": str(data.resolve()), "facts": asdict(facts),
                                        "plan": asdict(plan)}, indent=1) + "\n")
    return plan, recipe


def run_own(data: str | Path, out: str | Path, budget: str | None = None, *,
            dry_run: bool = False, log: Any = _log) -> dict[str, Any]:
    """`webly run --data DIR`: plan (once), run the recipe, write the report."""
    from webly.pipeline import run
    from webly.report import write_report

    t0 = time.time()
    out = Path(out)
    plan, recipe = prepare(data, out, budget, log)
    for line in plan.lines():
        log(line)
    if dry_run:
        return {"run_dir": str(out), "plan": str(out / "own_plan.json")}
    result = run(out / "recipe.yaml", out, log=log)
    facts = Facts(**json.loads((out / "own_plan.json").read_text())["facts"])
    report = write_report(out, report_names(plan, facts), title=f"webly: {Path(data).name}")
    log(f"done in {duration(time.time() - t0)} (this call); the model: {out / 'final'} "
        f"(webly classify {out / 'final'} ...); report: {report['report']}")
    return {**result, "plan": str(out / "own_plan.json"), "report": report["report"],
            "scores": {r["model"]: round(100 * r["balanced_top1"], 2) for r in report["ablation"]}}
