"""Records/s of `webly index` and `webly tag` on WebVision-shaped metadata of real-like length
(title ~10 words, description ~30, ~10 tags), with the file list grouped by query file and
interleaved round-robin over them (the order that made an 8-file cache parse files thousands of
times). No images: the index reads lists and metadata only.

    .venv/bin/python -m benchmarks.speed.index --records 200000 --files 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from webly.labels.wordnet import wordnet


def make_tree(root: Path, records: int, files: int, interleave: bool, words: list[str]) -> None:
    rng = random.Random(0)
    info = root / "info"
    info.mkdir(parents=True)
    (info / "synsets.txt").write_text("n02432511 mule deer\nn02130308 cheetah\n")
    per = records // files
    say = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    (root / "google").mkdir()
    for q in range(1, files + 1):
        items = [{"id": f"{q}-{k}", "title": say(10), "description": say(30),
                  "tags": [rng.choice(words) for _ in range(10)]} for k in range(per)]
        (root / f"google/q{q:05d}.json").write_text(json.dumps(items))
    order = ([(q, k) for k in range(per) for q in range(1, files + 1)] if interleave
             else [(q, k) for q in range(1, files + 1) for k in range(per)])
    (info / "train_filelist_all.txt").write_text(
        "".join(f"google/q{q:05d}/{k + 1:06d}.jpg {q % 2}\n" for q, k in order))
    (info / "train_meta_list_all.txt").write_text(
        "".join(f"google/q{q:05d}.json {k + 1}\n" for q, k in order))


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env={**os.environ, "WEBLY_PROGRESS": "0"})
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return time.perf_counter() - t0


def timed_parallel(cmds: list[list[str]]) -> float:
    """Seconds until every command (started together) has finished."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "WEBLY_PROGRESS": "0"}) for c in cmds]
    for p in procs:
        if p.wait():
            raise SystemExit(p.stderr.read()[-2000:])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    words = sorted(n for n in wordnet().all_lemma_names("n") if "_" not in n)[:20000]
    cli = [sys.executable, "-m", "webly.app.cli"]
    print(f"{args.records:,} records in {args.files} metadata files; {os.cpu_count()} CPUs")
    print("| file list order | index records/s | index, 2 workers | index, 2 shards + merge | "
          "tag records/s |\n|---|---:|---:|---:|---:|")
    for interleave in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "wv"
            make_tree(root, args.records, args.files, interleave, words)
            m = Path(tmp) / "m.parquet"
            t_index = timed([*cli, "index", str(root), "-o", str(m), "--splits", "train"])
            t_index2 = timed([*cli, "index", str(root), "-o", str(Path(tmp) / "m2.parquet"),
                              "--splits", "train", "--workers", "2"])
            m3 = str(Path(tmp) / "m3.parquet")
            t_shards = timed_parallel([[*cli, "index", str(root), "-o", m3, "--splits", "train",
                                        "--shard", f"{i}/2"] for i in range(2)])
            t_shards += timed([*cli, "index", "merge", "-o", m3])
            t_tag = timed([*cli, "tag", str(m), "-o", str(Path(tmp) / "tags"), "--workers",
                           str(args.workers)])
        name = "interleaved over files" if interleave else "grouped by file"
        print(f"| {name} | {args.records / t_index:,.0f} | {args.records / t_index2:,.0f} | "
              f"{args.records / t_shards:,.0f} | {args.records / t_tag:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
