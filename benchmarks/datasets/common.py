"""What every dataset benchmark's data preparation shares: caches keyed by content (a tarball
extracted once, a prepared copy of hard links named by a hash of its label files and options),
list files, and the label noise makers.

Noise is made from the clean labels with a fixed seed, by picking the images to flip
(`choose_flips`) and where each goes: another class uniformly (`to_other_class`), a fixed
confusion map (`mapped`: CIFAR-10's asym40), one of the classes closest in WordNet
(`to_nearest`), or the class an image's title reads like after its own (`to_title_class`: the
way a text search errs). A prepared copy ends with `info/noise.json` and `.complete` (`seal`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np


def digest(*parts: bytes | str, files: tuple[Path, ...] = ()) -> str:
    """A short content hash of strings and files: cache folders are named by what is in them."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def find_root(data: Path, cache: Path, layout: str) -> Path:
    """The folder holding info/ (the `layout` folder inside a tarball or a folder): a tarball is
    extracted into the cache once, under a name holding a hash of its bytes."""
    if data.is_file():
        target = cache / f"{data.name.split('.')[0]}-{digest(files=(data,))}"
        if not (target / ".complete").is_file():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            with tarfile.open(data) as tar:
                tar.extractall(target, filter="data")
            (target / ".complete").write_text("")
        data = target
    for cand in (data, data / layout):
        if (cand / "info/train_filelist.txt").is_file():
            return cand
    raise SystemExit(f"{data}: no info/train_filelist.txt (expected the {layout} layout)")


def prepared_folder(root: Path, cache: Path, noise: str, **options: Any) -> Path:
    """The cache folder of a prepared copy: named by the noise and a hash of every list file of
    the source (labels included) and the options, so two sources never share one."""
    lists = tuple(sorted((root / "info").glob("*.txt")))
    key = digest(json.dumps(options, sort_keys=True), noise, files=lists)
    return cache / f"{root.name}-{noise}-{key}"


def read_list(path: Path) -> tuple[list[str], np.ndarray]:
    pairs = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [p[0] for p in pairs], np.array([int(p[1]) for p in pairs], np.int64)


def write_list(path: Path, pairs: list[tuple[str, int]] | zip) -> None:
    path.write_text("".join(f"{p} {int(y)}\n" for p, y in pairs))


def link(src: Path, dst: Path) -> None:
    """A hard link (a copy on another filesystem)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except FileExistsError:
        pass
    except OSError:
        shutil.copy(src, dst)


def seal(target: Path, noise: str, labels: np.ndarray, clean: np.ndarray, **extra: Any) -> Path:
    """Finish a prepared copy: the share of wrong training labels (and `extra`, e.g. the title
    variant) in `info/noise.json`, then the `.complete` mark (a copy without it is rebuilt)."""
    wrong = float(np.mean(labels != clean))
    (target / "info/noise.json").write_text(json.dumps(
        {"noise": noise, "train_images": len(labels), "wrong": round(wrong, 4), **extra}) + "\n")
    (target / ".complete").write_text("")
    return target


# -- label noise, from the clean labels ----------------------------------------------------------
def choose_flips(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """`fraction` of `n` images to flip, in the order drawn."""
    return rng.choice(n, size=round(fraction * n), replace=False)


def to_other_class(clean: np.ndarray, flips: np.ndarray, classes: int,
                   rng: np.random.Generator) -> np.ndarray:
    """The flipped images (in `flips`' order) to a uniformly chosen other class."""
    out = clean.copy()
    out[flips] = (clean[flips] + rng.integers(1, classes, size=len(flips))) % classes
    return out


def mapped(clean: np.ndarray, names: list[str], mapping: dict[str, str], fraction: float,
           rng: np.random.Generator) -> np.ndarray:
    """Each image of a mapped class to its target with probability `fraction` (asymmetric noise:
    truck -> automobile, ...)."""
    index = {n: i for i, n in enumerate(names)}
    out = clean.copy()
    flip = rng.random(len(clean)) < fraction
    for src, dst in mapping.items():
        if src in index and dst in index:
            out[flip & (clean == index[src])] = index[dst]
    return out


def to_nearest(clean: np.ndarray, wnids: list[str], flips: np.ndarray,
               rng: np.random.Generator, k: int = 3) -> np.ndarray:
    """The flipped images to one of the `k` classes most similar to the true one (Wu-Palmer)."""
    from webly.labels.similarity import concept_similarity, concept_synsets

    sim = concept_similarity(concept_synsets(wnids, allow_unknown=True, warn=False)[0], "wup")
    np.fill_diagonal(sim, -1)
    near = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    out = clean.copy()
    out[flips] = near[clean[flips], rng.integers(0, k, len(flips))]
    return out


def to_title_class(clean: np.ndarray, titles: list[str], classes: int,
                   flips: np.ndarray) -> np.ndarray:
    """The flipped images to the class the title's words point to most after the true one
    (multinomial naive Bayes on the clean labels: the way a text search errs, by construction)."""
    words = [set(re.findall(r"[a-z]+", t.lower())) for t in titles]
    vocab = {w: i for i, w in enumerate(sorted(set().union(*words)))}
    counts = np.ones((len(vocab), classes))  # add-one smoothing
    for ws, y in zip(words, clean, strict=True):
        for w in ws:
            counts[vocab[w], y] += 1
    logp = np.log(counts / counts.sum(0, keepdims=True))
    out = clean.copy()
    for i in flips:
        score = logp[[vocab[w] for w in words[i]]].sum(0) if words[i] else np.zeros(classes)
        score[clean[i]] = -np.inf
        out[i] = int(np.argmax(score))
    return out
