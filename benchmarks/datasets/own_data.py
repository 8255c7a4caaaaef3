"""The own-data recipe as a new user meets it: class folders, a budget, nothing else.

    python -m benchmarks.datasets.own_data --dataset fashion53 \
        --data ../shared/data/fashion53.tar.gz \
        --budget 15m
    python -m benchmarks.datasets.own_data --dataset cifar10n \
        --data ../shared/data/cifar10n.tar.gz \
        --budget 15m

The benchmark's data become what a user has: `train/<class>/` holding the noisy training images
(fashion53: the shipped labels, titles in `text.jsonl`; CIFAR-10N: the worst human labels, no
text) and `test/<class>/` the clean test images. No val folder: the recipe holds out 10% of the
training images with their noisy labels. Then:

1. `webly run --data DIR --budget B` (timed: wall seconds against the budget);
2. CE for the same compute: the benchmark's CE row (fashion53: 32 px, class-balanced; CIFAR-10N:
   20 px, shuffled; cifar_resnet9, batch 128, lr 0.1 cosine, the best holdout epoch) on the same
   manifest (same training images, same holdout), its draws set so that its multiply-adds equal
   the recipe's training draws plus its labelling pass (each image and its mirror);
3. both scored on the clean test split: balanced top-1 (fashion53's metric) and top-1
   (CIFAR-10N's).

Writes OUT/own_data.json and prints it.
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
    """Multiply-adds of the recipe's training draws (x3: forward and backward) and of its
    labelling pass (each training image and its mirror)."""
    from webly.inference import cost

    plan = json.loads((run / "own_plan.json").read_text())
    facts, p = plan["facts"], plan["plan"]
    bb, size, classes = p["backbone"], p["size"], facts["classes"]
    parts = {sid: cost.train_macs(bb, size, s["epochs"] * s["draws"], classes)
             for sid, s in p["steps"].items()}
    parts["train_preds"] = cost.predict_macs(bb, size, facts["images"]["train"], "flip", classes)
    return sum(parts.values()), parts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(CE_ROW), required=True)
    ap.add_argument("--data", type=Path, required=True, help="the tarball or its folder")
    ap.add_argument("--budget", default="15m")
    ap.add_argument("--out", type=Path, default=REPO / "runs/own_data")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/webly/data")
    args = ap.parse_args()
    from webly.inference import cost

    root = common.find_root(args.data, args.cache, args.dataset)
    folders = make_folders(root, args.dataset, args.cache)
    run = args.out / args.dataset
    wall = timed(run / "own_wall.json", lambda: webly("run", "--data", str(folders), "--budget",
                                                       args.budget, "-o", str(run)))
    plan = json.loads((run / "own_plan.json").read_text())
    total, parts = recipe_macs(run)
    ce = CE_ROW[args.dataset]
    classes = plan["facts"]["classes"]
    draws = total / cost.train_macs("cifar_resnet9", ce["img_size"], 1, classes)
    n = plan["facts"]["images"]["train"]
    epochs = max(1, round(draws / n))
    ce_wall = timed(run / "ce_same_wall.json", lambda: webly(
          "finetune", str(run / "manifest/manifest.parquet"), "-o", str(run / "ce_same"),
          "--backbone", "cifar_resnet9", "--img-size", str(ce["img_size"]), "--augment",
          "pad_crop", "--in-memory", "--crop-pct", "1.0", "--batch-size", "128", "--lr", "0.1",
          "--weight-decay", "0.0005", "--schedule", "cosine", "--warmup-epochs", "0.5",
          "--workers", "0", "--log-every", "100", "--export", "best", "--sampler",
          ce["sampler"], "--epochs", str(epochs),
          "--samples-per-epoch", str(round(draws / epochs))))
    webly("predict", str(run / "ce_same"), str(run / "manifest/manifest.parquet"),
          "--split", "test", "--workers", "0", "--batch-size", "500", "-o",
          str(run / "test_ce_same"))
    rows = {"recipe (ensemble)": score(run, "test_ensemble"),
            "recipe final model": score(run, "test_final"),
            "CE, same compute": score(run, "test_ce_same")}
    metric = ce["metric"]
    res = {"dataset": args.dataset, "budget": args.budget,
           "budget_s": plan["plan"]["budget_s"], "wall_s": round(wall, 1),
           "wall_vs_budget": round(wall / plan["plan"]["budget_s"], 3),
           "estimated_s": plan["plan"]["estimated_s"], "plan": plan["plan"],
           "facts": plan["facts"], "recipe_pmacs": round(total / 1e15, 4),
           "recipe_pmacs_parts": {k: round(v / 1e15, 4) for k, v in parts.items()},
           "ce_same": {"epochs": epochs, "draws": round(draws), "img_size": ce["img_size"],
                       "wall_s": round(ce_wall, 1)},
           "metric": metric, "rows": rows,
           "recipe_minus_ce": round(rows["recipe (ensemble)"][metric]
                                    - rows["CE, same compute"][metric], 2),
           "threads": os.environ.get("OMP_NUM_THREADS", "all"),
           "command": "python -m benchmarks.datasets.own_data " + " ".join(sys.argv[1:])}
    (args.out / f"own_data_{args.dataset}.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
