"""The noisy-label benchmark harness: one path for every dataset (CIFAR-10N, fashion53, ...).

A dataset brings a `Spec`: its recipe (configs/DATASET/recipe.yaml), its rows (which step scores
each row, which training steps and inference passes its compute counts), each training step's
share of the compute unit, its modes, its label sets (`--noise`) and a `prepare` function that
turns the data folder into a cached, prepared copy in the WebVision layout. The harness does the
rest the same way for all: caches (keyed by content, never by a name), the recipe's epochs from
each step's share of the unit, `webly run` (a killed benchmark resumes), compute counting, the
clean-label measurements made after training, and `benchmark.json` / `benchmark.md` in one schema.

Compute is counted as images seen x multiply-adds an image (torch's FlopCounterMode): a training
step's draws x forward multiply-adds x 3 (forward + backward), an inference pass's images x the
forward multiply-adds of every view it predicts. One unit: `epochs` passes over the training
images at the dataset's native size; a step at a smaller size draws as many more images as its
multiply-adds allow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODES = ("quick", "default", "full")


ROLES = ("ce", "system", "same_compute", "clean")


@dataclass(frozen=True)
class Row:
    num: str
    name: str
    score: str  # the evaluate step that scores it
    steps: tuple[str, ...]  # training steps and inference passes its compute counts
    # what the gains are measured between: CE, the method (default: the last row), CE for the
    # method's compute, CE on the clean labels (the ceiling; balanced top-1 is then the metric)
    role: str = ""


@dataclass
class Spec:
    """What a dataset brings to the harness."""

    name: str
    recipe: Path
    rows: list[Row]
    share: dict[str, float]  # training step -> its compute in units
    pseudo_labels: tuple[str, ...]  # pseudo-label steps, measured against the clean labels
    epochs: dict[str, int]  # mode -> epochs of one unit
    native_size: int
    noises: tuple[str, ...]
    # (data root, cache, noise, seed, args) -> the prepared folder the recipe's DATA names
    prepare: Callable[..., Path]
    # a step whose share is the compute of other steps (CE for the system's compute): their
    # training shares plus their inference passes (views x multiply-adds, forward only)
    match: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # the match is measured, not planned: the recipe's steps before the match target run first
    # (their gates decide what runs), then the target's share is what the steps that ran spent
    late_match: bool = False
    extra: Callable[..., dict[str, Any]] | None = None  # (out, root, res) -> more results
    extra_markdown: Callable[[dict[str, Any]], list[str]] | None = None
    options: Callable[[argparse.ArgumentParser], None] | None = None
    # the run's name beyond mode and noise, from its options ("" for none): e.g. a title variant
    variant: Callable[[argparse.Namespace], str] | None = None

    def role(self, role: str) -> str:
        """The number of the row playing `role` ("" where none does; the system: the last)."""
        assert role in ROLES, role
        found = [r.num for r in self.rows if r.role == role]
        return found[0] if found else (self.rows[-1].num if role == "system" else "")

    def passes(self, stage_of: dict[str, str]) -> list[str]:
        """The inference passes some row counts: its steps that are predict steps."""
        counted = dict.fromkeys(s for r in self.rows for s in r.steps)
        return [s for s in counted if stage_of.get(s) == "predict"]


# -- the recipe ----------------------------------------------------------------------------------
def cpu_bf16() -> bool:
    """bf16 autocast where the CPU computes bf16 natively (AVX512-BF16, AMX): about 2x the
    training rate of fp32 for cifar_resnet9 on 2 cores. Elsewhere it is emulated and slower."""
    import torch

    if torch.cuda.is_available():
        return False
    try:  # a private check (torch has no public one); a build without it counts as no
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def draw_cost(step: dict[str, Any]) -> float:
    """Training passes a labelled draw costs: 1, plus, with consistency training, for each of its
    `unlabeled_ratio` unlabelled images a training pass (the strong view) and a forward pass (the
    weak view, a third of one)."""
    ratio = step.get("unlabeled_ratio", 1.0) if step.get("unlabeled_weight") else 0.0
    return 1.0 + ratio * (1 + 1 / 3)


def macs_per_image(backbone: str, size: int, classes: int) -> int:
    """Multiply-adds of one forward pass: the one cost model's (webly.inference.cost)."""
    from webly.inference.cost import macs_per_image as macs

    return macs(backbone, size, classes)


