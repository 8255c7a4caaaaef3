"""Label files that several stages share.

    labels.parquet   (`webly pseudo-label` writes it; `finetune --labels` and `weigh --labels`
                     read it) one row per training image the labeller saw, in manifest order,
                     in row groups: row (int64 manifest row), id, label (int32, the hard label
                     to train on; -1: dropped), original_label (int32), source (original |
                     pseudo | dropped), confidence (float32, the predicted class's probability);
                     with soft targets also soft_idx (fixed list<int32>[s]) and soft_prob (fixed
                     list<float16>[s]): the labeller's s most probable classes and their
                     probabilities (not renormalised; the rest of the mass is 1 - their sum)
    name label       text lines "image_name class_index" (WebVision's val_filelist.txt, a truth
                     file): `evaluate --labels`, `ensemble --fit-labels`
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from webly.core.errors import WeblyError
from webly.core.files import AtomicTarget
from webly.data.textio import iter_lines, require


class LabelsWriter:
    """labels.parquet a row group at a time; the file appears only on `close()`."""

    def __init__(self, out_dir: str | Path, soft_k: int = 0) -> None:
        fields = [("row", pa.int64()), ("id", pa.string()), ("label", pa.int32()),
                  ("original_label", pa.int32()), ("source", pa.string()),
                  ("confidence", pa.float32())]
        if soft_k:
            fields += [("soft_idx", pa.list_(pa.int32(), soft_k)),
                       ("soft_prob", pa.list_(pa.float16(), soft_k))]
        self.schema, self.soft_k = pa.schema(fields), soft_k
        self.target = AtomicTarget(Path(out_dir) / "labels.parquet")
        self.writer = pq.ParquetWriter(self.target.tmp, self.schema, compression="zstd")

    def write(self, columns: dict[str, Any]) -> None:
        arrays = [pa.array(columns[f.name], f.type) for f in self.schema
                  if not f.name.startswith("soft")]
        if self.soft_k:
            for name, tp, dt in (("soft_idx", pa.int32(), np.int32),
                                 ("soft_prob", pa.float16(), np.float16)):
                flat = np.asarray(columns[name], dt).ravel()
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, tp), self.soft_k))
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> Path:
        self.writer.close()
        self.target.commit()
        return self.target.path

    def abort(self) -> None:
        self.writer.close()
        self.target.discard()


def _labels_file(path: str | Path) -> pq.ParquetFile:
    """A labels.parquet (or its folder) opened once, or a one-line error for anything else."""
    p = Path(path)
    p = p / "labels.parquet" if p.is_dir() else p
    if not p.is_file():
        raise WeblyError(f"labels file not found: {p} (make it with `webly pseudo-label`)")
    try:
        f = pq.ParquetFile(p)
    except (pa.ArrowInvalid, OSError) as e:
        raise WeblyError(f"{p}: not a labels file of `webly pseudo-label` "
                         f"({str(e).splitlines()[0][:120]})") from None
    if not {"row", "label"} <= set(f.schema_arrow.names):
        raise WeblyError(f"{p}: not a labels file of `webly pseudo-label` (no row and label "
                         "columns)")
    return f


def load_labels(path: str | Path, num_rows: int) -> np.ndarray:
    """A labels.parquet (or its folder) -> labels indexed by manifest row (-1: absent or
    dropped)."""
    f = _labels_file(path)
    t = f.read(columns=["row", "label"])
    if len(t) and int(pc.max(t["row"]).as_py()) >= num_rows:
        raise WeblyError(f"{path} labels rows beyond the manifest's {num_rows}: the labels of "
                         "another manifest")
    out = np.full(num_rows, -1, np.int64)
    out[t["row"].to_numpy()] = t["label"].to_numpy()
    return out


def load_soft_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, soft_idx [n, s], soft_prob [n, s]) of a labels.parquet written with soft targets."""
    f = _labels_file(path)
    if "soft_idx" not in f.schema_arrow.names:
        raise WeblyError(f"{path} has no soft targets (write it with `webly pseudo-label "
                         "--soft-k`)")
    t = f.read(columns=["row", "soft_idx", "soft_prob"])
    s = t.schema.field("soft_idx").type.list_size
    flat = lambda c: t[c].combine_chunks().flatten().to_numpy(zero_copy_only=False)  # noqa: E731
    return (t["row"].to_numpy(), flat("soft_idx").reshape(-1, s),
            flat("soft_prob").astype(np.float32).reshape(-1, s))


def read_name_labels(path: str | Path) -> dict[str, int]:
    """`name label` lines -> {name: label}; a malformed line is an error naming file and line."""
    out: dict[str, int] = {}
    for lineno, line in iter_lines(require(Path(path), "lines 'name label'")):
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise WeblyError(f"{path}:{lineno}: expected 'name label', got {line[:80]!r}")
        out[parts[0]] = int(parts[1])
    return out


def label_effect(labels: str | Path, truth: np.ndarray | None = None) -> dict[str, Any]:
    """What a pseudo-labelling did to its labels (a labels.parquet): changed, dropped, kept; with
    `truth` (each manifest row's clean label, -1: unknown, as a benchmark or a dataset's truth
    files give it) how many wrong labels it fixed, added and removed. The one reader for the
    report and the benchmarks, so the two cannot disagree."""
    import pyarrow.parquet as pq

    t = pq.read_table(labels, columns=["row", "label", "original_label", "source"]).to_pydict()
    new, orig, src = np.array(t["label"]), np.array(t["original_label"]), np.array(t["source"])
    kept, dropped, pseudo = new >= 0, src == "dropped", src == "pseudo"
    res: dict[str, Any] = {"train_images": len(new), "relabelled": int(pseudo.sum()),
                           "dropped": int(dropped.sum()), "kept": int(kept.sum()),
                           "kept_share": round(int(kept.sum()) / max(len(new), 1), 4)}
    if truth is None:
        return res
    true = truth[np.array(t["row"], dtype=np.int64)]
    known = true >= 0  # only rows with a clean label count as right or wrong
    wrong_before = int(((orig != true) & known).sum())
    wrong_after = int(((new != true) & kept & known).sum())
    res.update(
        images_without_truth=int((~known).sum()),
        wrong_labels_before=wrong_before,
        noise_before=round(wrong_before / max(int(known.sum()), 1), 4),
        relabelled_to_true=int((pseudo & (new == true) & known).sum()),
        relabelled_away_from_true=int((pseudo & (orig == true) & known).sum()),
        dropped_that_were_wrong=int((dropped & (orig != true) & known).sum()),
        wrong_labels_after=wrong_after,
        noise_after=round(wrong_after / max(int((kept & known).sum()), 1), 4),
        wrong_labels_removed=round(1 - wrong_after / max(wrong_before, 1), 4))
    return res
