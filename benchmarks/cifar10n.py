"""CIFAR-10N (worst of three human labels, 40.2% wrong): the webly recipe row by row.

    python benchmarks/cifar10n.py --data ../shared/data/cifar10n.tar.gz          # <= 60 min, 2 CPUs
    python benchmarks/cifar10n.py --data ../shared/data/cifar10n.tar.gz --quick  # <= 10 min subset
    python benchmarks/cifar10n.py --data DIR --full                              # for a GPU

Data are read through webly's own WebVision reader (`webly index`) from the tarball, extracted once
into a cache, or from an extracted folder. The steps are `configs/cifar10n/recipe.yaml`, run by
`webly run` (so a killed benchmark resumes where it stopped); this script only fills in the data
root and the schedule, then reads the scores. `info/train_clean_filelist.txt` is read here, after
training, to measure what pseudo-labelling corrected; no training step opens it (a test checks).
Prints a table and writes RUN/benchmark.json and RUN/benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs/cifar10n/recipe.yaml"
ROWS = [("1", "CE (plain sampling)", "score_ce"),
        ("2", "+ class-balanced sampling", "score_bal"),
        ("3", "+ WordNet label weights (LW loss)", "score_lw"),
        ("4", "+ pseudo-labels from the ensemble of 1-3", "score_lw_pl"),
        ("5", "+ ensemble of 1-4", "score_ens"),
        ("6", "+ 40 px continuation of 4, in the ensemble", "score_ens_hi")]
TRAIN_STEPS = ("ce", "bal", "lw", "lw_pl", "hi")
MODES = {  # train images, test images, epochs per model, epochs of the 40 px continuation
    "default": (0, 0, 8, 2),
    "quick": (10000, 2000, 5, 1),
    "full": (0, 0, 60, 10),
}


def find_root(data: Path, cache: Path) -> Path:
    """The folder holding info/ and train/: extract a tarball into the cache once."""
    if data.is_file():
        target = cache / data.name.split(".")[0]
        if not (target / ".complete").is_file():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            with tarfile.open(data) as tar:
                tar.extractall(target, filter="data")
            (target / ".complete").write_text("")
        data = target
    for cand in (data, data / "cifar10n"):
        if (cand / "info/train_filelist.txt").is_file():
            return cand
    raise SystemExit(f"{data}: no info/train_filelist.txt (expected the cifar10n layout)")


def subset(root: Path, cache: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """A copy with `n_train`/`n_val` randomly chosen images (same choice for the same seed)."""
    target = cache / f"{root.name}-sub{n_train}-{n_val}-s{seed}"
    if (target / ".complete").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    rng = random.Random(seed)
    (target / "info").mkdir(parents=True)
    shutil.copy(root / "info/synsets.txt", target / "info/synsets.txt")
    for name, n in (("train", n_train), ("val", n_val)):
        lines = (root / f"info/{name}_filelist.txt").read_text().splitlines()
        keep = sorted(rng.sample(range(len(lines)), min(n, len(lines))))
        (target / f"info/{name}_filelist.txt").write_text("".join(lines[i] + "\n" for i in keep))
        if name == "train":  # for measuring only, like the original
            clean = (root / "info/train_clean_filelist.txt").read_text().splitlines()
            clean_list = "".join(clean[i] + "\n" for i in keep)
            (target / "info/train_clean_filelist.txt").write_text(clean_list)
        (target / name).mkdir()
        for i in keep:
            rel = lines[i].split()[0]
            shutil.copy(root / rel, target / rel)
    (target / ".complete").write_text("")
    return target


def recipe_for(root: Path, epochs: int, hi_epochs: int, workers: int,
               batch_size: int | None = None) -> dict[str, Any]:
    from webly.config import load_yaml

    recipe = load_yaml(RECIPE)
    for step in recipe["steps"]:
        if step["stage"] == "index":
            step["root"] = str(root)
        if step["id"] in TRAIN_STEPS:
            step["epochs"] = hi_epochs if step["id"] == "hi" else epochs
            step["batch_size"] = batch_size or step["batch_size"]
        if "workers" in step:
            step["workers"] = workers
    return recipe


def run_recipe(recipe: dict[str, Any], out: Path) -> None:
    from webly.pipeline import run

    run(recipe, out)


def pseudo_label_effect(out: Path, root: Path) -> dict[str, Any]:
    """Against the clean labels (read here only): how many wrong labels pseudo-labelling fixed."""
    import pyarrow.parquet as pq

    from webly.data.manifest import Manifest

    paths = Manifest(out / "manifest/manifest.parquet").read(["path"]).column(0).to_pylist()
    clean_list = (root / "info/train_clean_filelist.txt").read_text().splitlines()
    clean = dict(line.split() for line in clean_list)
    t = pq.read_table(out / "pl/labels.parquet", columns=["row", "label", "original_label",
                                                          "source"]).to_pydict()
    true = [int(clean[paths[r]]) for r in t["row"]]
    orig, new, src = t["original_label"], t["label"], t["source"]
    n = len(true)
    wrong_before = sum(o != y for o, y in zip(orig, true, strict=True))
    kept = [i for i in range(n) if new[i] >= 0]
    wrong_after = sum(new[i] != true[i] for i in kept)
    fixed = sum(src[i] == "pseudo" and new[i] == true[i] and orig[i] != true[i] for i in range(n))
    broke = sum(src[i] == "pseudo" and new[i] != true[i] and orig[i] == true[i] for i in range(n))
    dropped = [i for i in range(n) if src[i] == "dropped"]
    return {
        "train_images": n, "wrong_labels_before": wrong_before,
        "noise_before": round(wrong_before / n, 4),
        "relabelled": sum(s == "pseudo" for s in src), "relabelled_to_true": fixed,
        "relabelled_away_from_true": broke,
        "dropped": len(dropped),
        "dropped_that_were_wrong": sum(orig[i] != true[i] for i in dropped),
        "kept": len(kept), "wrong_labels_after": wrong_after,
        "noise_after": round(wrong_after / max(len(kept), 1), 4),
        "wrong_labels_removed": round(1 - wrong_after / max(wrong_before, 1), 4),
    }


def collect(out: Path, root: Path, mode: str, wall: float) -> dict[str, Any]:
    rows = []
    for num, name, step in ROWS:
        m = json.loads((out / step / "metrics.json").read_text())
        rows.append({"row": num, "model": name, "top1": round(100 * m["top1"], 2),
                     "top5": round(100 * m["top5"], 2)})
    seconds = {s: json.loads((out / s / "step.json").read_text())["seconds"] for s in TRAIN_STEPS}
    import torch

    return {
        "mode": mode, "rows": rows, "gain_over_ce": round(rows[-1]["top1"] - rows[0]["top1"], 2),
        "pseudo_labels": pseudo_label_effect(out, root), "train_seconds": seconds,
        "wall_seconds": round(wall, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
    }


def to_markdown(res: dict[str, Any]) -> str:
    lines = ["| row | model | test top-1 | test top-5 |", "|---|---|---:|---:|"]
    lines += [f"| {r['row']} | {r['model']} | {r['top1']:.2f} | {r['top5']:.2f} |"
              for r in res["rows"]]
    p = res["pseudo_labels"]
    lines += ["",
              "Gain of the full recipe (row 6) over CE (row 1): "
              f"{res['gain_over_ce']:+.2f} points.",
              f"Pseudo-labels: {p['wrong_labels_before']} of {p['train_images']} training labels "
              "wrong "
              f"({100 * p['noise_before']:.1f}%); relabelled {p['relabelled']} "
              f"({p['relabelled_to_true']} to "
              f"the true class, {p['relabelled_away_from_true']} away from it), dropped "
              f"{p['dropped']} "
              f"({p['dropped_that_were_wrong']} of them wrong); kept {p['kept']} with "
              f"{100 * p['noise_after']:.1f}% wrong: {100 * p['wrong_labels_removed']:.1f}% of the "
              "wrong "
              "labels removed.",
              f"Wall time {res['wall_seconds'] / 60:.1f} min on {res['machine']} ({res['mode']} "
              "mode)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path,
                    help="cifar10n.tar.gz or its extracted folder")
    ap.add_argument("--out", type=Path, help="run directory (default runs/cifar10n-MODE)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/webly/data")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="10k training / 2k test images, 5 epochs")
    mode.add_argument("--full", action="store_true", help="60-epoch schedules (for a GPU)")
    ap.add_argument("--train-images", type=int, help="override: training images (0: all)")
    ap.add_argument("--test-images", type=int, help="override: test images (0: all)")
    ap.add_argument("--epochs", type=int, help="override: epochs per model")
    ap.add_argument("--batch-size", type=int,
                    help="override: training batch (smoke tests on tiny subsets)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    name = "quick" if args.quick else "full" if args.full else "default"
    n_train, n_val, epochs, hi_epochs = MODES[name]
    n_train = n_train if args.train_images is None else args.train_images
    n_val = n_val if args.test_images is None else args.test_images
    epochs = args.epochs or epochs
    hi_epochs = max(1, min(hi_epochs, epochs))
    out = args.out or REPO / f"runs/cifar10n-{name}"
    t0 = time.time()
    root = find_root(args.data, args.cache)
    if n_train or n_val:
        n_all = [len((root / f"info/{s}_filelist.txt").read_text().splitlines()) for s in ("train",
                                                                                           "val")]
        root = subset(root, args.cache, n_train or n_all[0], n_val or n_all[1])
    run_recipe(recipe_for(root, epochs, hi_epochs, args.workers, args.batch_size), out)
    res = collect(out, root, name, time.time() - t0)
    args_used = argv if argv is not None else sys.argv[1:]
    res["command"] = "python benchmarks/cifar10n.py " + " ".join(args_used)
    (out / "benchmark.json").write_text(json.dumps(res, indent=1) + "\n")
    md = to_markdown(res)
    (out / "benchmark.md").write_text(md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
