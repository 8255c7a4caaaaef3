"""Accuracy per compute: webly's plain CE beside the fastest published CIFAR-10 training.

    python -m benchmarks.limit --data ../shared/data/cifar10n.tar.gz --labels clean --out DIR
    python -m benchmarks.limit --data ... --labels worst --quick --out DIR
    python -m benchmarks.limit --data ... --labels clean --out DIR --own-budget  # + 9.9 epochs
    python -m benchmarks.limit --data ... --labels clean --out DIR \\
        --variant ls:label_smoothing=0.2 --variant air:backbone=cifar_airbench,img_size=32

Writes DIR/limit.json, `{"rows": [{"recipe", "budget", "pflop", "seconds", "top1", ...}]}`, and
prints the table. The data are CIFAR-10N's prepared copy (benchmarks/datasets/cifar10n.py: 45,000
training images with the clean or the worst human labels, 5,000 held out with the same kind of
labels, the clean 10,000 test images scored). Rows:

- `webly`: webly's plain CE row, the CIFAR-10N recipe's `ce` step as it is (`webly run`, the
  holdout choosing the exported epoch), for one compute unit: `epochs` passes (3 at `--quick`,
  15 by default) over the training images by cifar_resnet9 at 32 px, counted as images seen x
  forward multiply-adds x 3 (torch's FlopCounterMode); a step at another size or backbone draws
  as many images as that compute buys.
- `webly NAME` (`--variant NAME:KEY=VALUE,...`): the same step with these training options (and
  `test_tta=flip|...` for its test pass), at the same compute.
- `reference`: airbench94 as published (benchmarks/reference/airbench94.py), CPU fp32, trained
  on the same images and labels for the same multiply-adds, its own mirror + translate test-time
  augmentation.
- with `--own-budget`: both again at the reference's own length, 9.9 epochs of the training
  images by its network.

"pflop" is training compute in webly's convention: multiply-adds x 3 / 1e15 (airbench's papers
count two FLOPs a multiply-add: its 0.36 PFLOPs are 0.18 here, for 50,000 images). Test-time
augmentation's compute is not training compute: each row says its test views. Every row resumes
(a finished row is read back, not rerun).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import cifar10n, common, harness

EPOCHS = {"quick": 3, "default": 15}  # the CIFAR-10N benchmark's unit
UNIT_BACKBONE, UNIT_SIZE = "cifar_resnet9", 32
LABELS = ("clean", "worst")


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """'NAME:key=value,key=value' -> (NAME, options); values read as YAML scalars."""
    import yaml

    name, sep, body = text.partition(":")
    if not sep or not name or not body:
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    opts = {}
    for item in body.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"--variant {text!r}: {item!r} is not KEY=VALUE")
        opts[key.strip()] = yaml.safe_load(value)
    return name, opts


def unit_pflop(epochs: int, n_train: int) -> float:
    """One compute unit: `epochs` passes of cifar_resnet9 at 32 px over the training images."""
    return epochs * n_train * harness.macs_per_image(UNIT_BACKBONE, UNIT_SIZE, 10) * 3 / 1e15


def webly_recipe(folder: Path, pflop: float, options: dict[str, Any]) -> dict[str, Any]:
    """The CIFAR-10N recipe cut to its CE row, with `options` on the CE step and its length set
    to `pflop` of training at its backbone and size."""
    from webly.training.config import TrainConfig

    options = dict(options)
    test_tta = options.pop("test_tta", None)
    unknown = sorted(set(options) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise SystemExit(f"--variant: no training option {', '.join(unknown)}")
    recipe = harness.recipe_for(cifar10n.SPEC, {"DATA": folder}, 1)
    recipe = harness.only_rows(cifar10n.SPEC, recipe, ["1"])
    by_id = {st["id"]: st for st in recipe["steps"]}
    ce = by_id["ce"]
    ce.update(options)
    n_train = len((folder / "info/train_filelist.txt").read_text().splitlines())
    draws = pflop * 1e15 / (3 * harness.macs_per_image(ce["backbone"], ce["img_size"], 10))
    ce["epochs"] = max(1, math.ceil(draws / n_train - 1e-9))
    ce["samples_per_epoch"] = round(draws / ce["epochs"])
    if test_tta:
        by_id["test_ce"]["tta"] = test_tta
    return recipe


def run_webly(folder: Path, out: Path, name: str, pflop: float, budget: str,
              options: dict[str, Any]) -> dict[str, Any]:
    """One webly CE row (resumes: `webly run` skips the steps that finished)."""
    recipe = webly_recipe(folder, pflop, options)
    t0 = time.time()
    harness.run_recipe(recipe, out)
    flops = harness.compute(cifar10n.SPEC, out)
    m = json.loads((out / "score_ce/metrics.json").read_text())
    summary = json.loads((out / "ce/train.summary.json").read_text())
    step = json.loads((out / "ce/step.json").read_text())
    test = json.loads((out / "test_ce/predict.summary.json").read_text())
    return {"recipe": name, "budget": budget, "pflop": round(flops["ce"], 5),
            "seconds": step.get("seconds", round(time.time() - t0, 1)),
            "top1": round(100 * m["top1"], 2), "balanced_top1": round(100 * m["balanced_top1"], 2),
            "holdout_top1": round(100 * summary.get("exported", {}).get("val_top1", float("nan")),
                                  2),
            "epochs": summary["epochs_done"], "test_tta": test["tta"], "options": options,
            "run": str(out)}


def load_images(folder: Path, listfile: str, cache: Path) -> tuple[Any, Any]:
    """uint8 (N, 3, 32, 32) images and labels of a list file, decoded once into `cache`."""
    import torch
    from PIL import Image

    paths, labels = common.read_list(folder / "info" / listfile)
    key = common.digest(files=(folder / "info" / listfile,))
    npz = cache / f"{listfile.removesuffix('.txt')}-{key}.npz"
    if not npz.is_file():
        arr = np.stack([np.asarray(Image.open(folder / p).convert("RGB")) for p in paths])
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(npz.with_suffix(".tmp.npz"), images=arr, labels=labels)
        npz.with_suffix(".tmp.npz").rename(npz)
    with np.load(npz) as z:
        arr, labels = z["images"], z["labels"]
    return (torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(labels.astype(np.int64)))


def run_reference(folder: Path, out: Path, pflop: float | None, budget: str,
                  seed: int = 0) -> dict[str, Any]:
    """airbench94 for `pflop` of training (None: its own 9.9 epochs); the result is kept in
    `out`.json and read back on a second call."""
    import torch

    from benchmarks.reference import airbench94 as ab

    done = out.with_suffix(".json")
    if done.is_file():
        return json.loads(done.read_text())
    x, y = load_images(folder, "train_filelist.txt", out.parent / "images")
    xt, yt = load_images(folder, "test_filelist.txt", out.parent / "images")
    hyp = ab.Hyp()
    macs = ab.macs_per_image(hyp)
    draws = (pflop * 1e15 / (3 * macs)) if pflop else hyp.epochs_own * len(x)
    net, info = ab.train(x, y, round(draws), hyp, seed=seed)
    t0 = time.time()
    logits = ab.predict(net, xt, tta=2)
    plain = ab.predict(net, xt, tta=0)
    res = {"recipe": "reference", "budget": budget,
           "pflop": round(info["draws"] * 3 * macs / 1e15, 5), "seconds": info["seconds"],
           "top1": round(100 * float((logits.argmax(1) == yt).float().mean()), 2),
           "top1_without_tta": round(100 * float((plain.argmax(1) == yt).float().mean()), 2),
           "epochs": round(info["epochs"], 2), "test_tta": "mirror+translate (6 views)",
           "predict_seconds": round(time.time() - t0, 1), "threads": torch.get_num_threads()}
    done.write_text(json.dumps(res, indent=1) + "\n")
    return res


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| recipe | budget | PFLOP (MACs x 3) | epochs | seconds | test top-1 | test views |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['budget']} | {r['pflop']:.4f} | {r['epochs']} | "
                     f"{r['seconds']:.0f} | {r['top1']:.2f} | {r['test_tta']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="cifar10n.tar.gz or its folder")
    ap.add_argument("--labels", choices=LABELS, default="clean")
    ap.add_argument("--quick", action="store_true", help=f"{EPOCHS['quick']}-epoch unit")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/webly/data")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:KEY=VALUE,...: webly's CE with these options, same compute")
    ap.add_argument("--only", help="comma-separated rows to run (webly, reference, variant "
                                   "names); default all")
    ap.add_argument("--own-budget", action="store_true",
                    help="also both at the reference's own 9.9 epochs")
    ap.add_argument("--train-images", type=int, default=0, help="fewer training images (tests)")
    ap.add_argument("--test-images", type=int, default=0, help="fewer test images (tests)")
    ap.add_argument("--holdout", type=int, default=cifar10n.HOLDOUT,
                    help="training images held out, with their labels, to choose the epoch by")
    ap.add_argument("--epochs", type=int, help="override: epochs of one unit (tests)")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    only = set(args.only.split(",")) if args.only else None
    mode = "quick" if args.quick else "default"
    epochs = args.epochs or EPOCHS[mode]
    root = common.find_root(args.data, args.cache, "cifar10n")
    folder = cifar10n.prepare(root, args.cache, args.labels, args.train_images,
                              args.test_images, args.holdout)
    n_train = len((folder / "info/train_filelist.txt").read_text().splitlines())
    unit = unit_pflop(epochs, n_train)
    args.out.mkdir(parents=True, exist_ok=True)
    budgets = [("unit", unit)]
    if args.own_budget:
        from benchmarks.reference import airbench94 as ab

        budgets.append(("own", ab.Hyp().epochs_own * n_train * 3 * ab.macs_per_image() / 1e15))
    rows = []
    for budget, pflop in budgets:
        sfx = "" if budget == "unit" else "_own"
        for name, opts in [("webly", {}), *variants]:
            if only is None or name in only:
                label = name if name == "webly" else f"webly {name}"
                rows.append(run_webly(folder, args.out / f"{name}{sfx}", label, pflop, budget,
                                      opts))
        if only is None or "reference" in only:
            rows.append(run_reference(folder, args.out / f"reference{sfx}",
                                      pflop if budget == "unit" else None, budget))
        res = {"labels": args.labels, "mode": mode, "unit_pflop": round(unit, 5),
               "train_images": n_train, "rows": rows,
               "machine": f"{platform.machine()}, {platform.processor() or ''} fp32",
               "command": "python -m benchmarks.limit " + " ".join(
                   argv if argv is not None else sys.argv[1:])}
        (args.out / "limit.json").write_text(json.dumps(res, indent=1) + "\n")
    md = table(rows)
    (args.out / "limit.md").write_text(md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
