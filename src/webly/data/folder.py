"""Reader for ImageFolder-style datasets (`class_name/xxx.jpg`), with optional sidecar text.

Two layouts: `root/<class>/...` (every image is a training image), or split folders
`root/train/<class>/...` with optional `root/val/<class>/...` and `root/test/<class>/...` (the
classes are the training split's). `holdout` > 0 moves that fraction of each class's training
images (at least one image is always left to train on) into split `val`, chosen by a fixed hash
of the path: the same images in every run and on every machine. A dataset with a val folder keeps
it and holds nothing out.

The sidecar is a JSONL file (one object per line) or a CSV file with a `path` column (relative to
the root) and any of `title`, `description`, `tags` (a JSON list, or a string split on `|` / `,`).
Class index = position of the class folder in sorted order, as torchvision's ImageFolder does.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from webly.core.errors import WeblyError
from webly.data.paths import RootGuard
from webly.data.records import SPLITS, Record, clean_field, clean_tags, has_surrogates
from webly.data.textio import part_range

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def _read_sidecar(path: Path, counts: Counter) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise WeblyError(f"sidecar text file not found: {path} (expected JSONL or CSV with a "
                         "'path' column)")
    out: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        if path.suffix.lower() == ".csv":
            rows: Iterator[tuple[int, Any]] = enumerate(csv.DictReader(f), 2)
        else:
            rows = ((n, line) for n, line in enumerate(f, 1) if line.strip())
        for lineno, row in rows:
            if isinstance(row, str):
                try:
                    row = json.loads(row)
                except json.JSONDecodeError as e:
                    raise WeblyError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not row.get("path"):
                raise WeblyError(f"{path}:{lineno}: expected an object with a 'path' field")
            tags = row.get("tags")
            if isinstance(tags, str) and tags.startswith("["):
                with contextlib.suppress(json.JSONDecodeError):
                    tags = json.loads(tags)
            if isinstance(tags, str) and "|" in tags:
                tags = tags.split("|")
            out[str(row["path"])] = {
                "title": clean_field(row.get("title"), counts, "title"),
                "description": clean_field(row.get("description"), counts, "description"),
                "tags": clean_tags(tags, counts),
            }
    return out


def _held_out(paths: list[str], fraction: float) -> set[str]:
    """The `floor(fraction * n)` paths of one class with the smallest hashes (never all)."""
    k = min(int(fraction * len(paths)), len(paths) - 1)
    if k <= 0:
        return set()
    return set(sorted(paths, key=lambda p: hashlib.blake2b(p.encode(), digest_size=8).digest())[:k])


def split_folders(root: Path) -> list[str]:
    """The split folders of `root` (train first) when it has the split layout, else []."""
    names = {d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith(".")}
    if "train" in names and names <= set(SPLITS):
        return [s for s in SPLITS if s in names]
    return []


class FolderReader:
    """Class folders -> records, labels from the sorted class folders (of `train/` in the split
    layout); see the module docstring for splits and the holdout."""

    def __init__(self, root: str | Path, *, sidecar: str | Path | None = None,
                 split: str = "train", holdout: float = 0.0) -> None:
        self.root = Path(root)
        self.guard = RootGuard(self.root)
        if not self.root.is_dir():
            raise WeblyError(f"dataset root not found: {self.root} (expected class folders)")
        if not 0 <= holdout < 1:
            raise WeblyError(f"holdout must be within [0, 1), got {holdout}")
        self.splits = split_folders(self.root)
        self.prefix = "train/" if self.splits else ""
        top = self.root / "train" if self.splits else self.root
        self._dirs = sorted(d.name for d in os.scandir(top)
                            if d.is_dir() and not d.name.startswith("."))
        if not self._dirs:
            raise WeblyError(f"{top}: no class folders found (expected {top}/<class>/<image>)")
        for other in self.splits[1:]:
            extra = sorted({d.name for d in os.scandir(self.root / other) if d.is_dir()}
                           - set(self._dirs))
            if extra:
                raise WeblyError(f"{self.root / other}: class folder(s) {extra[:5]} not in "
                                 f"{top} (the classes are the training split's)")
        # a folder name that is not UTF-8 arrives with lone surrogates (surrogateescape): shown
        # with U+FFFD; its images are skipped and counted below, as Parquet cannot store the path
        self.classes = [clean_field(c) for c in self._dirs]
        self.class_names = list(self.classes)
        self.split = split
        self.holdout = 0.0 if "val" in self.splits else holdout
        self.stats: Counter = Counter()
        self.text = _read_sidecar(Path(sidecar), self.stats) if sidecar else {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def available_splits(self) -> list[str]:
        if not self.splits:
            return [self.split, "val"] if self.holdout else [self.split]
        return sorted(set(self.splits) | ({"val"} if self.holdout else set()), key=SPLITS.index)

    def _folder_of(self, split: str) -> tuple[Path, str]:
        """The folder a split's images are read from and their paths' prefix."""
        if not self.splits:
            return self.root, ""
        real = "train" if split == "val" and self.holdout else split
        return self.root / real, real + "/"

    def _files(self, top: Path, prefix: str, cls: str) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(top / cls):
            dirnames.sort()
            for name in sorted(filenames):
                if os.path.splitext(name)[1].lower() not in IMAGE_EXTS:
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), top).replace(os.sep, "/")
                yield prefix + rel

    def iter_records(self, split: str, part: tuple[int, int] = (0, 1)) -> Iterator[Record]:
        """Records in sorted class-folder order; `part` (i, n): the i-th of n contiguous ranges of
        class folders (so the parts, concatenated in order, are the whole)."""
        if split not in self.available_splits():
            return
        top, prefix = self._folder_of(split)
        held = self.holdout and split in ("train", "val") and (not self.splits or
                                                                 prefix == "train/")
        lo, hi = part_range(len(self._dirs), part)
        for label, cls in enumerate(self._dirs[lo:hi], start=lo):
            if not (top / cls).is_dir():
                continue
            files = list(self._files(top, prefix, cls))
            if held:
                out = _held_out(files, self.holdout)
                files = [f for f in files if (f in out) == (split == "val")]
            for rel in files:
                if has_surrogates(rel):
                    self.stats["skipped_path_not_utf8"] += 1
                    continue
                self.guard.check(rel, f"{self.root / rel}")
                text = self.text.get(rel, {})
                yield Record(id=rel, path=rel, split=split, label=label,
                             title=text.get("title", ""),
                             description=text.get("description", ""),
                             tags=list(text.get("tags", [])))
