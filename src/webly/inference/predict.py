"""`webly predict`: batched inference of a trained model over a manifest split.

Output `preds/predictions.parquet` (the format is `webly.data.predictions`'): one row per image of
the split in manifest order, its top-k classes with their probabilities and the leftover mass,
written a batch at a time.

With `--features`, features.npy beside it: each image's input to the classifier layer (the
model's features), averaged over the same views; a probe on them is how `pseudo-label` lets the
holdout choose its threshold.

Test-time augmentation: `center` (resize + centre crop), `flip` (+ horizontal flip),
`multiscale` (flip at the training size and at 1.15x), probabilities averaged.
Under torchrun each rank predicts every world-th image into a part file; rank 0 interleaves them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist

from webly.core import faults
from webly.core.config import check_choices, opt
from webly.core.errors import WeblyError
from webly.core.progress import progress
from webly.data.images import BadImages, EvalTransform, Preprocess, normalize_batch, try_decode
from webly.data.manifest import Manifest
from webly.data.predictions import (
    FEATURES,
    ROW_GROUP,
    FeatureWriter,
    PredictionWriter,
    iter_predictions,
)
from webly.training.checkpoints import load_weights
from webly.training.config import loader_workers
from webly.training.distributed import Dist, init_distributed
from webly.training.models import create_backbone, head_prefix


@dataclass
class PredictConfig:
    split: Literal["train", "val", "test"] = opt("test", "manifest split to predict")
    tta: Literal["center", "flip", "flip_shift", "multiscale"] = opt(
        "center", "test-time augmentation: the image; and its mirror (flip); and both shifted a "
                  "pixel up-left and down-right, weighted half as much (flip_shift: airbench's); "
                  "and both 1.15x larger (multiscale)")
    batch_size: int = opt(128, "images per batch per process")
    top_k: int = opt(50, "classes kept per image, with the leftover mass (all of them when top_k "
                         ">= classes: ensembles are then exact)")
    max_bad_fraction: float = opt(0.01,
                                  "error (after writing the predictions) when more images than "
                                  "this fraction cannot be decoded")
    img_size: int = opt(0, "input size (0: the model's training size)")
    workers: int = opt(-1, "DataLoader workers (-1: what this machine has, at most 4)")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where to predict")
    features: bool = opt(False, "also write features.npy: each image's features (the classifier "
                                "layer's input), float16")

    def validate(self) -> None:
        check_choices(self, "predict")
        if not 0 <= self.max_bad_fraction <= 1:
            raise WeblyError("predict.max_bad_fraction must be within [0, 1]")
        if min(self.batch_size, self.top_k) < 1 or self.img_size < 0 or self.workers < -1:
            raise WeblyError("predict: batch_size and top_k >= 1; img_size >= 0; workers >= 0 "
                             "(-1: automatic)")


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A run directory (model.safetensors + model.json) or a .safetensors file beside its .json."""
    p = Path(path)
    weights = p / "model.safetensors" if p.is_dir() else p
    meta_path = weights.with_suffix(".json")
    if not weights.is_file() or not meta_path.is_file():
        raise WeblyError(f"{p}: expected a run directory with model.safetensors and model.json")
    meta = json.loads(meta_path.read_text())
    model = create_backbone(meta["backbone"], meta["num_classes"])
    model.load_state_dict(load_weights(weights)[0])
    return model.eval(), meta


class _Images(torch.utils.data.Dataset):
    """Images of one split by position; paths stay one Arrow array (shared by forked workers,
    never 16M Python strings per worker)."""

    def __init__(self, root: Path, paths: pa.Array, transform) -> None:  # noqa: ANN001
        self.root, self.paths, self.transform = root, paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img, reason = try_decode(self.root / self.paths[i].as_py())
        if img is None:  # marked in the output, never dropped
            size = self.transform.size
            return torch.zeros(3, size, size, dtype=torch.uint8), i, reason
        return self.transform(img), i, ""


