"""Seconds to build WordNet concept similarity for a WebVision-sized concept set, vs NLTK.

Picks --concepts noun synsets (seeded) from a few big subtrees, times webly's vectorised
Wu-Palmer/path/LCH matrices, the top-k neighbour lists, and keyword support for --vocab WordNet
nouns; times NLTK's own wup_similarity on a sample of pairs and extrapolates to all pairs.

    .venv/bin/python -m benchmarks.studies.semantics --concepts 5000
"""

from __future__ import annotations

import argparse
import random
import time

from webly.labels.weighing import WeighConfig, concept_similarity, keyword_support, neighbours
from webly.labels.wordnet import wordnet

ROOTS = ("organism.n.01", "artifact.n.01", "food.n.02", "natural_object.n.01")


def draw_concepts(n: int) -> list:
    """`n` noun synsets drawn (seeded) from a few big WordNet subtrees: a WebVision-like set."""
    wn = wordnet()
    pool = sorted({s for r in ROOTS for s in wn.synset(r).closure(lambda x: x.hyponyms())},
                  key=lambda s: s.name())
    random.Random(0).shuffle(pool)
    return pool[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concepts", type=int, default=5000)
    ap.add_argument("--vocab", type=int, default=35000)
    ap.add_argument("--nltk-pairs", type=int, default=2000)
    args = ap.parse_args()
    wn = wordnet()
    concepts = draw_concepts(args.concepts)
    rng = random.Random(1)
    print(f"{len(concepts)} concepts from {', '.join(ROOTS)}")
    print("| step | seconds |\n|---|---:|")
    for measure in ("wup", "path", "lch"):
        t0 = time.perf_counter()
        sim = concept_similarity(concepts, measure)
        print(f"| {measure} similarity, {len(concepts)}x{len(concepts)} | "
              f"{time.perf_counter() - t0:.1f} |")
    t0 = time.perf_counter()
    neighbours(sim, 10, 0.7)
    print(f"| top-10 neighbours | {time.perf_counter() - t0:.1f} |")
    vocab = sorted({n.replace("_", " ") for n in wn.all_lemma_names("n")})
    rng.shuffle(vocab)
    t0 = time.perf_counter()
    a = keyword_support(vocab[: args.vocab], concepts, WeighConfig())
    print(f"| keyword support, {args.vocab} keywords ({a.nnz} pairs) | "
          f"{time.perf_counter() - t0:.1f} |")
    pairs = [(rng.choice(concepts), rng.choice(concepts)) for _ in range(args.nltk_pairs)]
    t0 = time.perf_counter()
    for x, y in pairs:
        x.wup_similarity(y)
    per = (time.perf_counter() - t0) / len(pairs)
    total = per * len(concepts) * (len(concepts) - 1) / 2
    print(f"| NLTK wup_similarity, all pairs (extrapolated from {len(pairs)}) | {total:.0f} |")


if __name__ == "__main__":
    main()
