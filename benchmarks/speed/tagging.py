"""Docs/s of `webly tag` vs a naive per-document pipeline, and peak memory at 1M records.

naive: the same recogniser with no word cache, one process, one document at a time (its rate is
       measured on the first --naive-sample documents: it is the slow side);
webly: `webly tag` end to end (pass 1 with --workers processes, merge, encode, stats, plots).
Peak memory: the whole process tree of `webly tag` on --rss-records records, sampled from /proc
(sum of Pss: shared pages of forked workers counted once).
Mojibake repair (ftfy): cleaner docs/s with and without it on the generated text (nearly all
ASCII, where ftfy is skipped), on the same text with an accented word in every document (ftfy
runs on each), and on that text turned to mojibake; and how many documents clean to the words of
the originals with and without it.

    .venv/bin/python -m benchmarks.speed.tagging --records 100000 --rss-records 1000000
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from webly.app.demo.synth import SynthConfig, generate
from webly.data.index import IndexConfig, index_dataset
from webly.data.manifest import Manifest
from webly.labels.text import KeywordRecogniser, clean_text, text_segments

ACCENTED = ["café", "crème brûlée", "naïve", "Zürich", "jalapeño", "São Paulo", "façade",
            "smörgåsbord", "don’t", "“quoted”", "résumé", "Kraków", "piñata", "déjà vu"]


def make_manifest(work: Path, n: int) -> Path:
    per_class = max(1, n // 24)
    cfg = SynthConfig(max_per_class=per_class, min_per_class=per_class, val_per_class=0,
                      test_per_class=0, images=False, seed=0)
    generate(work / f"wv{n}", cfg)
    out = work / f"manifest{n}.parquet"
    index_dataset(work / f"wv{n}", out, IndexConfig(splits=["train"]))
    return out


def naive_rate(manifest: Path, sample: int) -> float:
    rec = KeywordRecogniser(cache=False)
    docs = [r for _, r in zip(range(sample), Manifest(manifest).iter_records(), strict=False)]
    t0 = time.perf_counter()
    for r in docs:
        rec.keywords(text_segments(r.title, r.description, r.tags, r.query_text))
    return len(docs) / (time.perf_counter() - t0)


def mojibake(s: str) -> str:
    """UTF-8 read as Windows-1252 (Latin-1 for the bytes it lacks): the web's usual mojibake."""
    return "".join(bytes([b]).decode("cp1252",
                                     errors="ignore") or chr(b) for b in s.encode("utf-8"))


def cleaner_rates(manifest: Path, sample: int) -> list[tuple[str, float, float, int, int]]:
    """(text, docs/s with ftfy, docs/s without, docs cleaned right with, without) per variant."""
    docs = [f"{r.title} {r.description}" for _, r in
            zip(range(sample), Manifest(manifest).iter_records(), strict=False)]
    accented = [f"{d} {ACCENTED[i % len(ACCENTED)]}" for i, d in enumerate(docs)]
    variants = [("generated text", docs, docs), ("+ an accented word each", accented, accented),
                ("the same as mojibake", [mojibake(d) for d in accented], accented)]
    out = []
    for name, texts, truth in variants:
        rates, right = [], []
        for fix in (True, False):
            t0 = time.perf_counter()
            cleaned = [clean_text(t, fix_mojibake=fix) for t in texts]
            rates.append(len(texts) / (time.perf_counter() - t0))
            right.append(sum(c == clean_text(t) for c, t in zip(cleaned, truth, strict=True)))
        out.append((name, rates[0], rates[1], right[0], right[1]))
    return out


def tree_rss_kb(pid: int) -> int:
    """Memory of `pid` and all its descendants, from /proc: the sum of their proportional set
    sizes (Pss), so pages that forked workers share with their parent are counted once."""
    parents: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    tree, grew = {pid}, True
    while grew:
        new = {p for p, pp in parents.items() if pp in tree} - tree
        tree |= new
        grew = bool(new)
    total = 0
    for p in tree:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total


def run_tag(manifest: Path, out: Path, workers: int) -> tuple[float, int]:
    """(seconds, peak tree RSS in MB) of `webly tag` as a subprocess."""
    cmd = [sys.executable, "-m", "webly.app.cli", "tag", str(manifest), "-o", str(out),
           "--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0

    def watch() -> None:
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, tree_rss_kb(proc.pid))
            time.sleep(0.2)

    t = threading.Thread(target=watch)
    t.start()
    _, err = proc.communicate()
    t.join()
    if proc.returncode:
        raise SystemExit(f"webly tag failed: {err[-2000:]}")
    return time.perf_counter() - t0, peak // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--rss-records", type=int, default=1_000_000, help="0 to skip")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--naive-sample", type=int, default=2000)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = make_manifest(work, args.records)
        n = len(Manifest(manifest))
        naive = naive_rate(manifest, args.naive_sample)
        secs, peak = run_tag(manifest, work / "tags", args.workers)
        secs1, _ = run_tag(manifest, work / "tags1", 1)
        print(f"\n{n} generated metadata records\n")
        print("| pipeline | docs/s | vs naive | peak memory (Pss) |\n|---|---:|---:|---:|")
        print(f"| naive: no cache, 1 process (first {args.naive_sample} docs) | {naive:.0f} | 1.0x "
              "| |")
        print(f"| webly tag --workers 1 (end to end) | {n / secs1:.0f} | {n / secs1 / naive:.1f}x "
              "| |")
        print(f"| webly tag --workers {args.workers} (end to end) | {n / secs:.0f} | "
              f"{n / secs / naive:.1f}x | {peak} MB |")
        print(f"\nText cleaner with and without mojibake repair (ftfy), first {args.naive_sample} "
              "docs\n")
        print("| text | docs/s with ftfy | without | ftfy adds | cleaned right with | without |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, with_, without, ok, ok_without in cleaner_rates(manifest, args.naive_sample):
            print(f"| {name} | {with_:.0f} | {without:.0f} | {1e6 / with_ - 1e6 / without:.0f} "
                  "µs/doc | "
                  f"{ok} | {ok_without} |")
        print(f"(webly tag end to end, 1 worker: {1e6 * secs1 / n:.0f} µs/doc)")
        if args.rss_records:
            big = make_manifest(work, args.rss_records)
            nb = len(Manifest(big))
            secs_b, peak_b = run_tag(big, work / "tags_big", args.workers)
            print(f"| webly tag --workers {args.workers}, {nb} records | {nb / secs_b:.0f} | "
                  f"{nb / secs_b / naive:.1f}x | {peak_b} MB |")


if __name__ == "__main__":
    main()
