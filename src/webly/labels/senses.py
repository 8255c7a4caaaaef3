"""A keyword's WordNet sense, chosen from the classes of the images it appears in.

A word out of context has many senses, and the most frequent one in WordNet's corpus is often not
the web's: on product titles "puma" is a brand, not the cat, and "nike" (in WordNet only the
goddess) a brand too. The context an image set gives every keyword is the labels of its images,
noisy as they are: "puma" appears on shoes and T-shirts. So a keyword k with images per class
n(k, c) takes, among its candidate noun senses s, the one with the highest fit

    fit(k, s) = sum_c q(k, c) sim(s, c),   q(k, c) = n(k, c) / sum_c n(k, c)

(sim: Wu-Palmer, counted from `FLOOR` up; below it, unrelated), and keeps it only when the fit
reaches `min_fit`; otherwise the keyword has no sense and stays a plain token. Candidates are the
noun senses that are not proper names: WordNet's instances (a person, a god, a place: "Lee",
"Nike") are names of one thing, not concepts, and a brand or a person in a title is never that
thing. A word with no candidate is a name or unknown: a token.
Without labels (or with `min_fit` 0) the most frequent candidate sense is taken, as before.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from webly.labels.similarity import cross_similarity
from webly.labels.wordnet import wordnet

FLOOR = 0.7  # Wu-Palmer similarity below this counts as unrelated (two artifacts share 0.5-0.65)


def is_name(synset) -> bool:
    """A sense naming one thing: an instance (Lee, Nike the goddess, a city). Capitalised common
    nouns ("T-shirt", "Levi's") are concepts and stay."""
    return bool(synset.instance_hypernyms())


def candidates(keyword: str, max_senses: int = 0) -> list:
    """Noun senses of `keyword` that are concepts, not names (most frequent first)."""
    lemma = keyword.replace(" ", "_")
    senses = [s for s in wordnet().synsets(lemma, "n") if not is_name(s)]
    return senses[:max_senses] if max_senses else senses


def wnid(synset) -> str:
    return f"{synset.pos().replace('s', 'a')}{synset.offset():08d}"


def choose(vocab: list[str], counts: sp.csr_matrix | None, concepts: list,
           min_fit: float) -> tuple[list[str], np.ndarray]:
    """(wnid or "" for each keyword, its fit; -1 where no context decided). `counts`: keywords x
    classes image counts (None: no labels); `concepts`: the classes' synsets (None: unknown)."""
    cands = [candidates(k) for k in vocab]
    senses, fits = [""] * len(vocab), np.full(len(vocab), -1.0)
    context = counts is not None and min_fit > 0 and any(c is not None for c in concepts)
    if not context:
        for k, cs in enumerate(cands):
            senses[k] = wnid(cs[0]) if cs else ""
        return senses, fits
    flat = [s for cs in cands for s in cs]
    lens = np.array([len(cs) for cs in cands], np.int64)
    owner, starts = np.repeat(np.arange(len(vocab)), lens), np.r_[0, np.cumsum(lens)]
    sim = cross_similarity(flat, concepts, "wup", FLOOR)  # senses x classes, sparse
    counts = sp.csr_matrix(counts, dtype=np.float64)
    total = np.asarray(counts.sum(1)).ravel()
    q = sp.diags(1.0 / np.maximum(total, 1)) @ counts  # keywords x classes
    # fit of each sense: its row of sim against its keyword's row of q
    fit = np.asarray(sim.multiply(q[owner]).sum(1)).ravel() if len(flat) else np.zeros(0)
    for k in range(len(vocab)):
        mine = np.arange(starts[k], starts[k + 1])
        if not len(mine) or total[k] == 0:
            continue
        best = mine[np.argmax(fit[mine])]  # ties: the more frequent sense (earlier)
        fits[k] = round(float(fit[best]), 4)
        if fit[best] >= min_fit:
            senses[k] = wnid(flat[best])
    return senses, fits
