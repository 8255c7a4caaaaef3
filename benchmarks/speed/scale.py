"""WebVision's shape without images: seconds and peak memory of the stages that scale with N.

Generates, for --records N training images over --classes C concepts:
- a manifest with a long-tailed class-size distribution (log-normal, sigma 1: WebVision 2.0's
  classes run from a few hundred to tens of thousands of images), plus 50 validation images a
  class (WebVision 2.0's 250k at 5,000 classes);
- a WT-Set: ~5 keywords an image (Zipf-distributed) over --keywords real WordNet noun lemmas;
- real WordNet concepts (benchmarks/studies/semantics.py's seeded draw);
- --members models' top-50 training-set predictions (the true class among them, probabilities
  decreasing, a leftover mass);
then runs weigh, the balanced sampler's epoch construction, ensemble, pseudo-label and evaluate,
each in a fresh process (its peak RSS is its own, from wait4), and prints a table and JSON:

    .venv/bin/python -m benchmarks.speed.scale --records 1000000 --classes 5000 --members 4 \
        --json o.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from benchmarks.studies.semantics import draw_concepts
from webly.data.manifest import SCHEMA, VERSION  # noqa: E402
from webly.data.predictions import ROW_GROUP, PredictionWriter  # noqa: E402
from webly.labels.wordnet import wnid_of, wordnet  # noqa: E402

K = 50
VAL_PER_CLASS = 50


def class_sizes(n: int, c: int, rng: np.random.Generator) -> np.ndarray:
    w = np.exp(rng.normal(0.0, 1.0, c))
    sizes = np.maximum(1, np.floor(w / w.sum() * n)).astype(np.int64)
    sizes[np.argmax(sizes)] += n - sizes.sum()
    return sizes


def write_manifest(path: Path, labels: np.ndarray, val_labels: np.ndarray, wnids: list[str],
                   names: list[str]) -> None:
    meta = {"version": VERSION, "root": str(path.parent), "layout": "webvision", "classes": wnids,
            "class_names": names}
    schema = SCHEMA.with_metadata({"webly": json.dumps(meta)})
    splits = [("train", labels), ("val", val_labels)]
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for split, lab in splits:
            for s in range(0, len(lab), ROW_GROUP):
                chunk = lab[s:s + ROW_GROUP]
                ids = [f"{split}/{i:09d}.jpg" for i in range(s, s + len(chunk))]
                n = len(chunk)
                cols = {"id": ids, "path": ids, "split": [split] * n,
                        "label": chunk.astype(np.int32),
                        "source": ["google"] * n, "query": (chunk + 1).astype(np.int32),
                        "query_text": [""] * n, "title": [""] * n, "description": [""] * n,
                        "tags": [[] for _ in range(n)]}
                w.write_table(pa.Table.from_pydict(cols, schema=schema))


def write_tags(out: Path, rows: int, vocab: list[str], rng: np.random.Generator) -> None:
    out.mkdir(parents=True, exist_ok=True)
    per = rng.poisson(5, rows)
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    cols = rng.choice(len(vocab), size=int(per.sum()), p=zipf / zipf.sum()).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(per)])
    mat = sp.csr_matrix((np.ones(len(cols), np.uint8), cols, indptr), shape=(rows, len(vocab)))
    mat.sum_duplicates()
    mat.data[:] = 1
    sp.save_npz(out / "keywords.npz", mat, compressed=True)
    (out / "vocab.tsv").write_text("keyword\tdoc_frequency\tsynset\n"
                                   + "".join(f"{k}\t0\t\n" for k in vocab))
    (out / "stats.json").write_text(json.dumps({"images": rows, "vocabulary": len(vocab)}))


def write_member(out: Path, labels: np.ndarray, c: int, m: int, rng: np.random.Generator) -> None:
    """Top-50 of a model that is right ~60% of the time, its scores Dirichlet-like."""
    info = {"classes": [str(i) for i in range(c)], "num_classes": c, "split": "train",
            "model": f"member{m}"}
    w = PredictionWriter(out, K, info)
    for s in range(0, len(labels), ROW_GROUP):
        y = labels[s:s + ROW_GROUP]
        n = len(y)
        top = rng.integers(0, c, (n, K)).astype(np.int32)
        top[:, 0] = np.where(rng.random(n) < 0.6, y, top[:, 0])
        p = np.sort(rng.gamma(0.3, size=(n, K + 20)), axis=1)[:, ::-1]
        p = (p / p.sum(1, keepdims=True))[:, :K]
        rows = np.arange(s, s + n)
        w.write(rows, [f"train/{i:09d}.jpg" for i in rows], ["ok"] * n, top, p)
    w.close()


def run_stage(name: str, cmd: list[str]) -> dict[str, float]:
    """Seconds and peak RSS of `cmd` alone. GNU time measures it from a small process: a child
    forked from this (large) one would count our pages in its peak before its exec."""
    timer = "/usr/bin/time"
    if not os.access(timer, os.X_OK):
        raise SystemExit("needs GNU time (/usr/bin/time, Debian package `time`) for the peak RSS")
    t0 = time.perf_counter()
    r = subprocess.run([timer, "-f", "maxrss_kb=%M", *cmd], capture_output=True, text=True,
                       env={**os.environ, "WEBLY_PROGRESS": "0"})
    seconds = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{name} failed: {r.stderr[-2000:]}")
    kb = int(r.stderr.rsplit("maxrss_kb=", 1)[1].split()[0])
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(kb / 1024)}


SAMPLE = """
import sys, numpy as np
from webly.data.manifest import Manifest
from webly.training.trainsets import finetune_data
from webly.training.sampling import BalancedSampler
d = finetune_data(Manifest(sys.argv[1]))
s = BalancedSampler(d.membership, len(d.rows), seed=0)
assert len(s.stream(0)) == len(d.rows)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=5000)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--keywords", type=int, default=35000)
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--work", help="folder for the generated data (default: a temporary one)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        concepts = draw_concepts(args.classes)
        sizes = class_sizes(args.records, len(concepts), rng)
        labels = rng.permutation(np.repeat(np.arange(len(concepts)), sizes))
        val = np.repeat(np.arange(len(concepts)), VAL_PER_CLASS)
        wnids = [wnid_of(s) for s in concepts]
        write_manifest(work / "m.parquet", labels, val, wnids, [s.name() for s in concepts])
        vocab = sorted({n.replace("_", " ") for n in wordnet().all_lemma_names("n")})
        vocab = [vocab[i] for i in rng.permutation(len(vocab))[:args.keywords]]
        write_tags(work / "tags", len(labels) + len(val), vocab, rng)
        for m in range(args.members):
            write_member(work / f"p{m}", labels, len(concepts), m, rng)
        gen = time.perf_counter() - t0
        py, cli = sys.executable, [sys.executable, "-m", "webly.app.cli"]
        members = [str(work / f"p{m}") for m in range(args.members)]
        stages = {
            "weigh": cli + ["weigh", str(work / "m.parquet"), "--tags", str(work / "tags"),
                            "-o", str(work / "w")],
            "sample": [py, "-c", SAMPLE, str(work / "m.parquet")],
            "ensemble": cli + ["ensemble", *members, "-o", str(work / "ens")],
            "pseudo_label": cli + ["pseudo-label", str(work / "m.parquet"), str(work / "ens"),
                                   "-o", str(work / "pl"), "--soft-k", "5"],
            "evaluate": cli + ["evaluate", str(work / "ens"), "--manifest", str(work / "m.parquet"),
                               "-o", str(work / "ev")],
        }
        result = {"records": len(labels), "classes": len(concepts), "members": args.members,
                  "class_sizes": {"min": int(sizes.min()), "median": int(np.median(sizes)),
                                  "max": int(sizes.max())},
                  "generation_seconds": round(gen, 1), "stages": {}}
        for name, cmd in stages.items():
            result["stages"][name] = run_stage(name, cmd)
        size_mb = lambda f: round((work / f).stat().st_size / 2**20)  # noqa: E731
        result["disk_mb_per_member"] = size_mb("p0/predictions.parquet")
        result["disk_mb_labels"] = size_mb("pl/labels.parquet")
    print(f"N = {result['records']:,} training images, C = {result['classes']}, "
          f"{args.members} members; class sizes {result['class_sizes']}")
    print("| stage | seconds | peak RSS (MB) |\n|---|---:|---:|")
    for name, r in result["stages"].items():
        print(f"| {name} | {r['seconds']} | {r['peak_rss_mb']} |")
    print(f"predictions per member: {result['disk_mb_per_member']} MB on disk (k = {K})")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
