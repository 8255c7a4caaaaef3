"""Concept similarity over WordNet's hypernym DAG, for every pair of concepts at once.

Every synset's hypernym ancestors are collected once with their shortest distance d(x, n)
(hypernyms and instance hypernyms); node depth D(n) = max_depth(n) + 1, as NLTK's Wu-Palmer uses.
Then, for every ancestor node n, all pairs of synsets below it are scored in one NumPy block and
the best common ancestor wins (the measures: `webly.labels.weighing`'s docstring). Cost: the sum
over nodes of (members below it)^2. Used by the LW-Set (`weighing`) and by each keyword's sense
chosen in the context of its images' classes (`senses`).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
import scipy.sparse as sp

from webly.core.errors import WeblyError
from webly.labels.wordnet import synset_from_wnid

LCH_MAX_DEPTH = 20  # WordNet 3.0 noun taxonomy depth + 1


# -- similarity ------------------------------------------------------------------------------------
def ancestors(synset) -> dict[Any, int]:
    """Every hypernym ancestor of `synset` (itself included) -> shortest distance."""
    dist = {synset: 0}
    frontier = [synset]
    while frontier:
        nxt = []
        for s in frontier:
            for h in s.hypernyms() + s.instance_hypernyms():
                if h not in dist:
                    dist[h] = dist[s] + 1
                    nxt.append(h)
        frontier = nxt
    return dist


def _groups(synsets: list) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
    """ancestor node -> (indices of the synsets below it, their distances to it)."""
    members: dict[Any, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for i, s in enumerate(synsets):
        if s is None:
            continue
        for node, d in ancestors(s).items():
            members[node][0].append(i)
            members[node][1].append(d)
    return {n: (np.asarray(ix), np.asarray(d, np.float32)) for n, (ix, d) in members.items()}


_DEPTH: dict[Any, int] = {}


def depth(node) -> int:
    if node not in _DEPTH:
        _DEPTH[node] = node.max_depth() + 1
    return _DEPTH[node]


def score(measure: str, D: float, dl: np.ndarray, dr: np.ndarray) -> np.ndarray:
    total = dl[:, None] + dr[None, :]
    if measure == "wup":
        return (2 * D) / (total + 2 * D)
    if measure == "path":
        return 1.0 / (1.0 + total)
    return np.log(2 * LCH_MAX_DEPTH / (total + 1)) / math.log(2 * LCH_MAX_DEPTH)


def concept_similarity(synsets: list, measure: str = "wup") -> np.ndarray:
    """Dense C x C similarity (float32); unknown concepts (None) are similar only to themselves."""
    n = len(synsets)
    sim = np.zeros((n, n), np.float32)
    for node, (ix, d) in _groups(synsets).items():
        block = score(measure, depth(node), d, d).astype(np.float32)
        sub = np.ix_(ix, ix)
        sim[sub] = np.maximum(sim[sub], block)
    np.fill_diagonal(sim, 1.0)
    return sim


def cross_similarity(left: list, right: list, measure: str, min_sim: float) -> sp.csr_matrix:
    """Sparse len(left) x len(right) similarity, entries >= min_sim only.

    Members too far below a node to reach min_sim through it are pruned before the block is
    formed, so nodes near the root (huge, but useless at a high threshold) cost almost nothing.
    """
    gl, gr = _groups(left), _groups(right)
    rows, cols, vals = [], [], []
    for node in gl.keys() & gr.keys():
        D = depth(node)
        (il, dl), (ir, dr) = gl[node], gr[node]
        if measure == "wup":
            reach = 2 * D * (1 - min_sim) / max(min_sim, 1e-6)
        elif measure == "path":
            reach = 1 / max(min_sim, 1e-6) - 1
        else:
            reach = 2 * LCH_MAX_DEPTH * (2 * LCH_MAX_DEPTH) ** -min_sim - 1
        kl, kr = dl <= reach, dr <= reach
        if not kl.any() or not kr.any():
            continue
        block = score(measure, D, dl[kl], dr[kr])
        r, c = np.nonzero(block >= min_sim)
        rows.append(il[kl][r])
        cols.append(ir[kr][c])
        vals.append(block[r, c].astype(np.float32))
    if not rows:
        return sp.csr_matrix((len(left), len(right)), dtype=np.float32)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    order = np.lexsort((v, c, r))  # keep the best common ancestor per pair: last after sort
    r, c, v = r[order], c[order], v[order]
    last = np.ones(len(r), bool)
    last[:-1] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
    return sp.csr_matrix((v[last], (r[last], c[last])), shape=(len(left), len(right)))


# -- concepts and keywords -------------------------------------------------------------------------
def concept_synsets(wnids: list[str], allow_unknown: bool,
                    warn: bool = True) -> tuple[list, list[str]]:
    synsets, unknown = [], []
    for w in wnids:
        try:
            synsets.append(synset_from_wnid(w))
        except WeblyError:
            if not allow_unknown:
                raise WeblyError(f"concept {w} (synsets.txt) is not in WordNet 3.0; "
                                 "pass --allow-unknown to give it identity-only weights") from None
            synsets.append(None)
            unknown.append(w)
    if unknown and warn:
        warnings.warn(f"{len(unknown)} concepts unknown to WordNet get identity-only weights: "
                      f"{', '.join(unknown[:5])}", stacklevel=2)
    return synsets, unknown
