"""The predictions folder: what `webly predict` and `webly ensemble` write, and evaluation,
ensembling, pseudo-labelling and submission read, a row group at a time.

    PREDS/predictions.parquet   one row per image of the split, in manifest order, written in row
        groups of `ROW_GROUP` rows:
        row (int64)        the manifest row
        id (string)        the image id
        status (string)    "ok", or "skipped: <reason>" for an image that could not be decoded
                           (marked, never dropped)
        topk_idx           fixed-size list<int32>[k]: the k most probable classes, most probable
                           first (k = min(predict's top_k, classes))
        topk_prob          fixed-size list<float16>[k]: their probabilities
        rest (float16)     1 - sum(topk_prob): the probability mass of the classes not kept
        file metadata `webly` (JSON): split, classes, num_classes, k, model, tta, ...

    PREDS/features.npy          with `predict --features`: the classifier layer's input (the
        model's features, averaged over the test-time views) of every image, float16 [n, D], in
        the file's row order (NumPy's .npy: `np.load(..., mmap_mode="r")` reads any slice without
        the rest; 16M images x 2,048 features are 65 GB on disk, never in memory)

No file holds all N x C probabilities: at WebVision's 16M images x 5,000 classes that is 160 GB in
float16. With k >= C the file is the whole distribution; otherwise `rest` bounds what was dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from webly.core.errors import WeblyError
from webly.core.files import AtomicTarget

ROW_GROUP = 65_536
FILE = "predictions.parquet"
FEATURES = "features.npy"


def schema(k: int, info: dict[str, Any]) -> pa.Schema:
    fields = [("row", pa.int64()), ("id", pa.string()), ("status", pa.string()),
              ("topk_idx", pa.list_(pa.int32(), k)), ("topk_prob", pa.list_(pa.float16(), k)),
              ("rest", pa.float16())]
    return pa.schema(fields).with_metadata({"webly": json.dumps({**info, "k": k})})


@dataclass
class Predictions:
    """A batch of rows (or a whole file): arrays aligned row by row."""

    ids: list[str]
    rows: np.ndarray  # int64 manifest rows
    status: list[str]
    top_i: np.ndarray  # int32 [n, k]
    top_p: np.ndarray  # float32 [n, k]
    rest: np.ndarray  # float32 [n]
    info: dict[str, Any]

    @property
    def ok(self) -> np.ndarray:
        return np.fromiter((s == "ok" for s in self.status), bool, len(self.status))

    def probability_of(self, labels: np.ndarray) -> np.ndarray:
        """Each row's probability of its label: from the top-k, or the leftover mass spread
        evenly over the classes not kept (a label of -1: that spread)."""
        hit = self.top_i == labels[:, None]
        spread = self.rest / max(self.info["num_classes"] - self.top_i.shape[1], 1)
        return np.where(hit.any(1), (self.top_p * hit).sum(1), spread)

    def dense(self) -> np.ndarray:
        """[n, C] probabilities: the top-k, the leftover mass spread evenly over the others."""
        (n, k), C = self.top_i.shape, self.info["num_classes"]
        fill = self.rest / max(C - k, 1) if k < C else np.zeros(n, np.float32)
        out = np.repeat(fill[:, None].astype(np.float32), C, axis=1)
        np.put_along_axis(out, self.top_i.astype(np.int64), self.top_p.astype(np.float32), axis=1)
        return out


class PredictionWriter:
    """Writes predictions.parquet a row group at a time; the file appears only on `close()`."""

    def __init__(self, out_dir: str | Path, k: int, info: dict[str, Any]) -> None:
        self.target = AtomicTarget(Path(out_dir) / FILE)
        self.k, self.rows = k, 0
        self.schema = schema(k, info)
        self.writer = pq.ParquetWriter(self.target.tmp, self.schema, compression="zstd")

    def write(self, rows: np.ndarray, ids: list[str] | pa.Array, status: list[str],
              top_i: np.ndarray, top_p: np.ndarray) -> None:
        top_p16 = np.asarray(top_p, np.float16)
        rest = np.clip(1.0 - top_p16.astype(np.float32).sum(1), 0.0, 1.0).astype(np.float16)
        k = self.k
        table = pa.Table.from_arrays([
            pa.array(rows, pa.int64()), pa.array(ids, pa.string()), pa.array(status, pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(top_i, np.int32).ravel()), k),
            pa.FixedSizeListArray.from_arrays(pa.array(top_p16.ravel()), k), pa.array(rest)],
            schema=self.schema)
        self.writer.write_table(table, row_group_size=ROW_GROUP)
        self.rows += len(rows)

    def close(self) -> None:
        self.writer.close()
        self.target.commit()

    def abort(self) -> None:
        self.writer.close()
        self.target.discard()


def write_predictions(out: Path, part: dict[str, Any], info: dict[str, Any]) -> None:
    """Write a whole set at once. `part`: row, ids, status, top_i [N, k], top_p [N, k]."""
    writer = PredictionWriter(out, part["top_i"].shape[1], info)
    try:
        for s in range(0, max(len(part["row"]), 1), ROW_GROUP):
            sl = slice(s, s + ROW_GROUP)
            writer.write(np.asarray(part["row"])[sl], part["ids"][sl], part["status"][sl],
                         part["top_i"][sl], part["top_p"][sl])
    except BaseException:
        writer.abort()
        raise
    writer.close()


def _open(preds_dir: str | Path) -> pq.ParquetFile:
    # pre_buffer (pyarrow's default) holds every row group read so far: memory would grow with N
    return pq.ParquetFile(_file(preds_dir), pre_buffer=False)


def _file(preds_dir: str | Path) -> Path:
    f = Path(preds_dir) / FILE
    if not f.is_file():
        raise WeblyError(f"{preds_dir}: no {FILE} (make it with `webly predict`)")
    return f


def read_info(preds_dir: str | Path) -> dict[str, Any]:
    pf = _open(preds_dir)
    return {**json.loads(pf.schema_arrow.metadata[b"webly"]), "images": pf.metadata.num_rows}


def _column(t: pa.Table | pa.RecordBatch, name: str) -> pa.Array:
    c = t[name]
    return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c


def _batch(t: pa.Table | pa.RecordBatch, info: dict[str, Any]) -> Predictions:
    k = info["k"]
    flat = lambda name: _column(t, name).flatten().to_numpy(zero_copy_only=False)  # noqa: E731
    return Predictions(_column(t, "id").to_pylist(), _column(t, "row").to_numpy(),
                       _column(t, "status").to_pylist(), flat("topk_idx").reshape(-1, k),
                       flat("topk_prob").astype(np.float32).reshape(-1, k),
                       _column(t, "rest").to_numpy(zero_copy_only=False).astype(np.float32), info)


def iter_predictions(preds_dir: str | Path, batch_rows: int = ROW_GROUP) -> Iterator[Predictions]:
    """The file in batches of at most `batch_rows` rows: memory bounded by the batch, not N."""
    pf = _open(preds_dir)
    info = {**json.loads(pf.schema_arrow.metadata[b"webly"]), "images": pf.metadata.num_rows}
    for rb in pf.iter_batches(batch_size=batch_rows):
        yield _batch(rb, info)


def rows_of(preds_dir: str | Path) -> np.ndarray:
    """The manifest rows a predictions file covers, in its order (the row column alone: 8 bytes
    an image, no top-k decoded)."""
    return _open(preds_dir).read(columns=["row"])["row"].to_numpy()


def dense_predictions(preds_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Manifest rows and [n, C] probabilities of a whole file (analyses of a split; n x C floats
    in memory)."""
    parts = [(p.rows, p.dense()) for p in iter_predictions(preds_dir)]
    return np.concatenate([r for r, _ in parts]), np.concatenate([q for _, q in parts])


