"""Classify new images with a trained model: `webly classify` and `webly.load`.

`webly classify MODEL INPUTS...` takes image files, folders (walked recursively, symlinks followed
once: a link back into a folder already walked is reported as a loop, not walked again) and
`--list FILE` (one path a line), and writes one row per image: its path, then the top-k class
names with their probabilities (CSV, or JSONL when the output ends in .jsonl). It streams: paths
are found while images are classified, rows are written a batch at a time, so memory does not
grow with the number of images. A file that cannot be classified (unreadable, not an image,
empty, a broken link, a loop) is skipped, logged on stderr, listed with its reason in
`OUTPUT.skipped.tsv` and counted in the summary; it never stops the run. The run fails (exit 2)
only when no image at all could be classified.

The preprocessing is the model's own (`model.json`'s `preprocess`, through `Preprocess`) and the
forward pass is `predict`'s (`probabilities`): `classify`, `predict` and `webly.load(...).predict`
give the same probabilities for the same file.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as F

from webly.core.errors import WeblyError
from webly.core.progress import progress
from webly.data.images import (
    EvalTransform,
    Preprocess,
    bad_image_reason,
    log_bad_image,
    try_decode,
)
from webly.inference.predict import load_model, probabilities
from webly.training.distributed import resolve_device


class Classifier:
    """A trained model with its class names and preprocessing, ready for images in memory or on
    disk: `webly.load("runs/x/final").predict(["a.jpg", pil_image], top_k=5)`."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], device: str = "auto",
                 tta: str = "center") -> None:
        self.device = resolve_device(device)
        self.meta, self.tta = meta, tta
        self.classes: list[str] = list(meta["classes"])
        self.preprocess = Preprocess.from_meta(meta)
        self.transform = EvalTransform.of(self.preprocess)
        self.fmt = torch.channels_last if meta.get("channels_last") else torch.contiguous_format
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.model = model.to(self.device, memory_format=self.fmt).eval()

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", tta: str = "center") -> Classifier:
        """From a training run folder (model.safetensors + model.json) or the .safetensors file."""
        model, meta = load_model(path)
        return cls(model, meta, device, tta)

    def tensor(self, image: str | Path | Image.Image | torch.Tensor) -> torch.Tensor:
        """One image (a path, a PIL image or a uint8 RGB CHW tensor) resized and cropped as the
        model was evaluated in training: uint8 CHW."""
        if isinstance(image, (str, Path)):
            x, reason = try_decode(Path(image))
            if x is None:
                raise WeblyError(f"{image}: cannot classify it ({reason})")
        elif isinstance(image, Image.Image):
            x = F.pil_to_tensor(image.convert("RGB"))
        elif isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3:
            x = image
        else:
            raise WeblyError(f"cannot classify a {type(image).__name__}: give a path, a PIL image "
                             "or a uint8 CHW tensor")
        return self.transform(x)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """N x C class probabilities of a uint8 NCHW batch made by `tensor`."""
        return probabilities(self.model, batch, self.preprocess, self.tta, self.device, self.fmt,
                             self.dtype).cpu().numpy()

    def predict(self, images: Sequence[str | Path | Image.Image | torch.Tensor], top_k: int = 5,
                batch_size: int = 64) -> list[list[tuple[str, float]]]:
        """Per image, its `top_k` (class name, probability) pairs, most likely first."""
        if isinstance(images, (str, Path, Image.Image, torch.Tensor)):
            raise WeblyError("predict takes a list of images (wrap one image in a list)")
        k = min(top_k, len(self.classes))
        out: list[list[tuple[str, float]]] = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([self.tensor(im) for im in images[i:i + batch_size]])
            p = torch.from_numpy(self.probabilities(x))
            tp, ti = p.topk(k, dim=1)
            out += [[(self.classes[c], float(q)) for c, q in zip(row_i, row_p, strict=True)]
                    for row_i, row_p in zip(ti.tolist(), tp.tolist(), strict=True)]
        return out


# -- finding the files ---------------------------------------------------------------------------
def iter_inputs(inputs: Iterable[str | Path], list_file: str | Path | None = None
                ) -> Iterator[tuple[str, str]]:
    """(path, "") for every file to classify, or (path, reason) for one that is skipped before
    reading it (missing, a symlink loop), in the order given; folders sorted by name."""
    sources: Iterable[str | Path] = list(inputs)
    if list_file is not None:
        sources = itertools.chain(sources, _listed(Path(list_file)))
    for src in sources:
        p = Path(src)
        if p.is_dir():
            yield from _walk(p)
        elif p.exists() or p.is_symlink():
            yield str(p), ""
        else:
            yield str(p), "missing file"


def _listed(path: Path) -> Iterator[str]:
    if not path.is_file():
        raise WeblyError(f"--list {path}: no such file")
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line.rstrip("\n")


def _walk(top: Path) -> Iterator[tuple[str, str]]:
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        st = os.stat(dirpath)
        seen.add((st.st_dev, st.st_ino))
        keep = []
        for name in sorted(dirnames):
            sub = os.path.join(dirpath, name)
            try:
                s = os.stat(sub)
            except OSError as e:  # a link that cannot be followed: a loop onto itself, say
                yield sub, bad_image_reason(e)
                continue
            if (s.st_dev, s.st_ino) in seen or _is_ancestor(s, dirpath):
                yield sub, "symlink loop"
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            yield os.path.join(dirpath, name), ""


