"""CIFAR-10N: the webly recipe row by row against plain cross-entropy, on real or generated noise.

    python -m benchmarks.datasets.cifar10n --data ../shared/data/cifar10n.tar.gz  # default run
    python -m benchmarks.datasets.cifar10n --data ../shared/data/cifar10n.tar.gz --quick  # ~15 min
    python -m benchmarks.datasets.cifar10n --data DIR --quick --noise symmetric40  # or asym40
    python -m benchmarks.datasets.cifar10n --data DIR --full  # for a GPU

`--data` is the tarball (extracted once into a cache) or any folder in its layout. The data are
prepared into a cached folder of hard links: `--noise worst` keeps the given labels (`clean`: the
true ones, the ceiling); `symmetric40`
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
Prints a table and writes RUN/benchmark.json and RUN/benchmark.md. The harness it runs on
(caches, compute units, rows, output schema) is benchmarks/datasets/harness.py, shared with
fashion53.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.datasets import common, harness
from benchmarks.datasets.harness import Row, Spec

RECIPE = harness.REPO / "configs/cifar10n/recipe.yaml"
# the recipe's training steps and inference passes, whichever its decisions ran (v12)
RECIPE_STEPS = ("ce", "ce_more", "ce_rest", "train_ce", "val_ce_probe", "pl", "final",
                "train_final", "val_final_probe", "pl2", "final2")
ROWS = [Row("1", "CE", "score_ce", ("ce",), "ce"),
        Row("2", "round 1: CE labels the training images (keep, relabel, drop) -> a new model on "
                 "the kept labels, class-balanced (when half a unit more CE did not beat CE on "
                 "the holdout; that half unit counted)",
            "score_final", ("ce", "ce_more", "train_ce", "val_ce_probe", "pl", "final")),
        Row("3", "round 2: CE and round 1 (averaged) label again -> a third model (when round 1 "
                 "beat CE on the holdout)", "score_final2", RECIPE_STEPS),
        Row("4", "CE for the recipe's total compute (what its decisions spent)", "score_ce_long",
            ("ce_long",), "same_compute"),
        Row("5", "the recipe: the models its decisions trained, averaged with weights fitted on "
                 "the holdout by top-1", "score_recipe", RECIPE_STEPS, "system")]
# each training step's compute in units (one unit: the CE row): ce_more, the candidate for more
# CE, half a unit; then ce_rest (the rest of a 3-unit budget on CE) or one unit a round; ce_long's
# share is measured after the decisions
SHARE = {"ce": 1.0, "ce_more": 0.5, "ce_rest": 1.5, "final": 1.0, "final2": 1.0, "ce_long": 3.0}
PSEUDO_LABELS = ("pl", "pl2")  # each round's labels, measured against the clean ones after training
MATCH = {"ce_long": RECIPE_STEPS}
EPOCHS = {  # epochs of one unit
    "quick": 3,  # 6 units of 45k x 3 epochs (at 32 px): 13.9-14.8 min measured
    "default": 15,  # 6 units of 45k x 15 epochs: ~68 min (estimated from step times)
    "full": 60,
}
HOLDOUT = 5000
NATIVE_SIZE = 32  # CIFAR's images: one unit is `epochs` passes over them at this size
ASYM = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
NOISES = ("worst", "symmetric40", "asym40", "clean")


def make_noise(clean: np.ndarray, given: np.ndarray, noise: str, names: list[str],
               seed: int = 0) -> np.ndarray:
    """Training labels: the given ones (`worst`), or made from the clean ones with a fixed seed."""
    rng = np.random.default_rng(seed)
    if noise == "worst":
        return given.copy()
    if noise == "clean":  # the ceiling, and benchmarks/limit.py's clean-label rows
        return clean.copy()
    if noise == "symmetric40":
        return common.to_other_class(clean, common.choose_flips(len(clean), 0.4, rng),
                                      len(names), rng)
    if noise == "asym40":
        return common.mapped(clean, names, ASYM, 0.4, rng)
    raise SystemExit(f"unknown --noise {noise!r}: {', '.join(NOISES)}")


def prepare(root: Path, cache: Path, noise: str, n_train: int, n_test: int,
            holdout: int = HOLDOUT, seed: int = 0) -> Path:
    """A cached copy (hard links) with the chosen noise, a noisy holdout as `val`, the clean test
    images as `test`; the same folder for the same label files and arguments, another for any
    other (the cache is keyed by their content)."""
    target = common.prepared_folder(root, cache, noise, n_train=n_train, n_test=n_test,
                                     holdout=holdout, seed=seed)
    if (target / ".complete").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    names = [line.split(maxsplit=1)[1] for line in
             (root / "info/synsets.txt").read_text().splitlines() if line.strip()]
    paths, given = common.read_list(root / "info/train_filelist.txt")
    clean_paths, clean = common.read_list(root / "info/train_clean_filelist.txt")
    if clean_paths != paths:
        raise SystemExit(f"{root}: train_filelist and train_clean_filelist list different images")
    labels = make_noise(clean, given, noise, names, seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    held, rest = np.sort(order[:holdout]), order[holdout:]
    train = np.sort(rest[:n_train] if n_train else rest)
    test_paths, test_labels = common.read_list(root / "info/val_filelist.txt")
    test = np.sort(rng.permutation(len(test_paths))[:n_test]) if n_test else \
        np.arange(len(test_paths))
    (target / "info").mkdir(parents=True)
    shutil.copy(root / "info/synsets.txt", target / "info/synsets.txt")
    lists = {"train_filelist": [(paths[i], labels[i]) for i in train],
             "val_filelist": [(paths[i], labels[i]) for i in held],  # noisy, like the training set
             "test_filelist": [(test_paths[i], test_labels[i]) for i in test],
             "train_clean_filelist": [(paths[i], clean[i]) for i in train]}  # measuring only
    for name, pairs in lists.items():
        common.write_list(target / f"info/{name}.txt", pairs)
        if name != "train_clean_filelist":
            for p, _ in pairs:
                common.link(root / p, target / p)
    return common.seal(target, noise, labels[train], clean[train])


def _prepare(data: Path, cache: Path, noise: str, args: argparse.Namespace) -> dict[str, Path]:
    root = common.find_root(data, cache, "cifar10n")
    return {"DATA": prepare(root, cache, noise, args.train_images, args.test_images,
                            args.holdout)}


def _options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--train-images", type=int, default=0, help="training images (0: all but "
                                                                 "the holdout)")
    ap.add_argument("--test-images", type=int, default=0, help="test images (0: all)")
    ap.add_argument("--holdout", type=int, default=HOLDOUT, help="noisy validation images")


SPEC = Spec(name="cifar10n", recipe=RECIPE, rows=ROWS, share=SHARE,
            pseudo_labels=PSEUDO_LABELS, epochs=EPOCHS, native_size=NATIVE_SIZE, noises=NOISES,
            prepare=_prepare, match=MATCH, late_match=True, options=_options)


def recipe_for(root: Path, epochs: int, batch_size: int | None = None,
               workers: int | None = None, seed: int = 0) -> dict:
    """The recipe for a prepared folder (tests and by-hand runs)."""
    spec = replace(SPEC, recipe=RECIPE)  # tests point RECIPE at a variant; SPEC stays as it is
    return harness.recipe_for(spec, {"DATA": root}, epochs, batch_size, workers, seed)


if __name__ == "__main__":
    raise SystemExit(harness.main(SPEC, doc=__doc__))
