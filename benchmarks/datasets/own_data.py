"""The own-data recipe as a new user meets it: class folders, a budget, nothing else.

    python -m benchmarks.datasets.own_data --data /tmp/clothing10 --budget 5m \
        --sweep 32,48,64,96,128
    python -m benchmarks.datasets.own_data --dataset fashion53 \
        --data ../shared/data/fashion53.tar.gz --budget 15m
    python -m benchmarks.datasets.own_data --dataset cifar10n \
        --data ../shared/data/cifar10n.tar.gz --budget 15m

`--data` is any class-folder dataset (`train/<class>/`, optional `val/` and `test/`), or with
`--dataset` a benchmark's tarball made into what a user has: `train/<class>/` holding the noisy
training images (fashion53: the shipped labels, titles in `text.jsonl`; CIFAR-10N: the worst
human labels, no text) and `test/<class>/` the clean test images (no val folder: the recipe
holds out 10% of the training images with their noisy labels). Then:

1. `webly run --data DIR --budget B` (timed: wall seconds against the budget; each step's
   seconds from its step.json);
2. CE for the same compute: plain CE on the same manifest (same training images, same holdout),
   its draws set so that its multiply-adds equal the recipe's training draws that ran plus its
   labelling pass; at the planner's own settings (size, backbone, batch, lr), class-balanced;
   for the two benchmarks their CE row instead (fashion53: 32 px, class-balanced; CIFAR-10N:
   20 px, shuffled; cifar_resnet9, batch 128), as before;
3. `--sweep`: hindsight, fixed plain-CE settings each given the whole budget (`sweep`);
4. everything scored on the test split (val where there is none): top-1 and balanced top-1.

Writes OUT/own_data_NAME_BUDGET.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.datasets import common, harness

REPO = harness.REPO
CE_ROW = {"fashion53": {"img_size": 32, "sampler": "balanced", "metric": "balanced_top1"},
          "cifar10n": {"img_size": 20, "sampler": "shuffle", "metric": "top1"}}


def _safe(name: str) -> str:
    return name.replace("/", "_").strip() or "_"


def make_folders(root: Path, dataset: str, out: Path) -> Path:
    """train/<class>/ (noisy labels), test/<class>/ (clean) as hard links; fashion53's titles in
    text.jsonl."""
    target = out / f"{dataset}-folders"
    if (target / ".complete").is_file():
        return target
    names = [line.split(maxsplit=1)[1] for line in
             (root / "info/synsets.txt").read_text().splitlines() if line.strip()]
    paths, labels = common.read_list(root / "info/train_filelist.txt")
    titles = []
    if dataset == "fashion53":
        from benchmarks.datasets.fashion53 import _titles

        titles = _titles(root)
    rows = []
    for i, (p, y) in enumerate(zip(paths, labels, strict=True)):
        rel = f"train/{_safe(names[y])}/{Path(p).name}"
        common.link(root / p, target / rel)
        if titles:
            rows.append({"path": rel, "title": titles[i]})
    # WebVision lists the val/test images by name alone; they live in val/ and test/
    split = "test" if dataset == "fashion53" else "val"
    for p, y in zip(*common.read_list(root / "info" / f"{split}_filelist.txt"), strict=True):
        src = root / p if (root / p).is_file() else root / split / Path(p).name
        common.link(src, target / f"test/{_safe(names[y])}/{Path(p).name}")
    if rows:
        (target / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (target / ".complete").write_text("")
    return target


def webly(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "webly.app.cli", *args], check=True, cwd=REPO)


def timed(record: Path, fn: Any) -> float:
    """Wall seconds of `fn()`, kept in `record`: a rerun of the benchmark reports the first
    run's time instead of running (and timing) a finished step again."""
    if record.is_file():
        return json.loads(record.read_text())["wall_s"]
    t0 = time.time()
    fn()
    wall = time.time() - t0
    record.write_text(json.dumps({"wall_s": round(wall, 1)}) + "\n")
    return wall


def score(run: Path, preds: str) -> dict[str, float]:
    webly("evaluate", str(run / preds), "--manifest", str(run / "manifest/manifest.parquet"),
          "-o", str(run / f"score_{preds}"))
    m = json.loads((run / f"score_{preds}" / "metrics.json").read_text())
    return {k: round(100 * m[k], 2) for k in ("top1", "balanced_top1")}


