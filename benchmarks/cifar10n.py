"""CIFAR-10N: the webly recipe row by row against plain cross-entropy, on real or generated noise.

    python benchmarks/cifar10n.py --data ../shared/data/cifar10n.tar.gz            # default run
    python benchmarks/cifar10n.py --data ../shared/data/cifar10n.tar.gz --quick    # ~15 min
    python benchmarks/cifar10n.py --data DIR --quick --noise symmetric40           # or asym40
    python benchmarks/cifar10n.py --data DIR --full                                # for a GPU

`--data` is the tarball (extracted once into a cache) or any folder in its layout. The data are
prepared into a cached folder of hard links: `--noise worst` keeps the given labels; `symmetric40`
flips 40% of the images to a uniformly chosen other class and `asym40` maps truck->automobile,
bird->airplane, deer->horse, cat->dog, dog->cat with probability 0.4, both from the clean labels
with a fixed seed. 5,000 training images are held out with their *noisy* labels as the `val`
split (every choice reads it, as a user would have to); the clean test images are the `test`
split and are only scored. The steps are `configs/cifar10n/recipe.yaml`, run by `webly run` (a
killed benchmark resumes where it stopped); this script fills in the data root and each training
step's epochs from its share of the compute unit (one unit: `epochs` passes over the training
images at their 32 px; a step at a smaller `img_size` draws as many more images as its
multiply-adds allow), then reads the scores. The clean training labels are read here, after
training, to measure what pseudo-labelling corrected; no training step opens them (a test
checks). Compute is counted as images seen x multiply-adds an image (torch's FlopCounterMode).
Prints a table and writes RUN/benchmark.json and RUN/benchmark.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs/cifar10n/recipe.yaml"
# the full recipe's training steps and inference passes: two rounds of labelling
RECIPE_STEPS = ("ce", "train_ce", "final", "train_final", "final2")
# row, name, score step, steps whose compute the row counts (training, and inference passes)
ROWS = [("1", "CE", "score_ce", ("ce",)),
        ("2", "CE -> its predictions keep, relabel or drop each training label -> a new model "
              "on the kept labels, class-balanced", "score_final", ("ce", "train_ce", "final")),
        ("3", "rows 1 and 2 (averaged) label again -> a third model on the kept labels, "
              "class-balanced", "score_final2", RECIPE_STEPS),
        ("4", "CE for the full recipe's total compute", "score_ce_long", ("ce_long",)),
        ("5", "full recipe: rows 1, 2 and 3 averaged", "score_ens", RECIPE_STEPS)]
# each training step's compute in units (one unit: the CE row); the full recipe trains three
# units (row 1's model, then one a round), so CE for its compute trains three
SHARE = {"ce": 1.0, "ce_long": 3.0, "final": 1.0, "final2": 1.0}
PASSES = ("train_ce", "train_final")  # inference passes a row counts (forward only): labellers'
PSEUDO_LABELS = ("pl", "pl2")  # each round's labels, measured against the clean ones after training
assert sum(SHARE.get(s, 0) for s in ROWS[-1][3]) == sum(SHARE[s] for s in ROWS[-2][3])
MODES = {  # training images (0: all but the holdout), test images (0: all), epochs of one unit
    "quick": (0, 0, 3),  # 6 units of 45k x 3 epochs (at 32 px): 13.9-14.8 min measured
    "default": (0, 0, 15),  # 6 units of 45k x 15 epochs: ~68 min (estimated from step times)
    "full": (0, 0, 60),
}
HOLDOUT = 5000
NATIVE_SIZE = 32  # CIFAR's images: one unit is `epochs` passes over them at this size
ASYM = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}


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


def _read_list(path: Path) -> tuple[list[str], np.ndarray]:
    pairs = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [p[0] for p in pairs], np.array([int(p[1]) for p in pairs], np.int64)


def make_noise(clean: np.ndarray, given: np.ndarray, noise: str, names: list[str],
               seed: int = 0) -> np.ndarray:
    """Training labels: the given ones (`worst`), or made from the clean ones with a fixed seed."""
    rng = np.random.default_rng(seed)
    C = len(names)
    if noise == "worst":
        return given.copy()
    if noise == "symmetric40":
        out = clean.copy()
        flip = rng.choice(len(clean), size=round(0.4 * len(clean)), replace=False)
        out[flip] = (clean[flip] + rng.integers(1, C, size=len(flip))) % C  # another class
        return out
    if noise == "asym40":
        index = {n: i for i, n in enumerate(names)}
        out = clean.copy()
        flip = rng.random(len(clean)) < 0.4
        for src, dst in ASYM.items():
            if src in index and dst in index:
                hit = flip & (clean == index[src])
                out[hit] = index[dst]
        return out
    raise SystemExit(f"unknown --noise {noise!r}: worst, symmetric40 or asym40")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem: copy
        shutil.copy(src, dst)


def prepare(root: Path, cache: Path, noise: str, n_train: int, n_test: int,
            holdout: int = HOLDOUT, seed: int = 0) -> Path:
    """A cached copy (hard links) with the chosen noise, a noisy holdout as `val`, the clean test
    images as `test`; the same folder for the same arguments."""
    target = cache / f"{root.name}-{noise}-t{n_train}-h{holdout}-v{n_test}-s{seed}"
    if (target / ".complete").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    names = [line.split(maxsplit=1)[1] for line in
             (root / "info/synsets.txt").read_text().splitlines() if line.strip()]
    paths, given = _read_list(root / "info/train_filelist.txt")
    clean_paths, clean = _read_list(root / "info/train_clean_filelist.txt")
    if clean_paths != paths:
        raise SystemExit(f"{root}: train_filelist and train_clean_filelist list different images")
    labels = make_noise(clean, given, noise, names, seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    held, rest = np.sort(order[:holdout]), order[holdout:]
    train = np.sort(rest[:n_train] if n_train else rest)
    test_paths, test_labels = _read_list(root / "info/val_filelist.txt")
    test = np.sort(rng.permutation(len(test_paths))[:n_test]) if n_test else \
        np.arange(len(test_paths))
    (target / "info").mkdir(parents=True)
    shutil.copy(root / "info/synsets.txt", target / "info/synsets.txt")
    lists = {"train_filelist": [(paths[i], labels[i]) for i in train],
             "val_filelist": [(paths[i], labels[i]) for i in held],  # noisy, like the training set
             "test_filelist": [(test_paths[i], test_labels[i]) for i in test],
             "train_clean_filelist": [(paths[i], clean[i]) for i in train]}  # measuring only
    for name, pairs in lists.items():
        (target / f"info/{name}.txt").write_text("".join(f"{p} {y}\n" for p, y in pairs))
        if name != "train_clean_filelist":
            for p, _ in pairs:
                _link(root / p, target / p)
    wrong = float(np.mean(labels[train] != clean[train]))
    (target / "info/noise.json").write_text(json.dumps({"noise": noise, "train_images": len(train),
                                                        "wrong": round(wrong, 4)}) + "\n")
    (target / ".complete").write_text("")
    return target


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


def recipe_for(root: Path, epochs: int, batch_size: int | None = None,
               workers: int | None = None, seed: int = 0) -> dict[str, Any]:
    from webly.config import load_yaml

    recipe = load_yaml(RECIPE)
    amp = "bf16" if cpu_bf16() else "auto"  # auto: bf16 on GPUs, fp32 on other CPUs
    n_train = len((root / "info/train_filelist.txt").read_text().splitlines())
    for step in recipe["steps"]:
        if step["stage"] == "index":
            step["root"] = str(root)
        if step["id"] in SHARE:
            # the step's share of the unit, exactly: whole epochs of the right number of draws
            # (a fold model draws from half the images; pseudo-labels may drop some); a step
            # at a smaller img_size than the images' draws more of them for the same compute,
            # one with unlabelled images in its batches fewer
            images = n_train // 2 if step.get("leave_out_fold") else n_train
            cheaper = (macs_per_image(step["backbone"], NATIVE_SIZE, 10)
                       / macs_per_image(step["backbone"], step["img_size"], 10) / draw_cost(step))
            draws = SHARE[step["id"]] * epochs * n_train * cheaper
            step["epochs"] = max(1, math.ceil(draws / images - 1e-9))  # epochs of <= 1 pass
            step["samples_per_epoch"] = round(draws / step["epochs"])
            step["batch_size"] = batch_size or step["batch_size"]
            step["amp"] = amp
            step["seed"] = seed
        if workers is not None and "workers" in step:
            step["workers"] = workers
    return recipe


def run_recipe(recipe: dict[str, Any], out: Path) -> None:
    from webly.pipeline import run

    run(recipe, out)


@functools.cache  # the recipe's scaling and the report both ask, for a few (backbone, size)
def macs_per_image(backbone: str, size: int, classes: int) -> int:
    """Multiply-adds of one forward pass (FlopCounterMode counts 2 FLOPs a multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from webly.training.models import create_backbone

    model = create_backbone(backbone, classes).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return fc.get_total_flops() // 2


def compute(out: Path) -> dict[str, float]:
    """Compute of each step in PFLOP-equivalents of multiply-adds (1e15): a training step's images
    seen x forward multiply-adds x 3 (forward + backward), times `draw_cost`; an inference
    pass's images x the forward multiply-adds of every view it predicts (test-time
    augmentation)."""
    from webly.inference.predict import view_sizes

    res = {}
    for step in SHARE:
        cfg = json.loads((out / step / "train.config.json").read_text())
        summary = json.loads((out / step / "train.summary.json").read_text())
        macs = macs_per_image(cfg["backbone"], cfg["img_size"], 10)
        seen = summary["steps"] * cfg["batch_size"] * cfg["accum_steps"]
        res[step] = seen * draw_cost(cfg) * macs * 3 / 1e15
    for step in PASSES:
        summary = json.loads((out / step / "predict.summary.json").read_text())
        cfg = json.loads((Path(summary["model"]) / "train.config.json").read_text())
        macs = sum(macs_per_image(cfg["backbone"], size, 10)
                   for size in view_sizes(summary["tta"], summary["img_size"]))
        res[step] = summary["images"] * macs / 1e15
    return res


def pseudo_label_effect(out: Path, root: Path) -> dict[str, dict[str, Any]]:
    """Against the clean labels (read here only, once): how many wrong labels each
    pseudo-labelling round (`PSEUDO_LABELS`) fixed."""
    from webly.data.manifest import Manifest

    paths = Manifest(out / "manifest/manifest.parquet").read(["path"]).column(0).to_pylist()
    clean = dict(line.split() for line in
                 (root / "info/train_clean_filelist.txt").read_text().splitlines())
    true_of_row = np.array([int(clean.get(p, -1)) for p in paths])  # -1: not a training image
    return {pl: _label_effect(out / pl / "labels.parquet", true_of_row) for pl in PSEUDO_LABELS}


def _label_effect(labels: Path, true_of_row: np.ndarray) -> dict[str, Any]:
    import pyarrow.parquet as pq

    t = pq.read_table(labels, columns=["row", "label", "original_label", "source"]).to_pydict()
    true = true_of_row[np.array(t["row"])]
    if (true < 0).any():
        raise ValueError(f"{labels} labels images without a clean training label")
    orig, new = np.array(t["original_label"]), np.array(t["label"])
    src = np.array(t["source"])
    kept, dropped, pseudo = new >= 0, src == "dropped", src == "pseudo"
    wrong_before, wrong_after = int((orig != true).sum()), int((new[kept] != true[kept]).sum())
    return {
        "train_images": len(true), "wrong_labels_before": wrong_before,
        "noise_before": round(wrong_before / len(true), 4),
        "relabelled": int(pseudo.sum()),
        "relabelled_to_true": int((pseudo & (new == true) & (orig != true)).sum()),
        "relabelled_away_from_true": int((pseudo & (new != true) & (orig == true)).sum()),
        "dropped": int(dropped.sum()),
        "dropped_that_were_wrong": int((dropped & (orig != true)).sum()),
        "kept": int(kept.sum()), "wrong_labels_after": wrong_after,
        "noise_after": round(wrong_after / max(int(kept.sum()), 1), 4),
        "wrong_labels_removed": round(1 - wrong_after / max(wrong_before, 1), 4),
    }


def collect(out: Path, root: Path, mode: str, noise: str, wall: float) -> dict[str, Any]:
    import torch

    flops = compute(out)
    unit = flops["ce"]
    rows = []
    for num, name, step, steps in ROWS:
        m = json.loads((out / step / "metrics.json").read_text())
        rows.append({"row": num, "model": name, "top1": round(100 * m["top1"], 2),
                     "top5": round(100 * m["top5"], 2),
                     "compute_units": round(sum(flops[s] for s in steps) / unit, 2)})
    top1 = {r["row"]: r["top1"] for r in rows}
    last, same = rows[-1]["row"], rows[-2]["row"]
    summaries = {s: json.loads((out / s / "train.summary.json").read_text()) for s in SHARE}
    # the exported weights' epoch and holdout score (`export: best`: not the last epoch's)
    exported = {s: v.get("exported", {"epoch": v.get("epochs_done"), "val_top1": v.get("val_top1")})
                for s, v in summaries.items()}
    return {
        "mode": mode, "noise": noise, "rows": rows,
        "gain_over_ce": round(top1[last] - top1["1"], 2),
        "ce_same_total_compute": top1[same],
        "gain_over_ce_same_total_compute": round(top1[last] - top1[same], 2),
        "unit_pflop": float(f"{unit:.4g}"),
        "holdout_top1_noisy": {s: e["val_top1"] for s, e in exported.items()},
        "exported_epoch": {s: [e["epoch"], summaries[s]["epochs_done"]]
                           for s, e in exported.items()},
        "noise_in_train": json.loads((root / "info/noise.json").read_text()),
        "pseudo_labels": pseudo_label_effect(out, root),
        "train_seconds": {s: json.loads((out / s / "step.json").read_text())["seconds"]
                          for s in SHARE},
        "wall_seconds": round(wall, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
    }


def to_markdown(res: dict[str, Any]) -> str:
    lines = ["| row | model | compute (units) | test top-1 | test top-5 |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['row']} | {r['model']} | {r['compute_units']:.2f} | {r['top1']:.2f} | "
              f"{r['top5']:.2f} |" for r in res["rows"]]
    lines += ["",
              f"Noise: {res['noise']} ({100 * res['noise_in_train']['wrong']:.1f}% of "
              f"{res['noise_in_train']['train_images']} training labels wrong). Full recipe "
              f"(last row) over CE (row 1): {res['gain_over_ce']:+.2f} points; over CE for the "
              f"same total compute: {res['gain_over_ce_same_total_compute']:+.2f}. One unit = "
              f"{res['unit_pflop']:.3g} PFLOP (multiply-adds x 3 for training)."]
    for rnd, p in enumerate(res["pseudo_labels"].values(), 1):
        lines.append(
            f"Pseudo-labels, round {rnd}: {p['wrong_labels_before']} of {p['train_images']} "
            f"labels wrong ({100 * p['noise_before']:.1f}%); relabelled {p['relabelled']} "
            f"({p['relabelled_to_true']} to the true class, {p['relabelled_away_from_true']} away "
            f"from it), dropped {p['dropped']} ({p['dropped_that_were_wrong']} of them wrong); "
            f"kept {p['kept']} with {100 * p['noise_after']:.1f}% wrong: "
            f"{100 * p['wrong_labels_removed']:.1f}% of the wrong labels removed.")
    lines.append(f"Wall time {res['wall_seconds'] / 60:.1f} min on {res['machine']} "
                 f"({res['mode']} mode).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path,
                    help="cifar10n.tar.gz or a folder in its layout")
    ap.add_argument("--noise", default="worst", choices=("worst", "symmetric40", "asym40"))
    ap.add_argument("--out", type=Path, help="run directory (default runs/cifar10n-MODE-NOISE)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/webly/data")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help=f"{MODES['quick'][0]} training images, {MODES['quick'][2]}-epoch unit")
    mode.add_argument("--full", action="store_true", help="60-epoch unit (for a GPU)")
    ap.add_argument("--train-images", type=int, help="override: training images (0: all)")
    ap.add_argument("--test-images", type=int, help="override: test images (0: all)")
    ap.add_argument("--holdout", type=int, default=HOLDOUT, help="noisy validation images")
    ap.add_argument("--epochs", type=int, help="override: epochs of one compute unit")
    ap.add_argument("--batch-size", type=int,
                    help="override: training batch (smoke tests on tiny subsets)")
    ap.add_argument("--seed", type=int, default=0,
                    help="training seed of every step (the label noise and the holdout keep "
                         "theirs: a second seed measures how much a row's top-1 varies)")
    ap.add_argument("--workers", type=int,
                    help="override: DataLoader workers of every step (0 in the recipe: on 2 "
                         "CPU cores the main process loads in-memory images fastest)")
    args = ap.parse_args(argv)

    name = "quick" if args.quick else "full" if args.full else "default"
    n_train, n_test, epochs = MODES[name]
    n_train = n_train if args.train_images is None else args.train_images
    n_test = n_test if args.test_images is None else args.test_images
    epochs = args.epochs or epochs
    out = args.out or REPO / (f"runs/cifar10n-{name}-{args.noise}"
                              + (f"-seed{args.seed}" if args.seed else ""))
    t0 = time.time()
    root = prepare(find_root(args.data, args.cache), args.cache, args.noise, n_train, n_test,
                   args.holdout)
    run_recipe(recipe_for(root, epochs, args.batch_size, args.workers, args.seed), out)
    res = collect(out, root, name, args.noise, time.time() - t0)
    res["seed"] = args.seed
    res["command"] = "python benchmarks/cifar10n.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    (out / "benchmark.json").write_text(json.dumps(res, indent=1) + "\n")
    md = to_markdown(res)
    (out / "benchmark.md").write_text(md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
