"""`webly weigh`: the label-weighted set (LW-Set): per-image weights over the concepts.

Concept similarity. Every synset's hypernym ancestors are collected once with their shortest
distance d(x, n) (hypernyms and instance hypernyms); node depth D(n) = max_depth(n) + 1, as NLTK's
Wu-Palmer uses. Then, for every ancestor node n, all pairs of synsets below it are scored in one
NumPy block and the best common ancestor wins:

    wup(a, b)  = max_n  2 D(n) / (d(a, n) + d(b, n) + 2 D(n))          (default)
    path(a, b) = 1 / (1 + min_n (d(a, n) + d(b, n)))
    lch(a, b)  = log(2 Dmax / (p + 1)) / log(2 Dmax), p the shortest path, Dmax = 20

This is 'exploit the hypernym tree': cost is the sum over nodes of (members below it)^2, seconds for
5,000 concepts instead of 12.5M NLTK calls. Each concept keeps its `top_k` most similar concepts
with similarity >= `min_similarity` (its neighbours N(y)).

Keyword support. A vocabulary keyword k supports concept c when it names c or something below c:
a(k, c) = 1 if k is one of c's lemmas; else, over k's first `keyword_senses` noun senses that are c
or a hyponym of c ("cheetah" under "big cat"), the best similarity(sense, c), kept when
>= `support_min`. A more general word ("warbler") or a sibling's name does not support c: it would
support every sibling alike and tell them nothing apart.

Per-image weights. For image i with (noisy) label y and keywords K_i from the WT-Set:

    w(i, y) = 1
    e(i, c) = min(1, sum_{k in K_i} a(k, c))                      support, saturating at 1
    w(i, c) = min(1, s(y, c)^power * (absent + boost * e(i, c)))  for c in N(y)

kept when w(i, c) >= `min_weight`; then, so that the label keeps at least `label_share` of the
image's weight mass, the kept neighbours' weights are scaled down together when they sum past
(1 - label_share) / label_share. With the defaults (absent 0.5, boost 1.0, power 1) a neighbour
the text does not support gets half its similarity, one the text fully supports 1.5x (capped at
1). Without the cap, a concept with many close neighbours (a fine-grained taxonomy) gives them
together more weight than its label: the loss would teach the neighbours more than the label
(label_share 0 restores that).
Rows without a label (test images) are empty. Row order = manifest order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from webly.core import faults
from webly.core.config import check_choices, opt
from webly.core.errors import WeblyError
from webly.core.files import atomic_path, write_atomic
from webly.labels.similarity import (
    ancestors,
    concept_similarity,
    concept_synsets,
    cross_similarity,
    depth,
    score,
)
from webly.labels.wordnet import synset_from_wnid, wnid_of, wordnet


@dataclass
class WeighConfig:
    measure: Literal["wup", "path", "lch"] = opt("wup",
                                                 "concept similarity: Wu-Palmer, path or "
                                                 "Leacock-Chodorow")
    top_k: int = opt(10, "neighbours kept per concept")
    min_similarity: float = opt(0.7, "neighbours need at least this similarity")
    absent: float = opt(0.5, "weight factor of a neighbour the image's keywords do not support")
    boost: float = opt(1.0, "extra factor for a neighbour the keywords fully support")
    power: float = opt(1.0, "similarity exponent (>1 sharpens)")
    min_weight: float = opt(0.05, "drop label weights below this")
    support_min: float = opt(0.8, "keyword-concept similarity needed to count as support")
    keyword_senses: int = opt(3, "noun senses of a keyword considered (most frequent first)")
    allow_unknown: bool = opt(False, "concepts unknown to WordNet get identity-only weights")
    label_share: float = opt(0.75, "the label keeps at least this share of an image's weight "
                                   "mass (neighbours scaled down together; 0: no cap)")

    def validate(self) -> None:
        check_choices(self, "weigh")
        if self.top_k < 0 or self.keyword_senses < 1:
            raise WeblyError("weigh.top_k must be >= 0 and keyword_senses >= 1")
        for name in ("min_similarity", "absent", "min_weight", "support_min", "label_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise WeblyError(f"weigh.{name} must be within [0, 1]")
        if self.boost < 0 or self.power <= 0:
            raise WeblyError("weigh.boost must be >= 0 and power > 0")


def neighbours(sim: np.ndarray, top_k: int, min_sim: float) -> tuple[np.ndarray, np.ndarray]:
    """(C x top_k neighbour indices, padded with -1; their similarities) excluding self."""
    s = sim.copy()
    np.fill_diagonal(s, -1)
    k = min(top_k, max(0, s.shape[0] - 1))
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    val = np.take_along_axis(s, idx, axis=1)
    idx = np.where(val >= min_sim, idx, -1)
    return idx, np.where(idx >= 0, val, 0).astype(np.float32)


def keyword_support(vocab: list[str], concepts: list, cfg: WeighConfig,
                    senses: list[str] | None = None) -> sp.csr_matrix:
    """Sparse V x C support a(k, c) (see the module docstring). With `senses` (the tag set's
    sense of each keyword in context, "" for none) a keyword supports through that sense alone:
    "puma" on shoes is no big cat, and supports no cat concept.

    Walking up from each keyword sense finds exactly the concepts it names or lies below, so no
    pair search is needed: cost is (keyword senses) x (ancestors per sense).
    """
    wn = wordnet()
    index = {syn: c for c, syn in enumerate(concepts) if syn is not None}
    best: dict[tuple[int, int], float] = {}
    for k, word in enumerate(vocab):
        if senses is not None:
            mine = [synset_from_wnid(senses[k])] if senses[k].startswith("n") else []
        else:
            mine = wn.synsets(word.replace(" ", "_"), "n")[: cfg.keyword_senses]
        for sense in mine:
            for node, d in ancestors(sense).items():
                c = index.get(node)
                if c is None:
                    continue
                dist = np.array([d], np.float32)
                a = 1.0 if d == 0 else float(
                    score(cfg.measure, depth(node), dist, np.zeros(1, np.float32))[0, 0])
                if a >= cfg.support_min and a > best.get((k, c), 0.0):
                    best[(k, c)] = a
    position = {w: i for i, w in enumerate(vocab)}
    for c, syn in enumerate(concepts):  # a lemma of the concept itself always supports it fully
        for name in (syn.lemma_names() if syn is not None else []):
            k = position.get(name.replace("_", " ").lower())
            if k is not None:
                best[(k, c)] = 1.0
    if not best:
        return sp.csr_matrix((len(vocab), len(concepts)), dtype=np.float32)
    (rows, cols), vals = zip(*best.keys(), strict=True), list(best.values())
    return sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)),
                         shape=(len(vocab), len(concepts)))


# -- per-image weights -----------------------------------------------------------------------------
def label_weights(labels: np.ndarray, keywords: sp.csr_matrix, support: sp.csr_matrix,
                  nb_idx: np.ndarray, nb_sim: np.ndarray, cfg: WeighConfig,
                  chunk: int = 262144) -> tuple[sp.csr_matrix, dict[str, float]]:
    """images x C weights (float32 CSR); `labels` uses -1 for none."""
    n, C = len(labels), nb_idx.shape[0]
    k = nb_idx.shape[1]
    parts = []
    supported = considered = 0
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        y = labels[lo:hi]
        has = y >= 0
        e = (keywords[lo:hi].astype(np.float32) @ support).tocsr()  # images x C support sums
        rows = np.arange(hi - lo)
        nb = (np.where(has[:, None], nb_idx[np.maximum(y, 0)], -1) if k
              else np.zeros((hi - lo, 0), int))
        s = nb_sim[np.maximum(y, 0)] if k else np.zeros((hi - lo, 0), np.float32)
        valid = nb >= 0
        ev = np.zeros(nb.shape, np.float32)
        if valid.any():
            rr, cc = np.nonzero(valid)
            ev[rr, cc] = np.asarray(e[rows[rr], nb[rr, cc]]).ravel()
        ev = np.minimum(ev, 1.0)
        w = np.where(valid, np.minimum(1.0, s ** cfg.power * (cfg.absent + cfg.boost * ev)), 0)
        w = np.where(w >= cfg.min_weight, w, 0)  # weights too small to keep take no mass
        if cfg.label_share > 0:
            room = (1 - cfg.label_share) / cfg.label_share  # neighbours' mass against the label's 1
            mass = w.sum(1, keepdims=True)
            w = w * np.minimum(1.0, room / np.maximum(mass, 1e-12))
        keep = valid & (w > 0)  # min_weight filtered before the cap: the cap keeps what it scaled
        supported += int((keep & (ev > 0)).sum())
        considered += int(keep.sum())
        r_own = rows[has]
        rr, cc = np.nonzero(keep)
        data = np.concatenate([np.ones(len(r_own), np.float32), w[rr, cc].astype(np.float32)])
        where = (np.concatenate([r_own, rr]), np.concatenate([y[has], nb[rr, cc]]))
        parts.append(sp.csr_matrix((data, where), shape=(hi - lo, C)))
    mat = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, C), dtype=np.float32)
    labelled = int((labels >= 0).sum())
    nonown = mat.sum() - labelled
    return mat, {
        "images": n, "labelled_images": labelled,
        "labels_per_labelled_image": round(mat.nnz / max(labelled, 1), 3),
        "neighbour_weight_mass_per_image": round(float(nonown) / max(labelled, 1), 4),
        "label_share_of_mass": round(labelled / max(float(mat.sum()), 1e-12), 4),
        "neighbour_weights_supported_by_keywords": round(supported / max(considered, 1), 4),
    }


def weigh(manifest_path: str | Path, tags_dir: str | Path | None, out_dir: str | Path,
          cfg: WeighConfig, labels_path: str | Path | None = None) -> dict[str, Any]:
    """`webly weigh`: similarity, neighbours, support and the per-image weight matrix.

    Without a WT-Set (`tags_dir` None: data with no text, e.g. CIFAR-10N) no keyword supports a
    neighbour, so every neighbour gets `absent` x its similarity. `labels_path` (a
    `webly pseudo-label` output) replaces the manifest's labels, so pseudo-labels can be weighed."""
    import pyarrow.compute as pc

    from webly.data.manifest import Manifest
    from webly.labels.tagging import load_senses, load_tags

    t0 = time.time()
    manifest = Manifest(manifest_path)
    senses = None
    if tags_dir is None:
        keywords, vocab = sp.csr_matrix((len(manifest), 0), dtype=np.uint8), []
    else:
        keywords, vocab = load_tags(tags_dir)
        senses = load_senses(tags_dir)
    if keywords.shape[0] != len(manifest):
        raise WeblyError(f"{tags_dir} has {keywords.shape[0]} rows but {manifest_path} has "
                         f"{len(manifest)}: tag this manifest first")
    synsets, unknown = concept_synsets(manifest.classes, cfg.allow_unknown)
    sim = concept_similarity(synsets, cfg.measure)
    nb_idx, nb_sim = neighbours(sim, cfg.top_k, cfg.min_similarity)
    t_sim = time.time() - t0
    support = keyword_support(vocab, synsets, cfg, senses)
    if labels_path is not None:
        from webly.data.labels import load_labels

        labels = load_labels(labels_path, len(manifest))
    else:
        labels = np.asarray(pc.fill_null(manifest.read(["label"]).column(0), -1).to_numpy(),
                            np.int64)
    mat, stats = label_weights(labels, keywords, support, nb_idx, nb_sim, cfg)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = manifest.class_names
    lines = ["concept\tconcept_name\tneighbour\tneighbour_name\tsimilarity\n"]
    for c in range(len(synsets)):
        for j, s in zip(nb_idx[c], nb_sim[c], strict=True):
            if j >= 0:
                lines.append(f"{manifest.classes[c]}\t{names[c]}\t{manifest.classes[j]}\t{names[j]}\t{s:.4f}\n")
    write_atomic(out / "neighbours.tsv", "".join(lines))
    faults.point("weigh.write")  # one output written, the others not yet
    with atomic_path(out / "label_weights.npz") as tmp:
        sp.save_npz(tmp, mat.astype(np.float32), compressed=True)
    stats.update({"concepts": len(synsets), "unknown_concepts": unknown, "measure": cfg.measure,
                  "neighbours_per_concept": round(float((nb_idx >= 0).sum(1).mean()),
                                                  3) if len(synsets) else 0,
                  "keywords_supporting_some_concept": int((support.getnnz(axis=1) > 0).sum()),
                  "similarity_seconds": round(t_sim, 2), "seconds": round(time.time() - t0, 2)})
    import json

    write_atomic(out / "stats.json", json.dumps(stats, indent=1) + "\n")
    return stats


