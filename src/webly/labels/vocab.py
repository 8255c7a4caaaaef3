"""The WT-Set's vocabulary: which keywords stay, and the WordNet sense each takes.

Called by `webly tag`'s merge (webly.labels.tagging) with the document frequencies of all parts:
keywords in more than `max_df` of the images go unless they are informative about the labels
(KL divergence of their images' class distribution from the prior), those in fewer than
`min_count` go, the `max_vocab` most frequent stay; then each keyword's sense is chosen in the
context of its images' classes (webly.labels.senses). The context is the manifest the parts were
tagged from, when it is still there.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from webly.data.manifest import Manifest
from webly.labels import senses
from webly.labels.similarity import concept_synsets


class VocabRules(Protocol):
    """The vocabulary options `select_vocab` and `choose_senses` read (`webly tag`'s TagConfig)."""

    max_df: float
    keep_informative: float
    drop_top: int
    min_count: int
    max_vocab: int
    sense_fit: float


def informative(files: list[Path], words: list[str], labels: np.ndarray | None,
                num_classes: int) -> dict[str, float]:
    """KL divergence (bits) of each word's images' class distribution from the class prior, over
    the labelled images: how much knowing the word says about the label."""
    if not words or labels is None or not (labels >= 0).any():
        return dict.fromkeys(words, 0.0)
    value_set = pa.array(words, pa.string())
    counts = np.zeros((len(words), num_classes))
    pos = 0
    for f in files:
        col = pq.read_table(f, columns=["keywords"]).column(0).combine_chunks()
        lengths = pc.list_value_length(col).fill_null(0).to_numpy()
        ids = pc.index_in(col.flatten(), value_set=value_set).fill_null(-1).to_numpy()
        y = np.repeat(labels[pos:pos + len(col)], lengths)
        hit = (ids >= 0) & (y >= 0)
        np.add.at(counts, (ids[hit], y[hit]), 1)
        pos += len(col)
    prior = np.bincount(labels[labels >= 0], minlength=num_classes) / (labels >= 0).sum()
    q = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(q > 0, q * np.log2(q / np.maximum(prior, 1e-12)), 0).sum(1)
    return {w: round(float(v), 4) for w, v in zip(words, kl, strict=True)}


def select_vocab(df: Counter, documents: int, cfg: VocabRules,
                 info: dict[str, float] | None = None) -> list[tuple[str, int]]:
    """Keywords kept (see the module docstring); `info`: bits of the words above max_df."""
    ranked = sorted(df.items(), key=lambda kv: (-kv[1], kv[0]))
    ranked = ranked[cfg.drop_top:]
    info = info or {}

    def common_but_kept(k: str) -> bool:
        return cfg.keep_informative > 0 and info.get(k, 0.0) >= cfg.keep_informative

    keep = [(k, n) for k, n in ranked if n >= cfg.min_count
            and (n <= cfg.max_df * documents or common_but_kept(k))]
    return keep[: cfg.max_vocab]


def manifest_labels(out: Path) -> tuple[np.ndarray | None, list[str]]:
    """The labels (-1: none) and class wnids of the manifest the parts were tagged from, when it
    is still there (the context for max_df and senses); (None, []) otherwise."""
    plan = json.loads((out / "parts/plan.json").read_text())
    path = plan.get("manifest")
    if not path or not Path(path).is_file():
        return None, []
    manifest = Manifest(path)
    if len(manifest) != plan["rows"]:
        return None, []
    labels = manifest.read(["label"]).column(0).fill_null(-1).to_numpy()
    return np.asarray(labels, np.int64), list(manifest.classes)


def choose_senses(vocab: list[tuple[str, int]], mat: sp.csr_matrix, labels: np.ndarray | None,
            classes: list[str], cfg: VocabRules) -> tuple[list[str], np.ndarray]:
    """Each keyword's sense in the context of its images' classes (webly.labels.senses)."""
    words = [k for k, _ in vocab]
    counts = None
    if labels is not None and classes:
        has = labels >= 0
        y = sp.csr_matrix((np.ones(int(has.sum())), (np.flatnonzero(has), labels[has])),
                          shape=(len(labels), len(classes)))
        counts = (mat.T.astype(np.float64) @ y).tocsr()  # keywords x classes image counts
        concepts, _ = concept_synsets(classes, allow_unknown=True, warn=False)
    else:
        concepts = []
    return senses.choose(words, counts, concepts, cfg.sense_fit)
