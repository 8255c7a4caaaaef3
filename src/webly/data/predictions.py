"""The predictions folder: what `webly predict` and `webly ensemble` write, and evaluation,
ensembling, pseudo-labelling and submission read.

    PREDS/predictions.parquet   one row per image of the split, in manifest order:
        row (int64 manifest row), id (string), status ("ok" or "skipped: <reason>": an image that
        could not be decoded is marked, never dropped), topk_idx (list<int32>, k fixed),
        topk_prob (list<float16>); file metadata `webly` (JSON): split, classes, num_classes,
        model, tta, dense, ...
    PREDS/probs.npy             float16 [N, C] probabilities in the same row order, only when
                                `dense` (the model had at most predict's `dense_max` classes)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from webly.errors import WeblyError
from webly.files import atomic_path


@dataclass
class Predictions:
    ids: list[str]
    rows: np.ndarray
    status: list[str]
    top_i: np.ndarray
    top_p: np.ndarray
    probs: np.ndarray | None
    info: dict[str, Any]


def write_predictions(out: Path, part: dict[str, Any], info: dict[str, Any]) -> None:
    """`part`: row, ids, status, top_i [N, k], top_p [N, k], probs [N, C] or None."""
    out = Path(out)
    k = part["top_i"].shape[1]
    table = pa.table({
        "row": pa.array(part["row"], pa.int64()), "id": pa.array(part["ids"], pa.string()),
        "status": pa.array(part["status"], pa.string()),
        "topk_idx": pa.FixedSizeListArray.from_arrays(pa.array(part["top_i"].ravel(), pa.int32()),
                                                      k),
        "topk_prob": pa.FixedSizeListArray.from_arrays(
            pa.array(part["top_p"].ravel(), pa.float16()), k),
    }).replace_schema_metadata({"webly": json.dumps(info)})
    if part["probs"] is not None:  # probs first: predictions.parquet is what marks the folder done
        with atomic_path(out / "probs.npy") as tmp:
            np.save(tmp, part["probs"])
    with atomic_path(out / "predictions.parquet") as tmp:
        pq.write_table(table, tmp)


def load_predictions(preds_dir: str | Path) -> Predictions:
    d = Path(preds_dir)
    f = d / "predictions.parquet"
    if not f.is_file():
        raise WeblyError(f"{d}: no predictions.parquet (make it with `webly predict`)")
    t = pq.read_table(f)
    info = json.loads(t.schema.metadata[b"webly"])
    k = t.schema.field("topk_idx").type.list_size
    probs = np.load(d / "probs.npy") if info.get("dense") and (d / "probs.npy").is_file() else None
    flat = lambda col: t[col].combine_chunks().flatten().to_numpy()  # noqa: E731
    return Predictions(t["id"].to_pylist(), t["row"].to_numpy(), t["status"].to_pylist(),
                       flat("topk_idx").reshape(-1,
                                                k), flat("topk_prob").astype(np.float32).reshape(-1,
                                                                                                 k),
                       probs, info)
