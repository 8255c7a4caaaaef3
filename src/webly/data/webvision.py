"""Streaming reader for the WebVision 1.0 / 2.0 folder layout.

    info/synsets.txt                      one concept per line (line order = class index;
                                          wnid first)
    info/queries*.txt                     "query_id query+text" (1.0: one file per source; 2.0: one)
    info/queries_synsets_map.txt          "query_id class_index"
    info/train_filelist_{all,google,flickr}.txt   "google/q0001/000001.jpg 0" (0-based labels)
    info/train_meta_list_{all,google,flickr}.txt  "google/q0001.json 1" (1-based row in that
                                          JSON list), aligned line-for-line with the matching
                                          train file list
    google/q0001.json or meta/google/q0001.json   a JSON list of dicts per query; all
                                          fields optional
    info/val_filelist.txt  "name label";  info/test_filelist.txt  "name"

Query folders are q%04d in 1.0 and q%05d in 2.0. Records are produced one at a time from the list
files, and only a few metadata JSON files are held in memory at once (they come grouped by query),
so 16M images stream in bounded memory.
"""

from __future__ import annotations

import json
import re
from collections import Counter, OrderedDict
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

from webly.data.paths import RootGuard, check_relative
from webly.data.records import Record, Source, text_from_meta
from webly.data.textio import iter_lines, parse_label, require
from webly.errors import WeblyError

QUERY_DIR = re.compile(r"^q(\d{4,5})$")
VAL_DIRS = ("", "val_images_256", "val_images_resized", "val_images", "val")
TEST_DIRS = ("", "test_images_256", "test_images_resized", "test_images", "test")


def read_synsets(path: Path) -> tuple[list[str], list[str]]:
    """(wnids, names) from synsets.txt; the name is the rest of the line (may be empty)."""
    wnids, names = [], []
    for _, line in iter_lines(require(path, "one WordNet id per line (class index = line order)")):
        wnid, _, name = line.partition(" ")
        wnids.append(wnid)
        names.append(name.strip())
    if not wnids:
        raise WeblyError(f"{path}: no classes listed")
    return wnids, names


def read_queries(info: Path) -> dict[int, str]:
    """query id -> query text ('+' read as a space) from every info/queries*.txt but the map."""
    queries: dict[int, str] = {}
    for path in sorted(info.glob("queries*.txt")):
        if path.name.startswith("queries_synsets_map"):
            continue
        for lineno, line in iter_lines(path):
            qid, _, text = line.partition(" ")
            qid = qid.lstrip("q")
            if not qid.isdigit():
                raise WeblyError(f"{path}:{lineno}: query id {line.split()[0]!r} is not a number")
            queries.setdefault(int(qid), text.replace("+", " ").strip())
    return queries


def query_of(relpath: str) -> int | None:
    for part in relpath.split("/")[:-1]:
        m = QUERY_DIR.match(part)
        if m:
            return int(m.group(1))
    return None