def recipe_macs(run: Path) -> tuple[float, dict[str, float]]:
    """Multiply-adds of the recipe's training draws that ran (x3: forward and backward; a step a
    decision skipped costs nothing) and of its labelling pass (each training image and its
    mirror), when it ran."""
    from webly.inference import cost

    plan = json.loads((run / "own_plan.json").read_text())
    facts, p = plan["facts"], plan["plan"]
    bb, size, classes = p["backbone"], p["size"], facts["classes"]
    parts = {sid: cost.train_macs(bb, size, s["epochs"] * s["draws"], classes)
             for sid, s in p["steps"].items() if harness.ran(run, sid)}
    if harness.ran(run, "train_preds"):
        parts["train_preds"] = cost.predict_macs(bb, size, facts["images"]["train"], "flip",
                                                 classes)
    return sum(parts.values()), parts


def ce_options(size: int, batch: int, sampler: str, backbone: str | None = None,
               draws: int = 0) -> list[str]:
    """`webly finetune` options of a plain CE run: the own-data recipe's settings at `size`
    (`webly.app.own.train_config`; with `draws` an epoch, its warmup rule), the sampler given,
    export the best holdout epoch."""
    from webly.app.own import train_config
    from webly.app.own.settings import warmup_for

    cfg = train_config(size, batch)
    warmup = warmup_for(draws, batch) if draws else cfg.warmup_epochs
    return ["--backbone", backbone or cfg.backbone, "--img-size", str(size), "--augment",
            cfg.augment, *(["--in-memory"] if cfg.in_memory else []), "--crop-pct",
            str(cfg.crop_pct), "--batch-size", str(batch), "--lr", str(cfg.lr),
            "--weight-decay", str(cfg.weight_decay), "--schedule", "cosine", "--warmup-epochs",
            str(warmup), "--workers", str(cfg.workers), "--log-every", "100",
            "--export", "best", "--sampler", sampler]


def plain_ce(run: Path, name: str, opts: list[str], epochs: int, draws_per_epoch: int,
             model_split: str) -> tuple[float, dict[str, float]]:
    """Train plain CE on the run's manifest, predict `model_split`, score it: (wall s, scores).
    The wall time covers training and predicting (what a user waits for)."""
    manifest = str(run / "manifest/manifest.parquet")

    def go() -> None:
        webly("finetune", manifest, "-o", str(run / name), *opts, "--epochs", str(epochs),
              "--samples-per-epoch", str(draws_per_epoch))
        webly("predict", str(run / name), manifest, "--split", model_split, "--workers", "0",
              "--batch-size", "500", "-o", str(run / f"{model_split}_{name}"))

    wall = timed(run / f"{name}_wall.json", go)
    return wall, score(run, f"{model_split}_{name}")


