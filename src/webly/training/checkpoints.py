"""Training checkpoints: atomic, loadable without unpickling code, pruned to the last K.

A checkpoint is a dict of tensors and plain values saved with `torch.save` to a temp file and
renamed into place, so `last.pt` is always a whole checkpoint; a failed write (disk full, read-only
folder) leaves the previous one intact and raises a clear error. Loading uses
`torch.load(weights_only=True)`: a checkpoint cannot run code.

Keys: model, optimizer, scaler, ema (state dicts); epoch, step_in_epoch, global_step; rng (torch
CPU, and CUDA when present); best (metric, epoch); config (the resolved TrainConfig); classes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from webly.core import faults
from webly.core.errors import WeblyError
from webly.core.files import atomic_path, write_atomic
from webly.data.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess, resize_for
from webly.training.models import head_prefix, uses_channels_last

if TYPE_CHECKING:
    from webly.training.config import TrainConfig
    from webly.training.trainsets import TrainData


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except OSError as e:
        raise WeblyError(f"could not write checkpoint {path} ({e.strerror or e}); "
                         "the previous checkpoint is intact") from None


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise WeblyError(f"checkpoint not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that wants to run code, or a truncated file
        raise WeblyError(f"{p}: not a loadable webly checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from None


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model weights, the rest of the checkpoint) from what a user has at hand: a training run
    folder (its ckpt/last.pt, else its model.safetensors), a .safetensors file, a webly
    checkpoint, or a plain state dict saved with torch.save (a dict of tensors, or one under
    "state_dict", as other trainers write). Anything else is a one-line error naming what was
    expected."""
    p = Path(path)
    if p.is_dir():
        found = [c for c in (p / "ckpt" / "last.pt", p / "model.safetensors") if c.is_file()]
        if not found:
            raise WeblyError(f"{p}: neither ckpt/last.pt nor model.safetensors in it: not a "
                             "training run folder")
        p = found[0]
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not p.is_file():
            raise WeblyError(f"weights not found: {p}")
        try:
            state = load_file(str(p))
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's wrong input
            raise WeblyError(f"{p}: not a readable safetensors file ({type(e).__name__})") from None
        return _unwrapped(state), {}
    ck = load(p)
    if isinstance(ck, dict) and isinstance(ck.get("model"), dict):
        return ck["model"], ck
    state = ck.get("state_dict", ck) if isinstance(ck, dict) else None
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        return _unwrapped(state), {}
    raise WeblyError(f"{p}: no model weights in it; give a training run folder, a .safetensors "
                     "file, a webly checkpoint or a state dict saved with torch.save")


def _unwrapped(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as the bare model names them (DDP's and DataParallel's `module.` prefix dropped)."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def pretrained_weights(spec: str, backbone: str) -> tuple[dict[str, torch.Tensor], str]:
    """The weights `--pretrained` names, and where they came from (recorded in the run): a path
    (anything `load_weights` reads), or a timm model name, optionally with its pretrained tag
    (`resnet50`, `resnet50.a1_in1k`, `timm:resnet50`), fetched through timm's own hub support:
    that needs the network, and without it the error names the local-file alternative."""
    import timm

    p = Path(spec)
    if p.exists() or p.suffix in (".pt", ".pth", ".bin", ".safetensors") or "/" in spec:
        return load_weights(p)[0], f"file {p.resolve()}"
    name = spec.removeprefix("timm:")
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        raise WeblyError(f"--pretrained {spec}: no such file or folder, and not a timm model name")
    if arch != backbone.split(".")[0]:
        raise WeblyError(f"--pretrained {spec} holds {arch}'s weights; train --backbone {arch} "
                         f"with it (not {backbone})")
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as e:  # noqa: BLE001 - no network, no such tag, a hub error: one line
        raise WeblyError(f"--pretrained {spec}: timm could not fetch its weights "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
                         "; without a network, give a local file: --pretrained "
                         "weights.safetensors (or a state dict .pt)") from None
    return _unwrapped(model.state_dict()), f"timm {name} (timm's pretrained weights)"


def stream_after(ck: dict[str, Any]) -> int:
    """The data-stream epoch after checkpoint `ck`'s run: where a run continued from it starts, so
    that a chain of runs sees new shuffles and augmentations, as one longer run would, instead
    of replaying its parent's (0 for plain weights, which carry no position)."""
    if "epoch" not in ck:
        return 0
    return int(ck.get("stream_start", 0)) + int(ck["epoch"]) + bool(ck.get("step_in_epoch"))


def latest(run_dir: Path) -> Path | None:
    last = run_dir / "ckpt" / "last.pt"
    return last if last.is_file() else None


def keep_last(run_dir: Path, k: int) -> None:
    steps = sorted((run_dir / "ckpt").glob("step-*.pt"))
    for old in steps[: max(0, len(steps) - k)]:
        old.unlink(missing_ok=True)


def save_training(state: dict[str, Any], run_dir: Path, keep: int, *, best: bool = False) -> Path:
    """Write step-NNNNNNNN.pt, point last.pt at it (copy), keep the newest `keep`."""
    ck = run_dir / "ckpt"
    step_path = ck / f"step-{state['global_step']:08d}.pt"
    save_atomic(state, step_path)
    try:
        for name in ("last.pt", "best.pt") if best else ("last.pt",):
            with atomic_path(ck / name) as tmp:
                shutil.copyfile(step_path, tmp)
    except OSError as e:
        raise WeblyError(f"could not update {ck}/last.pt ({e.strerror or e}); "
                         "the previous checkpoint is intact") from None
    keep_last(run_dir, keep)
    faults.point("train.ckpt")
    return step_path


def preprocess_of(cfg: TrainConfig) -> Preprocess:
    """The evaluation preprocessing of a training config (validation and model.json)."""
    return Preprocess(cfg.img_size, resize_for(cfg.augment), cfg.crop_pct)


def export(model: nn.Module, run: Path, cfg: TrainConfig, data: TrainData, task: str) -> None:
    """model.safetensors + model.json: what prediction needs, no pickles."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_atomic(run / "model.json", json.dumps({
        "backbone": cfg.backbone, "task": task, "num_classes": data.num_classes,
        "classes": list(data.class_names), "img_size": cfg.img_size, "crop_pct": cfg.crop_pct,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD, "preprocess": preprocess_of(cfg).to_json(),
        "channels_last": uses_channels_last(cfg.backbone, cfg.channels_last),
        "classifier": head_prefix(model)}, indent=1))
