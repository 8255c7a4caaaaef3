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

Query folders are q%04d in 1.0 and q%05d in 2.0. Records are produced one at a time in list order.
Each metadata JSON file is parsed once, whatever the order of the list: the meta list is scanned
(12 bytes a line), the files are read in order of first use, and their texts go back into list
order through sorted runs on disk; memory holds one file and one run, not the dataset.
"""

from __future__ import annotations

import heapq
import itertools
import json
import multiprocessing as mp
import re
import tempfile
from array import array
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from webly.core.errors import WeblyError
from webly.data.paths import RootGuard, check_relative
from webly.data.records import Record, Source, text_from_meta
from webly.data.textio import (
    count_lines,
    iter_lines,
    line_range,
    parse_label,
    part_range,
    require,
)

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
                 workers: int = 1) -> None:
        self.root = Path(root)
        self.guard = RootGuard(self.root)
        if not self.root.is_dir():
            raise WeblyError(f"dataset root not found: {self.root} (expected a folder with info/)")
        self.info = require(self.root / "info", "the WebVision info/ folder of list files",
                            folder=True)
        self.classes, self.class_names = read_synsets(self.info / "synsets.txt")
        self.queries = read_queries(self.info)
        self.train_list = train_list
        self.skip_bad = skip_bad
        self.stats: Counter = Counter()
        self.meta_files_parsed = 0  # each metadata JSON once, whatever the list order
        self.workers = workers  # processes parsing metadata files

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def available_splits(self) -> list[str]:
        out = ["train"] if self._train_list_path() else []
        out += [s for s in ("val", "test") if (self.info / f"{s}_filelist.txt").is_file()]
        return out

    def iter_records(self, split: str, part: tuple[int, int] = (0, 1)) -> Iterator[Record]:
        """Records of `split` in list order; `part` (i, n): only the i-th of n contiguous ranges of
        list lines (so the parts, concatenated in order, are the whole list)."""
        if split == "train":
            yield from self._iter_train(part)
        elif split in ("val", "test"):
            yield from self._iter_eval(split, part)
        else:
            raise WeblyError(f"unknown split {split!r}; expected train, val or test")

    # -- train ---------------------------------------------------------------------------------
    def _train_list_path(self) -> Path | None:
        for name in (f"train_filelist_{self.train_list}.txt", "train_filelist.txt"):
            if (self.info / name).is_file():
                return self.info / name
        return None

    def _iter_train(self, part: tuple[int, int]) -> Iterator[Record]:
        flist = self._train_list_path()
        if flist is None:
            raise WeblyError(f"missing {self.info / f'train_filelist_{self.train_list}.txt'}: "
                             "expected lines 'relative/path.jpg label'")
        mlist = self.info / flist.name.replace("filelist", "meta_list")
        if not mlist.is_file():
            self.stats["train_without_meta_list"] += 1
            mlist = None
        lo, hi = 0, None
        if part[1] > 1:  # a part needs the list's length; its meta list must match it
            n = count_lines(flist)
            if mlist and count_lines(mlist) != n:
                raise WeblyError(f"{flist} and {mlist} differ in length: they must align line "
                                 "by line")
            lo, hi = part_range(n, part)
        texts = self._meta_texts(mlist, lo, hi) if mlist else iter(())
        lines = itertools.islice(iter_lines(flist), lo, hi)
        for entry, text in zip_longest(lines, texts):
            if entry is None or (mlist and text is None):
                raise WeblyError(f"{flist} and {mlist} differ in length: they must align "
                                 "line by line")
            lineno, line = entry
            relpath, label = self._split_pair(line, flist, lineno)
            title, description, tags = "", "", []
            if text is not None:
                if text is _BAD:
                    self.stats["skipped_bad_meta"] += 1
                    continue
                title, description, tags = text
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
        relpath = self.guard.check(parts[0], f"{path}:{lineno}")
        return relpath, parse_label(parts[1], path, lineno, self.num_classes)

    def _bad(self, msg: str) -> object:
        if not self.skip_bad:
            raise WeblyError(msg + " (use --skip-bad to skip and count such records)")
        return _BAD

    def _meta_texts(self, mlist: Path, lo: int = 0, hi: int | None = None) -> Iterator[Any]:
        """(title, description, tags) of meta-list lines lo..hi, in list order, or _BAD. Each JSON
        file is parsed once whatever the order of the list: scan the list (12 bytes a line), read
        the files in order of first use, and merge the texts back into list order through
        sorted runs on disk (memory: a run and a file, not the dataset)."""
        files: dict[str, int] = {}
        fid, rows, linenos = array("i"), array("i"), array("i")
        for lineno, line in itertools.islice(iter_lines(mlist), lo, hi):
            json_rel, _, row_s = line.rpartition(" ")
            ok = row_s.isdigit() and int(row_s) >= 1
            if not ok:
                self._bad(f"{mlist}:{lineno}: expected 'file.json row' with a 1-based row")
            fid.append(files.setdefault(json_rel, len(files)) if ok else -1)
            rows.append(int(row_s) if ok else 0)
            linenos.append(lineno)
        file_of, row_of = np.frombuffer(fid, np.int32), np.frombuffer(rows, np.int32)
        line_of = np.frombuffer(linenos, np.int32)
        order = np.argsort(file_of, kind="stable")
        order = order[file_of[order] >= 0]
        bounds = np.flatnonzero(np.diff(file_of[order])) + 1
        names = list(files)  # by id: dicts keep insertion order
        jobs = ((names[file_of[g[0]]], mlist, g.tolist(), row_of[g].tolist(), line_of[g].tolist())
                for g in (np.split(order, bounds) if len(order) else []))
        with tempfile.TemporaryDirectory(prefix="webly-index-") as work:
            runs = SortedRuns(Path(work))
            for texts, counts, parsed in self._parse_all(jobs):
                for i, text in texts:
                    runs.add(i, _BAD if text is None else text)
                self.stats.update(counts)
                self.meta_files_parsed += parsed
            yield from runs.in_order(len(file_of))

    def _parse_all(self, jobs: Iterator[tuple]) -> Iterator[tuple[list, Counter, int]]:
        """Each metadata file's texts, in file order; with `workers` > 1 parsed in forked worker
        processes, a bounded window of files in flight (errors still surface in file order)."""
        if self.workers <= 1 or "fork" not in mp.get_all_start_methods():
            yield from (self._group_texts(*job) for job in jobs)
            return
        global _READER
        _READER = self
        window: deque = deque()
        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork")) as pool:
            for job in jobs:
                window.append(pool.submit(_parse_job, job))
                if len(window) >= 4 * self.workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

    def _group_texts(self, name: str, mlist: Path, idx: list[int], rows: list[int],
                     lines: list[int]) -> tuple[list, Counter, int]:
        """One metadata file, parsed once: (list index, text) for every line that reads it, the
        fixes counted, and 1 if the file was parsed."""
        saved, self.stats = self.stats, Counter()
        parsed_before = self.meta_files_parsed
        try:
            items = self._load_meta(name, mlist, lines[0])
            texts = [(i, self._text_of(items, name, r, mlist, ln))
                     for i, r, ln in zip(idx, rows, lines, strict=True)]
            texts = [(i, None if t is _BAD else t) for i, t in texts]  # _BAD does not pickle
            return texts, self.stats, self.meta_files_parsed - parsed_before
        finally:
            self.stats = saved
            self.meta_files_parsed = parsed_before

    def _text_of(self, items: Any, json_rel: str, row: int, mlist: Path, lineno: int) -> Any:
        if items is _BAD:
            return _BAD
        if row > len(items):
            return self._bad(f"{self._meta_path(json_rel)}: row {row} is past the end "
                             f"({len(items)} items; from {mlist}:{lineno})")
        return text_from_meta(items[row - 1], self.stats)

    def _meta_path(self, json_rel: str) -> Path:
        beside = self.root / json_rel
        return beside if beside.is_file() else self.root / "meta" / json_rel

    def _load_meta(self, json_rel: str, mlist: Path, lineno: int) -> Any:
        check_relative(json_rel, f"{mlist}:{lineno}")  # before it is joined to the root
        path = self._meta_path(json_rel)  # checked once per file read, not once per row
        self.guard.check(path.relative_to(self.root).as_posix(), f"{mlist}:{lineno}")
        try:
            raw = path.read_bytes()
        except OSError:
            return self._bad(f"{mlist}:{lineno}: metadata file {json_rel} not found "
                             f"(looked in {self.root} and {self.root / 'meta'})")
        self.meta_files_parsed += 1
        try:
            items = json.loads(raw.decode("utf-8", errors="replace"))
        except json.JSONDecodeError as e:
            return self._bad(f"{path}: invalid JSON ({e.msg} at line {e.lineno}); "
                             f"needed for row from {mlist}:{lineno}")
        if not isinstance(items, list):
            return self._bad(f"{path}: expected a JSON list of items, got {type(items).__name__}")
        return items

    # -- val / test ----------------------------------------------------------------------------
    def _iter_eval(self, split: str, part: tuple[int, int]) -> Iterator[Record]:
        flist = require(self.info / f"{split}_filelist.txt",
                        "lines 'name label'" if split == "val" else "lines 'name'")
        folder: str | None = None
        for lineno, line in itertools.islice(iter_lines(flist), *line_range(flist, part)):
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
_READER: WebVisionReader | None = None  # the reader forked index workers parse for


def _parse_job(job: tuple) -> tuple[list, Counter, int]:
    assert _READER is not None
    return _READER._group_texts(*job)


RUN_ROWS = 262_144  # texts held in memory before a sorted run goes to disk


class SortedRuns:
    """(index, text) pairs added in any order, read back in index order: kept in memory up to
    `run_rows`, then written as sorted Parquet runs and merged (an external merge sort)."""

    def __init__(self, work: Path, run_rows: int | None = None) -> None:
        self.work, self.run_rows = work, run_rows or RUN_ROWS
        self.buf: list[tuple[int, Any]] = []
        self.runs: list[Path] = []

    def add(self, index: int, text: Any) -> None:
        self.buf.append((index, text))
        if len(self.buf) >= self.run_rows:
            self._flush()

    def _flush(self) -> None:
        self.buf.sort(key=lambda x: x[0])
        bad = [t is _BAD for _, t in self.buf]
        texts = [("", "", []) if b else t for (_, t), b in zip(self.buf, bad, strict=True)]
        cols = {"i": [i for i, _ in self.buf], "bad": bad, "title": [t[0] for t in texts],
                "description": [t[1] for t in texts], "tags": [t[2] for t in texts]}
        path = self.work / f"run-{len(self.runs):05d}.parquet"
        pq.write_table(pa.table(cols), path)
        self.runs.append(path)
        self.buf = []

    def _read(self, path: Path) -> Iterator[tuple[int, Any]]:
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=8192):
            for r in batch.to_pylist():
                yield r["i"], (_BAD if r["bad"] else (r["title"], r["description"], r["tags"]))

    def in_order(self, n: int) -> Iterator[Any]:
        """Texts for indices 0..n-1; _BAD where nothing was added (a malformed list line)."""
        if self.runs:
            self._flush()
            merged = heapq.merge(*(self._read(p) for p in self.runs), key=lambda x: x[0])
        else:
            merged = iter(sorted(self.buf, key=lambda x: x[0]))
        nxt = next(merged, None)
        for i in range(n):
            if nxt is not None and nxt[0] == i:
                yield nxt[1]
                nxt = next(merged, None)
            else:
                yield _BAD

__all__ = ["WebVisionReader", "read_synsets", "read_queries", "query_of"]