def resolve_concept(query: str):
    """A wnid, a synset name (`lion.n.01`) or a noun phrase -> its synset (most frequent sense)."""
    wn = wordnet()
    if query[:1] in "nvar" and query[1:].isdigit():
        return synset_from_wnid(query)
    if query.count(".") == 2:
        try:
            return wn.synset(query)
        except Exception:
            pass
    found = wn.synsets(query.strip().replace(" ", "_"), "n")
    if not found:
        raise WeblyError(f"no WordNet noun for {query!r}")
    return found[0]


def nearest(query: str, wnids: list[str], names: list[str], measure: str, top_k: int
            ) -> list[tuple[str, str, float]]:
    """The `top_k` concepts of a dataset most similar to `query`: (wnid, name, similarity)."""
    q = resolve_concept(query)
    synsets, _ = concept_synsets(wnids, allow_unknown=True)
    sim = cross_similarity([q], synsets, measure, 0.0).toarray()[0]
    order = [i for i in np.argsort(-sim,
                                   kind="stable") if synsets[i] is not None and synsets[i] != q]
    return [(wnids[i], names[i], float(sim[i])) for i in order[:top_k]]


__all__ = ["WeighConfig", "weigh", "concept_similarity", "cross_similarity", "neighbours",
           "keyword_support", "label_weights", "nearest", "resolve_concept", "wnid_of"]


def run_weigh(*, manifest: str, cfg: WeighConfig, out: Path, tags: str | None = None,
              labels: str | None = None) -> dict[str, Any]:
    """The `weigh` stage."""
    return weigh(manifest, tags, out, cfg, labels)