def _views(x: torch.Tensor, tta: str, size: int) -> list[torch.Tensor]:
    views = [x]
    if tta in ("flip", "flip_shift", "multiscale"):
        views.append(x.flip(-1))
    if tta == "flip_shift":
        p = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        s = x.shape[-1]
        for shifted in (p[..., :s, :s], p[..., 2:, 2:]):
            views += [shifted, shifted.flip(-1)]
    if tta == "multiscale":
        big = torch.nn.functional.interpolate(x, scale_factor=1.15, mode="bilinear", antialias=True)
        views += [big, big.flip(-1)]
    return views


def view_sizes(tta: str, size: int) -> list[int]:
    """Side of each view `tta` predicts a `size` image at (what a prediction pass costs), read off
    the views themselves so the count cannot drift from what is predicted."""
    return [v.shape[-1] for v in _views(torch.zeros(1, 3, size, size), tta, size)]


@torch.no_grad()
def probabilities(model: torch.nn.Module, x: torch.Tensor, pre: Preprocess, tta: str,
                  device: torch.device, fmt: torch.memory_format = torch.contiguous_format,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Class probabilities of a uint8 NCHW batch already resized and cropped by `pre`: normalised,
    averaged over the `tta` views. The one forward pass of `predict`, `classify` and `webly.load`,
    so they cannot disagree."""
    x = normalize_batch(x.to(device), pre.mean, pre.std).contiguous(memory_format=fmt)
    views = _views(x, tta, pre.size)
    # flip_shift: the image's pair weighs as much as the two shifted pairs together
    weights = [2.0, 2.0, 1.0, 1.0, 1.0, 1.0] if tta == "flip_shift" else [1.0] * len(views)
    p = None
    for v, w in zip(views, weights, strict=True):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            q = model(v).float().softmax(1) * w
        p = q if p is None else p + q
    return p / sum(weights)


@torch.no_grad()
def predict(model_path: str | Path, manifest_path: str | Path, out_dir: str | Path,
            cfg: PredictConfig) -> dict[str, Any]:
    """Predict one split, writing each batch as it comes (memory: a batch, not the split).
    Under torchrun rank r predicts every world-th image into its own part file; rank 0 merges
    the parts in manifest order."""
    cfg.validate()
    d = init_distributed(cfg.device)
    model, meta = load_model(model_path)
    manifest = Manifest(manifest_path)
    if meta["num_classes"] != manifest.num_classes:
        raise WeblyError(f"{model_path} predicts {meta['num_classes']} classes but {manifest_path} "
                         f"has {manifest.num_classes}: wrong model or manifest")
    table = manifest.read(["id", "path", "split"])
    rows = np.flatnonzero(pc.equal(table["split"], cfg.split).to_numpy(zero_copy_only=False))
    if not len(rows):
        raise WeblyError(f"{manifest_path} has no {cfg.split!r} images")
    mine = rows[d.rank::d.world_size]
    size = cfg.img_size or meta["img_size"]
    C, k = meta["num_classes"], min(cfg.top_k, meta["num_classes"])
    info = {"classes": meta["classes"], "num_classes": C, "model": str(model_path), "tta": cfg.tta,
            "split": cfg.split, "img_size": size}
    out = Path(out_dir)
    part_dir = out / f".part-{d.rank}" if d.enabled else out
    paths = table["path"].take(pa.array(mine)).combine_chunks()
    ids = table["id"].take(pa.array(mine)).combine_chunks()
    bad = BadImages(len(rows), cfg.max_bad_fraction)
    writer = PredictionWriter(part_dir, k, info)
    feats = FeatureWriter(part_dir, len(mine)) if cfg.features else None
    try:
        _predict_into(writer, model, meta, cfg, d, manifest.root, mine, paths, ids, bad, feats)
    except BaseException:
        writer.abort()
        if feats is not None:
            feats.abort()
        raise
    writer.close()
    if feats is not None:
        feats.close()
    if d.enabled:
        dist.barrier()
        if not d.is_primary:
            return {}
        parts = [out / f".part-{r}" for r in range(d.world_size)]
        if cfg.features:
            merge_features(parts, out, len(rows))
        bad.seen = merge_parts(parts, out, k, info)
    bad.check(f"; predictions written to {out} with them marked skipped")
    return {"images": len(rows), "skipped_images": len(bad.seen), "bad_images": bad.counts(),
            "k": k, **{key: v for key, v in info.items() if key != "classes"}}


def _predict_into(writer: PredictionWriter, model: torch.nn.Module, meta: dict[str, Any],
                  cfg: PredictConfig, d: Dist, root: Path, mine: np.ndarray, paths: pa.Array,
                  ids: pa.Array, bad: BadImages, feats: FeatureWriter | None = None) -> None:
    fmt = torch.channels_last if meta.get("channels_last") else torch.contiguous_format
    model = model.to(d.device, memory_format=fmt)
    seen: list[torch.Tensor] = []  # the classifier's input, one entry per view
    if feats is not None:
        model.get_submodule(head_prefix(model)).register_forward_pre_hook(
            lambda _m, args: seen.append(args[0].detach().float().flatten(1)))
    dtype = torch.bfloat16 if d.device.type == "cuda" else None
    pre = Preprocess.from_meta(meta, cfg.img_size)  # the one place prediction reads preprocessing
    images = _Images(root, paths, EvalTransform.of(pre))
    loader = torch.utils.data.DataLoader(images, batch_size=cfg.batch_size,
                                         num_workers=loader_workers(cfg.workers))
    for x, idx, err in progress(loader, desc=f"predict {cfg.split}", unit="batch"):
        seen.clear()
        p = probabilities(model, x, pre, cfg.tta, d.device, fmt, dtype)
        tp, ti = p.cpu().topk(writer.k, dim=1)
        if feats is not None:
            feats.write(idx.numpy(), (sum(seen) / len(seen)).cpu().numpy())
        status = []
        for j, e in zip(idx.tolist(), err, strict=True):
            status.append(f"skipped: {e}" if e else "ok")
            if e:
                bad.add(paths[j].as_py(), e, check=False)
        pos = idx.numpy()  # a sequential loader: positions arrive in order
        writer.write(mine[pos], ids.take(pa.array(pos)), status, ti.numpy(), tp.numpy())
        faults.point("predict.batch")


def merge_parts(parts: list[Path], out: Path, k: int, info: dict[str, Any]) -> dict[str, str]:
    """Interleave per-rank part folders (rank r holds rows r, r + W, ...) into one file in
    manifest order, a row group at a time; return the bad images they marked."""
    writer = PredictionWriter(out, k, info)
    bad: dict[str, str] = {}
    streams = [iter_predictions(p) for p in parts]
    for chunk in zip_longest(*streams):
        got = [c for c in chunk if c is not None]
        rows = np.concatenate([c.rows for c in got])
        order = np.argsort(rows, kind="stable")
        ids = [i for c in got for i in c.ids]
        status = [s for c in got for s in c.status]
        writer.write(rows[order], [ids[i] for i in order], [status[i] for i in order],
                     np.concatenate([c.top_i for c in got])[order],
                     np.concatenate([c.top_p for c in got])[order])
        bad.update({i: s.removeprefix("skipped: ") for i, s in zip(ids, status, strict=True)
                    if s != "ok"})
    writer.close()
    for p in parts:
        shutil.rmtree(p, ignore_errors=True)
    return bad


def merge_features(parts: list[Path], out: Path, n: int) -> None:
    """Interleave the ranks' features.npy (rank r holds rows r, r + W, ...) into one, on disk."""
    writer = FeatureWriter(out, n)
    for r, p in enumerate(parts):
        part = np.load(p / FEATURES, mmap_mode="r")
        for s in range(0, len(part), ROW_GROUP):
            chunk = np.asarray(part[s:s + ROW_GROUP])
            writer.write(np.arange(s, s + len(chunk)) * len(parts) + r, chunk)
    writer.close()


def run_predict(*, model: str, manifest: str, cfg: PredictConfig, out: Path) -> dict[str, Any]:
    """The `predict` stage (under torchrun every rank calls it; rank 0 returns the summary)."""
    return predict(model, manifest, out, cfg)
