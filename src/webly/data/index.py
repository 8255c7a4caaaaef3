"""`webly index`: read a dataset (WebVision layout or class folders) into a manifest.

`--shard i/n` indexes only the i-th of n contiguous ranges of each list (or of the class folders)
into `OUT.parts/part-IIII-of-NNNN.parquet` (+ its summary `.json`), so n machines share the job;
`webly index merge -o OUT` then writes the manifest from the parts in order, the same rows in the
same order as one unsharded run. A part that exists is complete and is not redone.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.compute as pc

from webly.core.config import check_choices, opt, parse_part
from webly.core.errors import WeblyError
from webly.core.files import write_atomic
from webly.core.progress import progress
from webly.data.folder import FolderReader
from webly.data.manifest import Manifest, ManifestWriter
from webly.data.records import SPLITS
from webly.data.webvision import WebVisionReader


@dataclass
class IndexConfig:
    layout: Literal["auto", "webvision", "folder"] = opt("auto",
                                                         "dataset layout ('auto': webvision when "
                                                         "info/ exists)")
    splits: list[str] = opt(["train", "val", "test"], "splits to index (those present)")
    train_list: Literal["all", "google", "flickr"] = opt("all", "WebVision train list")
    sidecar: str | None = opt(None, "folder layout: JSONL/CSV of text fields keyed by 'path'")
    holdout: float = opt(0.0, "folder layout without a val folder: this fraction of each class's "
                              "training images becomes split val (a noisy holdout; fixed by a "
                              "hash of the path)")
    skip_bad: bool = opt(False, "skip records with broken metadata (counted) instead of failing")
    chunk_size: int = opt(65536, "rows per Parquet row group (memory bound while indexing)")
    workers: int = opt(1, "processes parsing WebVision metadata JSON files")
    shard: str = opt("", "'i/n': index only the i-th of n ranges of the lists, then run "
                         "`webly index merge`")

    def validate(self) -> None:
        check_choices(self, "index")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise WeblyError(f"index.splits: unknown split(s) {bad}; valid: {list(SPLITS)}")
        if not 0 <= self.holdout < 1:
            raise WeblyError(f"index.holdout must be within [0, 1), got {self.holdout}")
        if self.chunk_size < 1 or self.workers < 1:
            raise WeblyError("index.chunk_size and index.workers must be positive")
        if self.shard:
            parse_part(self.shard, "index.shard")


def open_reader(root: str | Path, cfg: IndexConfig) -> WebVisionReader | FolderReader:
    root = Path(root)
    if not root.is_dir():
        raise WeblyError(f"dataset root not found: {root} "
                         "(expected a WebVision folder with info/, or class folders)")
    layout = cfg.layout
    if layout == "auto":
        layout = "webvision" if (root / "info").is_dir() else "folder"
    if layout == "webvision":
        return WebVisionReader(root, train_list=cfg.train_list, skip_bad=cfg.skip_bad,
                               workers=cfg.workers)
    return FolderReader(root, sidecar=cfg.sidecar, holdout=cfg.holdout)


def parts_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def index_dataset(root: str | Path, out: str | Path, cfg: IndexConfig) -> dict[str, Any]:
    """Stream every record of the chosen splits into a manifest (or, with `cfg.shard`, this
    machine's part of it); return the stage summary."""
    cfg.validate()
    t0 = time.time()
    part = parse_part(cfg.shard, "index.shard") if cfg.shard else (0, 1)
    target = Path(out)
    if part[1] > 1:
        target = parts_dir(out) / f"part-{part[0]:04d}-of-{part[1]:04d}.parquet"
        done = target.with_suffix(".json")
        if target.is_file() and done.is_file():
            return json.loads(done.read_text())
    reader = open_reader(root, cfg)
    layout = "webvision" if isinstance(reader, WebVisionReader) else "folder"
    splits = [s for s in cfg.splits if s in reader.available_splits()]
    meta = {"root": str(Path(root).resolve()), "layout": layout, "classes": reader.classes,
            "class_names": reader.class_names}
    per_split: dict[str, int] = {}
    desc = "index" if part[1] == 1 else f"index part {part[0]}/{part[1]}"
    with ManifestWriter(target, meta, cfg.chunk_size) as writer:
        for split in splits:
            before = writer.count
            for rec in progress(reader.iter_records(split, part), desc=f"{desc} {split}",
                                unit="rec"):
                writer.write(rec)
            per_split[split] = writer.count - before
    summary = {"manifest": str(target), "layout": layout, "classes": len(reader.classes),
               "records": per_split, "absent_splits": sorted(set(cfg.splits) - set(splits)),
               "fixed_or_skipped": dict(reader.stats), "seconds": round(time.time() - t0, 2)}
    if part[1] > 1:
        write_atomic(target.with_suffix(".json"), json.dumps(summary, indent=1))
    return summary


def merge_index(out: str | Path, cfg: IndexConfig) -> dict[str, Any]:
    """The manifest from the parts of a sharded run: split by split, part by part (list order)."""
    t0 = time.time()
    folder = parts_dir(out)
    names = sorted(folder.glob("part-*-of-*.parquet")) if folder.is_dir() else []
    if not names:
        raise WeblyError(f"{folder}: no index parts; run `webly index ROOT -o {out} --shard i/n` "
                         "for every i first")
    counts = {p.name.rsplit("-of-", 1)[1].removesuffix(".parquet") for p in names}
    n = int(counts.pop()) if len(counts) == 1 else 0
    want = [folder / f"part-{i:04d}-of-{n:04d}.parquet" for i in range(n)]
    missing = [p.name for p in want if not (p.is_file() and p.with_suffix(".json").is_file())]
    if not n or missing:
        raise WeblyError(f"{folder}: parts missing or of different runs ({', '.join(missing[:3])}"
                         f"{'...' if len(missing) > 3 else ''}): run the remaining shards")
    parts = [Manifest(p) for p in want]
    meta = parts[0].meta
    if any(m.meta["classes"] != meta["classes"] for m in parts):
        raise WeblyError(f"{folder}: parts disagree on the class list (different datasets?)")
    summaries = [json.loads(p.with_suffix(".json").read_text()) for p in want]
    splits = [s for s in SPLITS if any(s in x["records"] for x in summaries)]
    with ManifestWriter(out, {k: v for k, v in meta.items() if k != "version"},
                        cfg.chunk_size) as writer:
        for split in splits:
            for m in parts:
                for batch in m.iter_batches():
                    batch = batch.filter(pc.equal(batch["split"], split))
                    if batch.num_rows:
                        writer.write_batch(batch)
    fixed: Counter = Counter()
    for x in summaries:
        fixed.update(x["fixed_or_skipped"])
    return {"manifest": str(out), "layout": meta["layout"], "classes": len(meta["classes"]),
            "records": {s: sum(x["records"].get(s, 0) for x in summaries) for s in splits},
            "absent_splits": sorted(set.intersection(*(set(x["absent_splits"])
                                                       for x in summaries))),
            "fixed_or_skipped": dict(fixed), "parts": n,
            "seconds": round(time.time() - t0 + sum(x["seconds"] for x in summaries), 2)}


def run_index(*, root: str, cfg: IndexConfig, out: Path) -> dict[str, Any]:
    """The `index` stage; `root` "merge" writes the manifest from a sharded run's parts."""
    return merge_index(out, cfg) if root == "merge" else index_dataset(root, out, cfg)
