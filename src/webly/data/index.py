"""`webly index`: read a dataset (WebVision layout or class folders) into a manifest."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from webly.config import check_choices, opt
from webly.data.folder import FolderReader
from webly.data.manifest import ManifestWriter
from webly.data.records import SPLITS
from webly.data.webvision import WebVisionReader
from webly.errors import WeblyError
from webly.progress import progress


@dataclass
class IndexConfig:
    layout: Literal["auto", "webvision", "folder"] = opt("auto",
                                                         "dataset layout ('auto': webvision when "
                                                         "info/ exists)")
    splits: list[str] = opt(["train", "val", "test"], "splits to index (those present)")
    train_list: Literal["all", "google", "flickr"] = opt("all", "WebVision train list")
    sidecar: str | None = opt(None, "folder layout: JSONL/CSV of text fields keyed by 'path'")
    skip_bad: bool = opt(False, "skip records with broken metadata (counted) instead of failing")
    chunk_size: int = opt(65536, "rows per Parquet row group (memory bound while indexing)")
    workers: int = opt(1, "processes parsing WebVision metadata JSON files")

    def validate(self) -> None:
        check_choices(self, "index")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise WeblyError(f"index.splits: unknown split(s) {bad}; valid: {list(SPLITS)}")
        if self.chunk_size < 1 or self.workers < 1:
            raise WeblyError("index.chunk_size and index.workers must be positive")


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
    return FolderReader(root, sidecar=cfg.sidecar)


def index_dataset(root: str | Path, out: str | Path, cfg: IndexConfig) -> dict[str, Any]:
    """Stream every record of the chosen splits into a manifest; return the stage summary."""
    t0 = time.time()
    reader = open_reader(root, cfg)
    layout = "webvision" if isinstance(reader, WebVisionReader) else "folder"
    splits = [s for s in cfg.splits if s in reader.available_splits()]
    meta = {"root": str(Path(root).resolve()), "layout": layout, "classes": reader.classes,
            "class_names": reader.class_names}
    per_split: dict[str, int] = {}
    with ManifestWriter(out, meta, cfg.chunk_size) as writer:
        for split in splits:
            before = writer.count
            for rec in progress(reader.iter_records(split), desc=f"index {split}", unit="rec"):
                writer.write(rec)
            per_split[split] = writer.count - before
    return {"manifest": str(out), "layout": layout, "classes": len(reader.classes),
            "records": per_split, "absent_splits": sorted(set(cfg.splits) - set(splits)),
            "fixed_or_skipped": dict(reader.stats), "seconds": round(time.time() - t0, 2)}
