"""`webly predict`: batched inference of a trained model over a manifest split.

Output `preds/predictions.parquet`, one row per image of the split in manifest order:
    row (int64 manifest row), id (string), status ("ok" or "skipped: <reason>" for an image that
    could not be decoded: marked, never dropped), topk_idx (list<int32>), topk_prob (list<float16>)
and, when the model has at most `dense_max` classes, `probs.npy`: float16 [N, C] probabilities in
the same row order (what ensembling and pseudo-labelling average). File metadata `webly` holds the
classes, the model, the test-time augmentation and the split.

Test-time augmentation: `center` (resize + centre crop), `flip` (+ horizontal flip),
`multiscale` (flip at the training size and at 1.15x), probabilities averaged.
Under torchrun each rank predicts every world-th image and rank 0 gathers the parts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist

from webly import faults
from webly.config import check_choices, opt
from webly.data.images import BadImages, EvalTransform, normalize_batch, try_decode
from webly.data.manifest import Manifest
from webly.data.predictions import write_predictions
from webly.errors import WeblyError
from webly.progress import progress
from webly.training.distributed import init_distributed
from webly.training.models import create_backbone


@dataclass
class PredictConfig:
    split: Literal["train", "val", "test"] = opt("test", "manifest split to predict")
    tta: Literal["center", "flip", "multiscale"] = opt("center", "test-time augmentation")
    batch_size: int = opt(128, "images per batch per process")
    top_k: int = opt(5, "top classes kept per image")
    dense_max: int = opt(1000, "also write all probabilities (probs.npy) up to this many classes")
    max_bad_fraction: float = opt(0.01,
                                  "error (after writing the predictions) when more images than "
                                  "this fraction cannot be decoded")
    img_size: int = opt(0, "input size (0: the model's training size)")
    workers: int = opt(4, "DataLoader workers")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where to predict")

    def validate(self) -> None:
        check_choices(self, "predict")
        if not 0 <= self.max_bad_fraction <= 1:
            raise WeblyError("predict.max_bad_fraction must be within [0, 1]")
        if min(self.batch_size, self.top_k) < 1 or min(self.img_size, self.workers,
                                                       self.dense_max) < 0:
            raise WeblyError("predict: batch_size and top_k >= 1; img_size, workers, "
                             "dense_max >= 0")


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A run directory (model.safetensors + model.json) or a .safetensors file beside its .json."""
    from safetensors.torch import load_file

    p = Path(path)
    weights = p / "model.safetensors" if p.is_dir() else p
    meta_path = weights.with_suffix(".json")
    if not weights.is_file() or not meta_path.is_file():
        raise WeblyError(f"{p}: expected a run directory with model.safetensors and model.json")
    meta = json.loads(meta_path.read_text())
    model = create_backbone(meta["backbone"], meta["num_classes"])
    state = {k.removeprefix("module."): v for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state)
    return model.eval(), meta


class _Images(torch.utils.data.Dataset):
    def __init__(self, root: Path, paths: list[str], transform) -> None:
        self.root, self.paths, self.transform = root, paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img, reason = try_decode(self.root / self.paths[i])
        if img is None:  # marked in the output, never dropped
            size = self.transform.size
            return torch.zeros(3, size, size, dtype=torch.uint8), i, reason
        return self.transform(img), i, ""


def _views(x: torch.Tensor, tta: str, size: int) -> list[torch.Tensor]:
    views = [x]
    if tta in ("flip", "multiscale"):
        views.append(x.flip(-1))
    if tta == "multiscale":
        big = torch.nn.functional.interpolate(x, scale_factor=1.15, mode="bilinear", antialias=True)
        views += [big, big.flip(-1)]
    return views


@torch.no_grad()
def predict(model_path: str | Path, manifest_path: str | Path, out_dir: str | Path,
            cfg: PredictConfig) -> dict[str, Any]:
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
    fmt = torch.channels_last if meta.get("channels_last") else torch.contiguous_format
    model = model.to(d.device, memory_format=fmt)
    dtype = torch.bfloat16 if d.device.type == "cuda" else None
    paths = table["path"].take(pa.array(mine)).to_pylist()
    images = _Images(manifest.root, paths, EvalTransform(size, meta.get("crop_pct", 0.875)))
    loader = torch.utils.data.DataLoader(images, batch_size=cfg.batch_size, num_workers=cfg.workers)
    C, k = meta["num_classes"], min(cfg.top_k, meta["num_classes"])
    dense = cfg.dense_max >= C
    probs = np.zeros((len(mine), C), np.float16) if dense else None
    top_i = np.zeros((len(mine), k), np.int32)
    top_p = np.zeros((len(mine), k), np.float16)
    status = [""] * len(mine)
    bad = BadImages(len(rows), cfg.max_bad_fraction)
    for x, idx, err in progress(loader, desc=f"predict {cfg.split}", unit="batch"):
        x = normalize_batch(x.to(d.device)).contiguous(memory_format=fmt)
        p = torch.zeros(x.shape[0], C, device=d.device)
        views = _views(x, cfg.tta, size)
        for v in views:
            with torch.autocast(d.device.type, dtype=dtype or torch.float32,
                                enabled=dtype is not None):
                p += model(v).float().softmax(1)
        p = (p / len(views)).cpu()
        tp, ti = p.topk(k, dim=1)
        top_i[idx.numpy()], top_p[idx.numpy()] = ti.numpy(), tp.numpy().astype(np.float16)
        if dense:
            probs[idx.numpy()] = p.numpy().astype(np.float16)
        for j, e in zip(idx.tolist(), err, strict=True):
            status[j] = f"skipped: {e}" if e else "ok"
            if e:
                bad.add(paths[j], e, check=False)
        faults.point("predict.batch")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    part = {"row": mine, "ids": table["id"].take(pa.array(mine)).to_pylist(), "status": status,
            "top_i": top_i, "top_p": top_p, "probs": probs}
    if d.enabled:
        gathered = [None] * d.world_size
        dist.all_gather_object(gathered, part)
        if not d.is_primary:
            return {}
        part = _merge_parts(gathered)
    info = {"classes": meta["classes"], "num_classes": C, "model": str(model_path), "tta": cfg.tta,
            "split": cfg.split, "img_size": size, "dense": dense}
    write_predictions(out, part, info)
    if d.enabled:  # every rank's bad files, as the gathered rows mark them
        bad.seen = {str(i): s.removeprefix("skipped: ") for i, s in zip(part["ids"], part["status"],
                                                                        strict=True)
                    if s != "ok"}
    bad.check(f"; predictions written to {out} with them marked skipped")
    return {"images": len(part["row"]), "skipped_images": len(bad.seen), "bad_images": bad.counts(),
            **{k: v for k, v in info.items() if k != "classes"}}


def _merge_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    order = np.argsort(np.concatenate([p["row"] for p in parts]), kind="stable")
    cat = lambda key: np.concatenate([np.asarray(p[key]) for p in parts])[order]  # noqa: E731
    return {"row": cat("row"), "ids": cat("ids").tolist(), "status": cat("status").tolist(),
            "top_i": cat("top_i"), "top_p": cat("top_p"),
            "probs": cat("probs") if parts[0]["probs"] is not None else None}


def run_predict(*, model: str, manifest: str, cfg: PredictConfig, out: Path) -> dict[str, Any]:
    """The `predict` stage (under torchrun every rank calls it; rank 0 returns the summary)."""
    return predict(model, manifest, out, cfg)