def sweep(run: Path, points: list[str], budget_s: float, split: str) -> list[dict[str, Any]]:
    """Hindsight: each fixed plain-CE setting ('SIZE' with the planner's backbone for it, or
    'SIZE:BACKBONE') given the whole budget, as the recipe's own steps are: its loop ends on the
    budget less what the planner's time model gives decoding, starting and predicting (at a rate
    measured for that setting, `webly.app.own.measure`), its epochs (twice those the rate
    affords) only a bound. The wall time each took is recorded beside it."""
    from webly.app import own

    saved = json.loads((run / "own_plan.json").read_text())
    facts = own.Facts(**saved["facts"])
    batch = saved["plan"]["batch"]
    rows = []
    for point in points:
        size_s, _, bb = point.partition(":")
        size = int(size_s)
        bb = bb or own.backbone_for(size)
        rate = own.measure(run / "manifest/manifest.parquet", size, batch, bb)
        passes = own.solve_passes({"ce": 1.0}, rate, facts, False, batch, budget_s)
        steps = own.step_sizes({"ce": 1.0}, passes, facts.images["train"], batch)["ce"]
        loop_s = own.train_seconds("ce", steps, rate, facts)
        opts = [*ce_options(size, batch, "balanced", bb, steps["draws"]), "--time-budget-s",
                f"{loop_s:.1f}"]
        wall, scores = plain_ce(run, f"sweep_{size}_{bb}", opts, own.EPOCH_CAP * steps["epochs"],
                                steps["draws"], split)
        summary = json.loads((run / f"sweep_{size}_{bb}" / "train.summary.json").read_text())
        rows.append({"setting": f"{bb} at {size} px", "size": size, "backbone": bb,
                     "planned_passes": round(passes, 2), "loop_budget_s": round(loop_s, 1),
                     "epochs_run": summary["epochs_done"], "steps": summary["steps"],
                     "draws_per_epoch": steps["draws"], "wall_s": round(wall, 1),
                     "wall_vs_budget": round(wall / budget_s, 3), **scores})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(CE_ROW),
                    help="a benchmark's tarball as folders (else --data is a class folder)")
    ap.add_argument("--data", type=Path, required=True,
                    help="the benchmark's tarball or its folder; or any class-folder dataset")
    ap.add_argument("--budget", default="15m")
    ap.add_argument("--sweep", default="",
                    help="hindsight: comma-separated fixed plain-CE settings, SIZE or "
                         "SIZE:BACKBONE, each given the whole budget (e.g. 32,48,64,96,128)")
    ap.add_argument("--no-ce", action="store_true",
                    help="leave out CE for the same compute (a sweep point at the planner's "
                         "size, given the whole budget, is the stricter comparison)")
    ap.add_argument("--name", default="", help="the results' name (default: the data's)")
    ap.add_argument("--out", type=Path, default=REPO / "runs/own_data")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/webly/data")
    args = ap.parse_args()
    from webly.app.own import parse_budget
    from webly.inference import cost

    if args.dataset:
        root = common.find_root(args.data, args.cache, args.dataset)
        folders = make_folders(root, args.dataset, args.cache)
    elif args.data.is_dir():
        folders = args.data
    else:
        ap.error("--data: without --dataset, a folder of class folders")
    name = args.name or args.dataset or folders.name
    run = args.out / f"{name}_{args.budget}"
    budget_s = parse_budget(args.budget)
    wall = timed(run / "own_wall.json", lambda: webly("run", "--data", str(folders), "--budget",
                                                       args.budget, "-o", str(run)))
    plan = json.loads((run / "own_plan.json").read_text())
    p, facts = plan["plan"], plan["facts"]
    split = "test" if "test" in facts["images"] else "val"
    total, parts = recipe_macs(run)
    ce = CE_ROW.get(args.dataset or "", {"img_size": p["size"], "sampler": "balanced",
                                         "metric": "top1"})
    bb = "cifar_resnet9" if args.dataset else p["backbone"]
    draws = total / cost.train_macs(bb, ce["img_size"], 1, facts["classes"])
    n = facts["images"]["train"]
    epochs = max(1, round(draws / n))
    batch = 128 if args.dataset else p["batch"]
    rows = {"recipe (ensemble)": score(run, f"{split}_ensemble")}
    ce_wall = 0.0
    if not args.no_ce:
        ce_wall, rows["CE, same compute"] = plain_ce(
            run, "ce_same", ce_options(ce["img_size"], batch, ce["sampler"], bb,
                                       0 if args.dataset else round(draws / epochs)),
            epochs, round(draws / epochs), split)
    for member in ("ce", "ce_more", "ce_rest", "final"):
        if harness.ran(run, f"{split}_{member}"):
            rows[f"recipe member {member}"] = score(run, f"{split}_{member}")
    metric = ce["metric"]
    hindsight = sweep(run, [x for x in args.sweep.split(",") if x], budget_s, split)
    res = {"dataset": name, "budget": args.budget, "budget_s": budget_s,
           "wall_s": round(wall, 1), "wall_vs_budget": round(wall / budget_s, 3),
           "estimated_s": p["estimated_s"], "plan": p, "facts": facts,
           "steps_s": where_time_went(run), "decisions": harness.decisions(run),
           "recipe_pmacs": round(total / 1e15, 4),
           "recipe_pmacs_parts": {k: round(v / 1e15, 4) for k, v in parts.items()},
           "ce_same": {"epochs": epochs, "draws": round(draws), "img_size": ce["img_size"],
                       "backbone": bb, "wall_s": round(ce_wall, 1)},
           "metric": metric, "scored_on": split, "rows": rows,
           "recipe_minus_ce": (round(rows["recipe (ensemble)"][metric]
                                     - rows["CE, same compute"][metric], 2)
                               if "CE, same compute" in rows else None),
           "sweep": hindsight,
           "threads": os.environ.get("OMP_NUM_THREADS", "all"),
           "command": "python -m benchmarks.datasets.own_data " + " ".join(sys.argv[1:])}
    if hindsight:
        best = max(hindsight, key=lambda r: r[metric])
        res["best_in_hindsight"] = best["setting"]
        res["recipe_minus_best"] = round(rows["recipe (ensemble)"][metric] - best[metric], 2)
    out = args.out / f"own_data_{name}_{args.budget}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


def where_time_went(run: Path) -> dict[str, float]:
    """Each step's wall seconds, from its step.json (where the budget went)."""
    out = {}
    for rec in sorted(run.glob("*/step.json")):
        if rec.parent.is_symlink():  # RUN/model: a step's folder under another name
            continue
        r = json.loads(rec.read_text())
        if not r.get("skipped") and r.get("seconds") is not None:
            out[rec.parent.name] = round(float(r["seconds"]), 1)
    return out


if __name__ == "__main__":
    sys.exit(main())