def _is_ancestor(s: os.stat_result, dirpath: str) -> bool:
    """Whether the folder `s` is `dirpath` or one of its parents (a link back up the tree)."""
    p = Path(dirpath).resolve()
    for q in (p, *p.parents):
        try:
            t = os.stat(q)
        except OSError:
            return False
        if (t.st_dev, t.st_ino) == (s.st_dev, s.st_ino):
            return True
    return False


class _Files(torch.utils.data.IterableDataset):
    """Decoded, resized images of `iter_inputs`; worker w of n takes every n-th path."""

    def __init__(self, inputs: list[str], list_file: str | None, transform: EvalTransform
                 ) -> None:
        self.inputs, self.list_file, self.transform = inputs, list_file, transform

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str, str]]:
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info else (0, 1)
        blank = torch.zeros(3, self.transform.size, self.transform.size, dtype=torch.uint8)
        for i, (path, reason) in enumerate(iter_inputs(self.inputs, self.list_file)):
            if i % n != w:
                continue
            if reason:
                yield blank, path, reason
                continue
            img, reason = try_decode(Path(path))
            yield (blank, path, reason) if img is None else (self.transform(img), path, "")


# -- the command ---------------------------------------------------------------------------------
@dataclass
class ClassifyConfig:
    top_k: int = 5
    batch_size: int = 64
    workers: int = 2
    tta: str = "center"
    device: str = "auto"

    def validate(self) -> None:
        if min(self.top_k, self.batch_size) < 1 or self.workers < 0:
            raise WeblyError("classify: --top-k and --batch-size >= 1, --workers >= 0")
        if self.tta not in ("center", "flip", "flip_shift", "multiscale"):
            raise WeblyError(f"classify: unknown --tta {self.tta!r} (center, flip, flip_shift, "
                             "multiscale)")


class _Rows:
    """The output file: CSV (path, class_1, prob_1, ...) or JSONL ({path, classes, probs})."""

    def __init__(self, f: Any, jsonl: bool, k: int) -> None:
        self.f, self.jsonl = f, jsonl
        if not jsonl:
            self.csv = csv.writer(f)
            self.csv.writerow(["path"] + [f"{c}_{i}" for i in range(1, k + 1)
                                          for c in ("class", "prob")])

    def write(self, path: str, names: list[str], probs: list[float]) -> None:
        if self.jsonl:
            self.f.write(json.dumps({"path": path, "classes": names,
                                     "probs": [round(p, 7) for p in probs]}) + "\n")
        else:
            self.csv.writerow([path] + [v for n, p in zip(names, probs, strict=True)
                                        for v in (n, f"{p:.7f}")])


def classify(model_path: str | Path, inputs: list[str], out: str | Path,
             cfg: ClassifyConfig, list_file: str | None = None) -> dict[str, Any]:
    """Classify every image `inputs` and `list_file` name into `out`; the summary counts them."""
    cfg.validate()
    if not inputs and list_file is None:
        raise WeblyError("classify: give image files, folders or --list FILE")
    if list_file is not None and not Path(list_file).is_file():  # before the workers read it
        raise WeblyError(f"--list {list_file}: no such file")
    clf = Classifier.load(model_path, cfg.device, cfg.tta)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    k = min(cfg.top_k, len(clf.classes))
    skipped_path = out.with_name(out.name + ".skipped.tsv")
    reasons: Counter[str] = Counter()
    done, t0 = 0, time.monotonic()
    loader = torch.utils.data.DataLoader(_Files(list(map(str, inputs)), list_file, clf.transform),
                                         batch_size=cfg.batch_size, num_workers=cfg.workers)
    with open(out, "w", encoding="utf-8", newline="") as f, \
            open(skipped_path, "w", encoding="utf-8") as skipped:
        rows = _Rows(f, out.suffix == ".jsonl", k)
        skipped.write("path\treason\n")
        for x, paths, errs in progress(loader, desc="classify", unit="batch", total=None):
            ok = [i for i, e in enumerate(errs) if not e]
            for i in (i for i, e in enumerate(errs) if e):
                log_bad_image(paths[i], errs[i])
                skipped.write(f"{paths[i]}\t{errs[i]}\n")
                reasons[errs[i]] += 1
            if not ok:
                continue
            p = torch.from_numpy(clf.probabilities(x[ok]))
            tp, ti = p.topk(k, dim=1)
            for j, ci, pi in zip(ok, ti.tolist(), tp.tolist(), strict=True):
                rows.write(paths[j], [clf.classes[c] for c in ci], pi)
            done += len(ok)
    seconds = time.monotonic() - t0
    summary = {"classified": done, "skipped": sum(reasons.values()),
               "skipped_by_reason": dict(sorted(reasons.items())), "output": str(out),
               "skipped_list": str(skipped_path), "seconds": round(seconds, 2),
               "images_per_second": round(done / seconds, 1) if seconds > 0 else None,
               "model": str(model_path), "top_k": k, "tta": cfg.tta}
    if done == 0:
        raise WeblyError(f"no image could be classified ({summary['skipped']} skipped: "
                         f"{summary['skipped_by_reason']}; listed in {skipped_path})")
    return summary