def load_predictions(preds_dir: str | Path) -> Predictions:
    """The whole file at once (validation and test splits, tests); stream large ones instead."""
    f = _file(preds_dir)
    t = pq.read_table(f)
    info = {**json.loads(t.schema.metadata[b"webly"]), "images": t.num_rows}
    return _batch(t, info)


class FeatureWriter:
    """features.npy written a batch at a time into a memory-mapped file of `n` rows, created at the
    first batch (when the width is known); the file appears only on `close()`."""

    def __init__(self, out_dir: str | Path, n: int) -> None:
        self.target, self.n, self.array = AtomicTarget(Path(out_dir) / FEATURES), n, None

    def write(self, pos: np.ndarray, feats: np.ndarray) -> None:
        if self.array is None:
            self.array = np.lib.format.open_memmap(self.target.tmp, mode="w+", dtype=np.float16,
                                                   shape=(self.n, feats.shape[1]))
        self.array[pos] = feats

    def close(self) -> None:
        if self.array is None:
            raise WeblyError("predict --features: no batch was written")
        self.array.flush()
        self.array = None
        self.target.commit()

    def abort(self) -> None:
        self.array = None
        self.target.discard()


def load_features(preds_dir: str | Path) -> np.ndarray:
    """A predictions folder's features.npy: memory-mapped float16 [n, D], in its row order."""
    f = Path(preds_dir) / FEATURES
    if not f.is_file():
        raise WeblyError(f"{preds_dir}: no {FEATURES} (make it with `webly predict --features`)")
    return np.load(f, mmap_mode="r")