def recipe_for(spec: Spec, roots: dict[str, Path], epochs: int, batch_size: int | None = None,
               workers: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The dataset's recipe with its data roots (DATA, DATA_CLEAN, ...) filled in and each
    training step's epochs from its share of the unit: whole epochs of the right number of
    draws (a fold model draws from half the images; pseudo-labels may drop some)."""
    from webly.core.config import load_yaml

    recipe = load_yaml(spec.recipe)
    amp = "bf16" if cpu_bf16() else "auto"  # auto: bf16 on GPUs, fp32 on other CPUs
    n_train = len((roots["DATA"] / "info/train_filelist.txt").read_text().splitlines())
    share = shares(spec, recipe, epochs)
    for step in recipe["steps"]:
        for key, value in step.items():  # DATA, DATA/info/val_filelist.txt: the prepared folder
            if isinstance(value, str) and value.split("/")[0] in roots:
                head, _, rest = value.partition("/")
                step[key] = str(roots[head] / rest) if rest else str(roots[head])
        if step["id"] in spec.share:
            images = n_train // 2 if step.get("leave_out_fold") else n_train
            cheaper = (macs_per_image(step["backbone"], spec.native_size, 10)
                       / macs_per_image(step["backbone"], step["img_size"], 10) / draw_cost(step))
            draws = share[step["id"]] * epochs * n_train * cheaper
            step["epochs"] = max(1, math.ceil(draws / images - 1e-9))  # epochs of <= 1 pass
            step["samples_per_epoch"] = round(draws / step["epochs"])
            step["batch_size"] = batch_size or step["batch_size"]
            step["amp"] = amp
            step["seed"] = step.get("seed", 0) + seed  # members keep distinct seeds
        if workers is not None and "workers" in step:
            step["workers"] = workers
    return recipe


def only_rows(spec: Spec, recipe: dict[str, Any], rows: list[str]) -> dict[str, Any]:
    """The recipe cut to what the given rows need: their score steps and every step these refer
    to, through inputs, options and gates (`when`), and nothing else. A row left out is left out
    of the results; the rows that run are the same steps as in the whole recipe."""
    unknown = sorted(set(rows) - {r.num for r in spec.rows})
    if unknown:
        raise SystemExit(f"--rows: no row {', '.join(unknown)} in {spec.name} "
                         f"({', '.join(r.num for r in spec.rows)})")
    by_id = {st["id"]: st for st in recipe["steps"]}

    def refs(value: Any) -> list[str]:
        if isinstance(value, str):
            name = value.removeprefix("not ").strip()
            return [name[1:]] if name.startswith("@") else []
        return [r for v in value for r in refs(v)] if isinstance(value, list) else []

    keep: set[str] = set()
    todo = [r.score for r in spec.rows if r.num in rows]
    while todo:
        sid = todo.pop()
        if sid not in keep:
            keep.add(sid)
            todo += [r for v in by_id[sid].values() for r in refs(v)]
    return {**recipe, "steps": [st for st in recipe["steps"] if st["id"] in keep]}


def shares(spec: Spec, recipe: dict[str, Any], epochs: int) -> dict[str, float]:
    """Each training step's units; a `match` step's from the steps it matches, their inference
    passes over the training images included (a pass of v views at size s: sum of the views'
    multiply-adds / (3 x epochs x a native image's), forward only against a unit's training)."""
    from webly.inference import cost

    share = dict(spec.share)
    by_id = {s["id"]: s for s in recipe["steps"]}
    passes = spec.passes({sid: s["stage"] for sid, s in by_id.items()})  # a variant may lack one
    native = None
    for target, steps in spec.match.items():
        units = sum(spec.share.get(s, 0.0) for s in steps)
        for sid in (s for s in steps if s in passes):
            step = by_id[sid]
            model = by_id[step["model"].lstrip("@")]
            native = native or macs_per_image(model["backbone"], spec.native_size, 10)
            size = step.get("img_size") or model["img_size"]
            units += cost.predict_macs(model["backbone"], size, 1, step.get("tta", "center")) / (
                cost.TRAIN_FACTOR * epochs * native)
        share[target] = units
    return share


def run_recipe(recipe: dict[str, Any], out: Path, spec: Spec | None = None) -> None:
    """`webly run` the recipe. With `spec.late_match` the steps before the first match target
    run first (their gates decide what runs); then each target draws as many images as the
    steps it matches spent, counting only the steps that ran (in units of the CE step's draws,
    scaled by multiply-adds where its image size differs)."""
    from webly.app.pipeline import run

    if spec is not None and spec.late_match and spec.match:
        ids = [st["id"] for st in recipe["steps"]]
        targets = [t for t in spec.match if t in ids]  # --rows may leave a target out
        if not targets:
            run(recipe, out)
            return
        run(recipe, out, until=ids[min(ids.index(t) for t in targets) - 1])
        flops = compute(spec, out)
        by_id = {st["id"]: st for st in recipe["steps"]}
        ce, macs = by_id["ce"], {}
        for target, steps in ((t, spec.match[t]) for t in targets):
            units = sum(flops.get(st, 0.0) for st in steps) / flops["ce"]
            step = by_id[target]
            for st in (ce, step):
                macs[st["id"]] = macs_per_image(st["backbone"], st["img_size"], 10)
            draws = units * ce["epochs"] * ce["samples_per_epoch"] * macs["ce"] / macs[target]
            images = train_images(out)
            step["epochs"] = max(1, math.ceil(draws / images - 1e-9))
            step["samples_per_epoch"] = round(draws / step["epochs"])
    run(recipe, out)


def train_images(out: Path) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    split = pq.read_table(out / "manifest/manifest.parquet", columns=["split"])["split"]
    return int(pc.sum(pc.equal(split, "train")).as_py())


# -- measuring -----------------------------------------------------------------------------------
def ran(out: Path, step: str) -> bool:
    """The step finished and was not skipped by a decision of the recipe."""
    rec = out / step / "step.json"
    return rec.is_file() and not json.loads(rec.read_text()).get("skipped")


def decisions(out: Path) -> dict[str, Any]:
    """Every step's decision (webly.core.decisions) and each skipped step and why: read as
    webly's report reads them."""
    from webly.app.runs import Run, decided

    return decided(Run(out))


def compute(spec: Spec, out: Path) -> dict[str, float]:
    """Compute of each step in PFLOP-equivalents of multiply-adds (1e15), by the one cost model
    (webly.inference.cost): a training step's images seen (times `draw_cost`), an inference
    pass's images through every view it predicts, and what any step's decision spent itself
    (its `decision.json`: a threshold probe's training)."""
    from webly.core import decisions
    from webly.inference import cost

    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/step.json")}
    ran_here = {s for s, r in records.items() if not r.get("skipped")}  # as `ran`, read once
    res = {}
    for step in (s for s in spec.share if s in ran_here):
        cfg = json.loads((out / step / "train.config.json").read_text())
        summary = json.loads((out / step / "train.summary.json").read_text())
        seen = summary["steps"] * cfg["batch_size"] * cfg["accum_steps"]
        res[step] = cost.train_macs(cfg["backbone"], cfg["img_size"], seen,
                                    draw_cost=draw_cost(cfg)) / 1e15
    passes = spec.passes({s: r.get("stage", "") for s, r in records.items()})
    for step in (s for s in passes if s in ran_here):
        summary = json.loads((out / step / "predict.summary.json").read_text())
        cfg = json.loads((Path(summary["model"]) / "train.config.json").read_text())
        res[step] = cost.predict_macs(cfg["backbone"], summary["img_size"], summary["images"],
                                      summary["tta"]) / 1e15
    for step, d in decisions.read_all([out / s for s in sorted(ran_here)]).items():
        if d.macs:
            res[step] = res.get(step, 0.0) + d.macs / 1e15
    return res


def true_labels_of_rows(out: Path, root: Path) -> np.ndarray:
    """The clean training label of every manifest row (-1: not a training image). Read here, after
    training, for measuring only."""
    from webly.data.manifest import Manifest

    paths = Manifest(out / "manifest/manifest.parquet").read(["path"]).column(0).to_pylist()
    clean = dict(line.split() for line in
                 (root / "info/train_clean_filelist.txt").read_text().splitlines())
    return np.array([int(clean.get(p, -1)) for p in paths])


def label_effect(labels: Path, true_of_row: np.ndarray) -> dict[str, Any]:
    """What one pseudo-labelling step did to the wrong labels, against the clean ones (every
    training image has one here)."""
    from webly.data.labels import label_effect as effect

    res = effect(labels, true_of_row)
    if res.pop("images_without_truth"):
        raise ValueError(f"{labels} labels images without a clean training label")
    return res


def collect(spec: Spec, out: Path, root: Path, mode: str, noise: str,
            wall: float) -> dict[str, Any]:
    """Every row's scores and compute, the gains, the pseudo-labels' effect and the timings."""
    import torch

    flops = compute(spec, out)
    unit = flops["ce"]
    rows = []
    for r in spec.rows:
        if not ran(out, r.score):
            continue  # a decision of the recipe left this model out
        m = json.loads((out / r.score / "metrics.json").read_text())
        rows.append({"row": r.num, "model": r.name,
                     "top1": round(100 * m["top1"], 2), "top5": round(100 * m["top5"], 2),
                     "balanced_top1": round(100 * m["balanced_top1"], 2),
                     "balanced_top5": round(100 * m["balanced_top5"], 2),
                     "compute_units": round(sum(flops.get(s, 0.0) for s in r.steps) / unit, 2)})
    by = {r["row"]: r for r in rows}
    system = spec.role("system") if spec.role("system") in by else rows[-1]["row"]
    same, ce, clean = spec.role("same_compute"), spec.role("ce"), spec.role("clean")
    key = "balanced_top1" if clean else "top1"  # the metric the dataset is judged on
    if clean and clean in by:  # --rows may leave the ceiling out
        floor, ceiling = by[ce][key], by[clean][key]
        for r in rows:
            r["damage_recovered"] = round((r[key] - floor) / (ceiling - floor), 3) \
                if ceiling != floor else None
    summaries = {s: json.loads((out / s / "train.summary.json").read_text()) for s in spec.share
                 if ran(out, s)}
    # the exported weights' epoch and held-out score (`export: best`: not the last epoch's)
    exported = {s: v.get("exported", {"epoch": v.get("epochs_done"), "val_top1": v.get("val_top1")})
                for s, v in summaries.items()}
    true_of_row = true_labels_of_rows(out, root)
    res = {
        "benchmark": spec.name, "mode": mode, "noise": noise, "metric": key, "rows": rows,
        "system_row": system, "same_compute_row": same,
        "gain_over_ce": round(by[system][key] - by[ce][key], 2),
        "ce_same_total_compute": by[same][key] if same else None,
        "gain_over_ce_same_total_compute": round(by[system][key] - by[same][key], 2)
        if same else None,
        "unit_pflop": float(f"{unit:.4g}"),
        "holdout_top1": {s: e["val_top1"] for s, e in exported.items()},
        "exported_epoch": {s: [e["epoch"], summaries[s]["epochs_done"]]
                           for s, e in exported.items()},
        "noise_in_train": json.loads((root / "info/noise.json").read_text()),
        "pseudo_labels": {pl: label_effect(out / pl / "labels.parquet", true_of_row)
                          for pl in spec.pseudo_labels if ran(out, pl)},
        "train_seconds": {s: json.loads((out / s / "step.json").read_text())["seconds"]
                          for s in spec.share if ran(out, s)},
        "decisions": decisions(out),
        "wall_seconds": round(wall, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
    }
    if spec.extra:
        res.update(spec.extra(out, root, true_of_row))
    return res


def to_markdown(spec: Spec, res: dict[str, Any]) -> str:
    damage = bool(spec.role("clean"))
    head = ("| row | model | compute (units) | test top-1 | test top-5 | balanced top-1 | "
            "balanced top-5 |" + (" damage recovered |" if damage else ""))
    lines = [head, "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if damage else "")]
    for r in res["rows"]:
        line = (f"| {r['row']} | {r['model']} | {r['compute_units']:.2f} | {r['top1']:.2f} | "
                f"{r['top5']:.2f} | {r['balanced_top1']:.2f} | {r['balanced_top5']:.2f} |")
        if damage:
            d = r.get("damage_recovered")
            line += f" {'' if d is None else f'{d:.2f}'} |"
        lines.append(line)
    metric = "balanced top-1" if res["metric"] == "balanced_top1" else "top-1"
    lines += ["", f"Noise: {res['noise']} ({100 * res['noise_in_train']['wrong']:.1f}% of "
                  f"{res['noise_in_train']['train_images']} training labels wrong). System (row "
                  f"{res['system_row']}) over CE (row {spec.role('ce')}), {metric}: "
                  f"{res['gain_over_ce']:+.2f} points"
              + (f"; over CE for the same total compute (row {res['same_compute_row']}): "
                 f"{res['gain_over_ce_same_total_compute']:+.2f}"
                 if res["same_compute_row"] else "")
              + f". One unit = {res['unit_pflop']:.3g} PFLOP (multiply-adds x 3 for training)."]
    for step, p in res["pseudo_labels"].items():
        lines.append(
            f"Pseudo-labels ({step}): {p['wrong_labels_before']} of {p['train_images']} "
            f"labels wrong ({100 * p['noise_before']:.1f}%); relabelled {p['relabelled']} "
            f"({p['relabelled_to_true']} to the true class, {p['relabelled_away_from_true']} away "
            f"from it), dropped {p['dropped']} ({p['dropped_that_were_wrong']} of them wrong); "
            f"kept {p['kept']} ({100 * p['kept_share']:.1f}%) with {100 * p['noise_after']:.1f}% "
            f"wrong: {100 * p['wrong_labels_removed']:.1f}% of the wrong labels removed.")
    if spec.extra_markdown:
        lines += spec.extra_markdown(res)
    lines.append(f"Wall time {res['wall_seconds'] / 60:.1f} min on {res['machine']} "
                 f"({res['mode']} mode).")
    return "\n".join(lines) + "\n"


# -- the command line ----------------------------------------------------------------------------
def main(spec: Spec, argv: list[str] | None = None, doc: str = "") -> int:
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path,
                    help=f"{spec.name}.tar.gz or a folder in its layout")
    ap.add_argument("--noise", default=spec.noises[0], choices=spec.noises)
    ap.add_argument("--out", type=Path, help=f"run directory (default runs/{spec.name}-MODE-NOISE)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/webly/data")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help=f"{spec.epochs['quick']}-epoch unit")
    mode.add_argument("--full", action="store_true",
                      help=f"{spec.epochs['full']}-epoch unit (for a GPU)")
    ap.add_argument("--epochs", type=int, help="override: epochs of one compute unit")
    ap.add_argument("--batch-size", type=int,
                    help="override: training batch (smoke tests on tiny subsets)")
    ap.add_argument("--seed", type=int, default=0,
                    help="added to every training step's own seed (the label noise keeps its "
                         "own: a second seed measures how much a row varies)")
    ap.add_argument("--workers", type=int,
                    help="override: DataLoader workers of every step (0 in the recipes: on 2 "
                         "CPU cores the main process loads in-memory images fastest)")
    ap.add_argument("--rows", help="only these rows, e.g. 1,5,6 (and the steps they need): a "
                                   "cheaper run of the rows a comparison needs")
    ap.add_argument("--recipe", type=Path,
                    help=f"a variant of {spec.recipe.relative_to(REPO)} to run instead (an "
                         "experiment: e.g. one decision forced; recorded in the command)")
    if spec.options:
        spec.options(ap)
    args = ap.parse_args(argv)
    if args.recipe:
        if not args.recipe.is_file():
            ap.error(f"--recipe {args.recipe}: no such file")
        spec = replace(spec, recipe=args.recipe)  # a copy: the module's SPEC stays the dataset's

    name = "quick" if args.quick else "full" if args.full else "default"
    epochs = args.epochs or spec.epochs[name]
    variant = spec.variant(args) if spec.variant else ""
    out = args.out or REPO / (f"runs/{spec.name}-{name}-{args.noise}"
                              + (f"-{variant}" if variant else "")
                              + (f"-seed{args.seed}" if args.seed else ""))
    t0 = time.time()
    roots = spec.prepare(args.data, args.cache, args.noise, args)
    recipe = recipe_for(spec, roots, epochs, args.batch_size, args.workers, args.seed)
    if args.rows:
        recipe = only_rows(spec, recipe, [r.strip() for r in args.rows.split(",") if r.strip()])
    run_recipe(recipe, out, spec)
    res = collect(spec, out, roots["DATA"], name, args.noise, time.time() - t0)
    res["seed"] = args.seed
    res["variant"] = variant
    res["command"] = f"python -m benchmarks.datasets.{spec.name} " + " ".join(
        argv if argv is not None else sys.argv[1:])
    (out / "benchmark.json").write_text(json.dumps(res, indent=1) + "\n")
    md = to_markdown(spec, res)
    (out / "benchmark.md").write_text(md)
    print(md, end="")
    return 0
