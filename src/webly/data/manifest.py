"""The manifest: one Parquet file of records that every later stage reads.

Schema (one row per image, row order = the order stages index their outputs by):

    id           string    unique image id (the path as its list file names it)
    path         string    image path relative to the dataset root
    split        string    train | val | test
    label        int32     0-based class index (null for unlabelled test images)
    source       string    google | flickr | other
    query        int32     WebVision query id (null when unknown)
    query_text   string    the search query that found the image ("" when unknown)
    title        string
    description  string    (capped at MAX_TEXT_CHARS)
    tags         list<string>

File metadata (key `webly`, JSON): {"version": 1, "root": absolute dataset root, "layout":
"webvision"|"folder", "classes": [wnid or folder name, ...], "class_names": [...]}.
Written in row groups of `chunk_size` rows to a temp file renamed at the end, so a manifest that
exists is complete; read back in batches so 16M rows never become 16M Python objects at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from webly.core import faults
from webly.core.errors import WeblyError
from webly.core.files import AtomicTarget
from webly.data.records import Record

VERSION = 1
SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("split", pa.string()), ("label", pa.int32()),
    ("source", pa.string()), ("query", pa.int32()), ("query_text", pa.string()),
    ("title", pa.string()), ("description", pa.string()), ("tags", pa.list_(pa.string())),
])
COLUMNS = [f.name for f in fields(Record)]
assert SCHEMA.names == COLUMNS


class ManifestWriter:
    """Buffers records and writes row groups; the file appears only when `close()` succeeds."""

    def __init__(self, path: str | Path, meta: dict[str, Any], chunk_size: int = 65536) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._target = AtomicTarget(self.path)  # the file appears whole, or not at all
        self.tmp = self._target.tmp
        schema = SCHEMA.with_metadata({"webly": json.dumps({"version": VERSION, **meta})})
        self._writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        self._schema = schema
        self._buf: list[Record] = []
        self.chunk_size = chunk_size
        self.rows = 0

    @property
    def count(self) -> int:
        """Records accepted so far (written or buffered)."""
        return self.rows + len(self._buf)

    def write(self, rec: Record) -> None:
        self._buf.append(rec)
        if len(self._buf) >= self.chunk_size:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        cols = {c: [getattr(r, c) for r in self._buf] for c in COLUMNS}
        self._writer.write_table(pa.Table.from_pydict(cols, schema=self._schema))
        self.rows += len(self._buf)
        self._buf.clear()
        faults.point("manifest.rowgroup")  # part of the file written

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Rows already in the manifest schema (a merge): written as they are, no Python objects."""
        self._flush()
        self._writer.write_table(pa.Table.from_batches([batch]).cast(self._schema))
        self.rows += batch.num_rows

    def close(self) -> None:
        self._flush()
        self._writer.close()
        faults.point("manifest.close")  # every row written, the final name not yet taken
        self._target.commit()

    def abort(self) -> None:
        self._writer.close()
        self._target.discard()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        self.abort() if exc_type else self.close()


def write_manifest(path: str | Path, records: Iterable[Record], meta: dict[str, Any],
                   chunk_size: int = 65536) -> int:
    with ManifestWriter(path, meta, chunk_size) as w:
        for r in records:
            w.write(r)
    return w.rows


class Manifest:
    """Read access to a manifest: its class list and root, and its rows in batches."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WeblyError(f"manifest not found: {self.path} (make one with `webly index`)")
        try:
            self._file = pq.ParquetFile(self.path, pre_buffer=False)  # streaming: bounded memory
        except (pa.ArrowInvalid, OSError) as e:
            raise WeblyError(f"{self.path}: not a readable Parquet manifest ({e})") from None
        raw = (self._file.schema_arrow.metadata or {}).get(b"webly")
        if raw is None:
            raise WeblyError(f"{self.path}: Parquet file without webly metadata (not a manifest)")
        self.meta: dict[str, Any] = json.loads(raw)
        self.classes: list[str] = self.meta["classes"]
        self.class_names: list[str] = self.meta.get("class_names", self.classes)
        self.root = Path(self.meta["root"])

    def __len__(self) -> int:
        return self._file.metadata.num_rows

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def iter_batches(self, columns: list[str] | None = None,
                     batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        yield from self._file.iter_batches(batch_size=batch_size, columns=columns)

    def iter_records(self, batch_size: int = 65536) -> Iterator[Record]:
        for batch in self.iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                yield Record(**row)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return self._file.read(columns=columns)

    def image_path(self, relpath: str) -> Path:
        return self.root / relpath
