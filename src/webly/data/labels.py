"""Label files that several stages share.

    labels.parquet   (`webly pseudo-label` writes it; `finetune --labels` and `weigh --labels`
                     read it) one row per training image the labeller saw: row (manifest row),
                     id, label (-1: dropped), original_label, source (original | pseudo | dropped),
                     confidence
    name label       text lines "image_name class_index" (WebVision's val_filelist.txt, a truth
                     file): `evaluate --labels`, `ensemble --fit-labels`
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from webly.data.textio import iter_lines, require
from webly.errors import WeblyError
from webly.files import atomic_path


def write_labels(out_dir: Path, columns: dict[str, Any]) -> Path:
    path = Path(out_dir) / "labels.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)
    return path


def load_labels(path: str | Path, num_rows: int) -> np.ndarray:
    """A labels.parquet (or its folder) -> labels indexed by manifest row (-1: absent or
    dropped)."""
    p = Path(path)
    if p.is_dir():
        p = p / "labels.parquet"
    if not p.is_file():
        raise WeblyError(f"labels file not found: {p} (make it with `webly pseudo-label`)")
    t = pq.read_table(p, columns=["row", "label"])
    out = np.full(num_rows, -1, np.int64)
    out[t["row"].to_numpy()] = t["label"].to_numpy()
    return out


def read_name_labels(path: str | Path) -> dict[str, int]:
    """`name label` lines -> {name: label}; a malformed line is an error naming file and line."""
    out: dict[str, int] = {}
    for lineno, line in iter_lines(require(Path(path), "lines 'name label'")):
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise WeblyError(f"{path}:{lineno}: expected 'name label', got {line[:80]!r}")
        out[parts[0]] = int(parts[1])
    return out
