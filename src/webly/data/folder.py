"""Reader for ImageFolder-style datasets (`class_name/xxx.jpg`), with optional sidecar text.

The sidecar is a JSONL file (one object per line) or a CSV file with a `path` column (relative to
the root) and any of `title`, `description`, `tags` (a JSON list, or a string split on `|` / `,`).
Class index = position of the class folder in sorted order, as torchvision's ImageFolder does.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from webly.data.paths import RootGuard
from webly.data.records import Record, clean_field, clean_tags, has_surrogates
from webly.data.textio import part_range
from webly.errors import WeblyError

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


class FolderReader:
    """`root/<class>/<image>` -> records of split `split`, labels from sorted class folders."""

    def __init__(self, root: str | Path, *, sidecar: str | Path | None = None,
                 split: str = "train") -> None:
        self.root = Path(root)
        self.guard = RootGuard(self.root)
        if not self.root.is_dir():
            raise WeblyError(f"dataset root not found: {self.root} (expected class folders)")
        self._dirs = sorted(d.name for d in os.scandir(self.root)
                            if d.is_dir() and not d.name.startswith("."))
        if not self._dirs:
            raise WeblyError(f"{self.root}: no class folders found (expected root/<class>/<image>)")
        # a folder name that is not UTF-8 arrives with lone surrogates (surrogateescape): shown
        # with U+FFFD; its images are skipped and counted below, as Parquet cannot store the path
        self.classes = [clean_field(c) for c in self._dirs]
        self.class_names = list(self.classes)
        self.split = split
        self.stats: Counter = Counter()
        self.text = _read_sidecar(Path(sidecar), self.stats) if sidecar else {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def available_splits(self) -> list[str]:
        return [self.split]

    def iter_records(self, split: str, part: tuple[int, int] = (0, 1)) -> Iterator[Record]:
        """Records in sorted class-folder order; `part` (i, n): the i-th of n contiguous ranges of
        class folders (so the parts, concatenated in order, are the whole)."""
        if split != self.split:
            return
        lo, hi = part_range(len(self._dirs), part)
        for label, cls in enumerate(self._dirs[lo:hi], start=lo):
            for dirpath, dirnames, filenames in os.walk(self.root / cls):
                dirnames.sort()
                for name in sorted(filenames):
                    if os.path.splitext(name)[1].lower() not in IMAGE_EXTS:
                        continue
                    rel = os.path.relpath(os.path.join(dirpath, name), self.root)
                    rel = rel.replace(os.sep, "/")
                    if has_surrogates(rel):
                        self.stats["skipped_path_not_utf8"] += 1
                        continue
                    self.guard.check(rel, f"{self.root / rel}")
                    text = self.text.get(rel, {})
                    yield Record(id=rel, path=rel, split=split, label=label,
                                 title=text.get("title", ""),
                                 description=text.get("description", ""),
                                 tags=list(text.get("tags", [])))