class WebVisionReader:
    """Reads one WebVision-layout dataset root; `stats` counts everything fixed or skipped."""

    def __init__(self, root: str | Path, *, train_list: str = "all", skip_bad: bool = False,
                 meta_cache: int = 8) -> None:
        self.root = Path(root)
        self.guard = RootGuard(self.root)
        if not self.root.is_dir():
            raise WeblyError(f"dataset root not found: {self.root} (expected a folder with info/)")
        self.info = require(self.root / "info", "the WebVision info/ folder of list files")
        self.classes, self.class_names = read_synsets(self.info / "synsets.txt")
        self.queries = read_queries(self.info)
        self.train_list = train_list
        self.skip_bad = skip_bad
        self.stats: Counter = Counter()
        self._meta: OrderedDict[str, list[Any]] = OrderedDict()
        self._meta_cache = meta_cache

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def available_splits(self) -> list[str]:
        out = ["train"] if self._train_list_path() else []
        out += [s for s in ("val", "test") if (self.info / f"{s}_filelist.txt").is_file()]
        return out

    def iter_records(self, split: str) -> Iterator[Record]:
        if split == "train":
            yield from self._iter_train()
        elif split in ("val", "test"):
            yield from self._iter_eval(split)
        else:
            raise WeblyError(f"unknown split {split!r}; expected train, val or test")

    # -- train ---------------------------------------------------------------------------------
    def _train_list_path(self) -> Path | None:
        for name in (f"train_filelist_{self.train_list}.txt", "train_filelist.txt"):
            if (self.info / name).is_file():
                return self.info / name
        return None

    def _iter_train(self) -> Iterator[Record]:
        flist = self._train_list_path()
        if flist is None:
            raise WeblyError(f"missing {self.info / f'train_filelist_{self.train_list}.txt'}: "
                             "expected lines 'relative/path.jpg label'")
        mlist = self.info / flist.name.replace("filelist", "meta_list")
        if not mlist.is_file():
            self.stats["train_without_meta_list"] += 1
            mlist = None
        metas = iter_lines(mlist) if mlist else iter(())
        for entry, meta in zip_longest(iter_lines(flist), metas):
            if entry is None or (mlist and meta is None):
                raise WeblyError(f"{flist} and {mlist} differ in length: they must align "
                                 "line by line")
            lineno, line = entry
            relpath, label = self._split_pair(line, flist, lineno)
            title = description = ""
            tags: list[str] = []
            if meta is not None:
                item = self._meta_item(mlist, *meta)
                if item is _BAD:
                    self.stats["skipped_bad_meta"] += 1
                    continue
                title, description, tags = text_from_meta(item, self.stats)
            query = query_of(relpath)
            yield Record(
                id=relpath, path=relpath, split="train", label=label,
                source=Source.of_path(relpath).value, query=query,
                query_text=self.queries.get(query, "") if query is not None else "",
                title=title, description=description, tags=tags,
            )

    def _split_pair(self, line: str, path: Path, lineno: int) -> tuple[str, int]:
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise WeblyError(f"{path}:{lineno}: expected 'relative/path label', got {line[:80]!r}")
        return self.guard.check(parts[0], f"{path}:{lineno}"), parse_label(parts[1], path, lineno,
                                                                           self.num_classes)

    def _bad(self, msg: str) -> object:
        if not self.skip_bad:
            raise WeblyError(msg + " (use --skip-bad to skip and count such records)")
        return _BAD

    def _meta_item(self, mlist: Path, lineno: int, line: str) -> Any:
        json_rel, _, row_s = line.rpartition(" ")
        if not row_s.isdigit() or int(row_s) < 1:
            return self._bad(f"{mlist}:{lineno}: expected 'file.json row' with a 1-based row")
        items = self._load_meta(json_rel, mlist, lineno)
        if items is _BAD:
            return _BAD
        row = int(row_s)
        if row > len(items):
            return self._bad(f"{self._meta_path(json_rel)}: row {row} is past the end "
                             f"({len(items)} items; from {mlist}:{lineno})")
        return items[row - 1]

    def _meta_path(self, json_rel: str) -> Path:
        beside = self.root / json_rel
        return beside if beside.is_file() else self.root / "meta" / json_rel

    def _load_meta(self, json_rel: str, mlist: Path, lineno: int) -> Any:
        if json_rel in self._meta:
            self._meta.move_to_end(json_rel)
            return self._meta[json_rel]
        check_relative(json_rel, f"{mlist}:{lineno}")  # before it is joined to the root
        path = self._meta_path(json_rel)  # checked once per file read, not once per row
        self.guard.check(path.relative_to(self.root).as_posix(), f"{mlist}:{lineno}")
        try:
            raw = path.read_bytes()
        except OSError:
            return self._bad(f"{mlist}:{lineno}: metadata file {json_rel} not found "
                             f"(looked in {self.root} and {self.root / 'meta'})")
        try:
            items = json.loads(raw.decode("utf-8", errors="replace"))
        except json.JSONDecodeError as e:
            items = self._bad(f"{path}: invalid JSON ({e.msg} at line {e.lineno}); "
                              f"needed for row from {mlist}:{lineno}")
        if items is not _BAD and not isinstance(items, list):
            items = self._bad(f"{path}: expected a JSON list of items, got {type(items).__name__}")
        self._meta[json_rel] = items
        if len(self._meta) > self._meta_cache:
            self._meta.popitem(last=False)
        return items

    # -- val / test ----------------------------------------------------------------------------
    def _iter_eval(self, split: str) -> Iterator[Record]:
        flist = require(self.info / f"{split}_filelist.txt",
                        "lines 'name label'" if split == "val" else "lines 'name'")
        folder: str | None = None
        for lineno, line in iter_lines(flist):
            parts = line.split()
            name = parts[0]
            label = None
            if split == "val" or len(parts) > 1:
                if len(parts) != 2:
                    raise WeblyError(f"{flist}:{lineno}: expected 'name label', got {line[:80]!r}")
                label = parse_label(parts[1], flist, lineno, self.num_classes)
            if folder is None:
                folder = self._eval_folder(split, name)
            path = self.guard.check(f"{folder}/{name}" if folder else name, f"{flist}:{lineno}")
            yield Record(id=name, path=path, split=split, label=label,
                         title="", description="", tags=[])

    def _eval_folder(self, split: str, first_name: str) -> str:
        """The folder holding val/test images: found once from the first listed name."""
        cands = VAL_DIRS if split == "val" else TEST_DIRS
        for cand in cands:
            if (self.root / cand / first_name).exists():
                return cand
        for cand in cands[1:]:  # images not there (yet): the standard folder that exists
            if (self.root / cand).is_dir():
                return cand
        self.stats[f"{split}_images_not_found"] += 1
        return ""


_BAD = object()

__all__ = ["WebVisionReader", "read_synsets", "read_queries", "query_of"]
