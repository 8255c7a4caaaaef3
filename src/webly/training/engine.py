"""The one training loop behind `webly pretrain --set wt|lw` and `webly finetune`.

SGD + momentum (no weight decay on norms and biases); lr schedules as pure functions of the
optimizer step (the seed's step decay: 0.01, x0.1 every 90 epochs; cosine with warmup; constant);
gradient accumulation (`accum_steps`, DDP `no_sync` on the non-final micro-steps, loss divided by
`accum_steps`); bf16 autocast on GPUs or fp16 with a GradScaler; channels_last per backbone; uint8
batches normalised on the device; optional torch.compile, EMA and SyncBN; DDP under torchrun.

Determinism and resumption: the sampler's stream is a function of (seed, epoch), each sample's
augmentation of (seed, epoch, position), and checkpoints (every `ckpt_every_steps` optimizer steps
and each epoch, atomic) hold model, optimizer, scaler, EMA, position and RNG state. `--resume`
continues exactly: on a CPU the final weights equal an uninterrupted run's, bit for bit.

Large-resolution finetuning (the seed's trick) is a second run with `continue_from` the converged
checkpoint, a larger `img_size` and `schedule: constant`: it starts at the lr where the first left.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from webly import faults
from webly.config import opt
from webly.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadImages,
    EvalTransform,
    TrainTransform,
    normalize_batch,
)
from webly.errors import WeblyError
from webly.files import atomic_path, write_atomic
from webly.progress import progress
from webly.training import checkpoints, losses
from webly.training.distributed import Dist, all_reduce_sum, init_distributed
from webly.training.models import (
    create_backbone,
    head_prefix,
    load_all_but_head,
    uses_channels_last,
)
from webly.training.sampling import BalancedSampler, ShuffleSampler
from webly.training.trainsets import TargetDataset, TrainData, padded_targets


@dataclass
class TrainConfig:
    backbone: str = opt("resnest101e", "timm model name (built without downloads)")
    pretrained: str | None = opt(None, "webly checkpoint to finetune from: all weights but the last layer")
    continue_from: str | None = opt(None, "checkpoint to continue from with all weights (large-resolution stage)")
    img_size: int = opt(224, "training crop size")
    crop_scale: float = opt(0.08, "smallest area fraction of the random-resized crop (0.08: ImageNet's; larger for 32x32 images)")
    crop_pct: float = opt(0.875, "evaluation centre crop: resize to img_size/crop_pct, crop img_size (1.0: whole image)")
    epochs: int = opt(180, "epochs (the seed decays lr every 90)")
    samples_per_epoch: int = opt(0, "samples drawn per epoch (0: the number of training images)")
    batch_size: int = opt(256, "global batch per micro-step, split over ranks (the seed's 256)")
    accum_steps: int = opt(8, "micro-steps per optimizer step (the seed accumulates 8)")
    lr: float = opt(0.01, "base learning rate (the seed's 0.01)")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(1e-4, "weight decay (not on norms and biases)")
    schedule: str = opt("step", "step | cosine | constant")
    step_epochs: int = opt(90, "step schedule: decay every this many epochs")
    gamma: float = opt(0.1, "step schedule: decay factor")
    warmup_epochs: float = opt(0.0, "linear warmup (cosine and step)")
    shards: str | None = opt(None, "read training images from `webly shard` tar shards in this folder")
    sampler: str = opt("balanced", "balanced (class/keyword-balanced) | shuffle (natural)")
    balance: float = opt(1.0, "balanced sampler: 1 uniform over classes, 0 natural frequencies")
    loss: str = opt("auto", "auto | ce | softmax_sum (WT/LW) | bce (WT comparison)")
    normalise_targets: bool = opt(False, "divide the multi-label loss by the number of targets")
    label_smoothing: float = opt(0.0, "finetuning cross-entropy label smoothing")
    max_targets: int = opt(32, "targets kept per image (largest weights first)")
    amp: str = opt("auto", "auto (bf16 on GPU, off on CPU) | bf16 | fp16 | off")
    channels_last: str = opt("auto", "auto (all but ResNeSt) | on | off")
    compile: bool = opt(False, "torch.compile the model")
    ema: float = opt(0.0, "EMA decay of the weights (0: off)")
    sync_bn: bool = opt(False, "SyncBatchNorm across ranks")
    drop_rate: float = opt(0.0, "dropout before the classifier")
    workers: int = opt(4, "DataLoader worker processes per rank")
    seed: int = opt(0, "random seed")
    ckpt_every_steps: int = opt(0, "also checkpoint every this many optimizer steps (0: epochs only)")
    keep_last: int = opt(3, "step checkpoints kept")
    max_steps: int = opt(0, "stop after this many optimizer steps (0: no limit)")
    max_bad_fraction: float = opt(0.01, "stop when more than this fraction of the images cannot be decoded")
    log_every: int = opt(10, "optimizer steps between metric lines")
    device: str = opt("auto", "auto | cpu | cuda")
    dist_timeout_s: int = opt(600, "a dead rank fails the job after this many seconds")
    tensorboard: bool = opt(True, "write TensorBoard scalars under RUN/tb")

    def validate(self) -> None:
        checks = [
            (self.schedule in ("step", "cosine", "constant"), "schedule must be step, cosine or constant"),
            (self.sampler in ("balanced", "shuffle"), "sampler must be balanced or shuffle"),
            (self.loss in ("auto", "ce", "softmax_sum", "bce"), "loss must be auto, ce, softmax_sum or bce"),
            (self.amp in ("auto", "bf16", "fp16", "off"), "amp must be auto, bf16, fp16 or off"),
            (self.channels_last in ("auto", "on", "off"), "channels_last must be auto, on or off"),
            (min(self.img_size, self.epochs, self.batch_size, self.accum_steps) >= 1,
             "img_size, epochs, batch_size and accum_steps must be positive"),
            (0 < self.crop_scale <= 1 and 0 < self.crop_pct <= 1, "crop_scale and crop_pct must be in (0, 1]"),
            (0 <= self.max_bad_fraction <= 1, "max_bad_fraction must be within [0, 1]"),
            (self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0, "lr > 0, 0 <= momentum < 1"),
            (0 <= self.balance <= 1 and 0 <= self.ema < 1, "balance in [0, 1], ema in [0, 1)"),
            (min(self.samples_per_epoch, self.max_steps, self.ckpt_every_steps, self.workers) >= 0,
             "counts must not be negative"),
        ]
        for ok, msg in checks:
            if not ok:
                raise WeblyError(f"train: {msg}")


def per_rank_batch(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise WeblyError(f"batch_size {batch_size} does not divide over {world_size} ranks: "
                         f"use a multiple of {world_size}")
    return batch_size // world_size


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int, base_lr: float) -> float:
    """Learning rate for optimizer step `step` (0-based), a pure function (resumption needs no state)."""
    epoch = step / steps_per_epoch
    warm = cfg.warmup_epochs
    if warm and epoch < warm:
        return base_lr * (epoch + 1 / steps_per_epoch) / warm
    if cfg.schedule == "step":
        return base_lr * cfg.gamma ** int(epoch // cfg.step_epochs)
    if cfg.schedule == "cosine":
        t = (epoch - warm) / max(cfg.epochs - warm, 1e-9)
        return base_lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return base_lr


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # norms and biases are 1-D
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[cfg.amp]


def loss_fn(cfg: TrainConfig, task: str):
    kind = cfg.loss if cfg.loss != "auto" else ("ce" if task == "finetune" else "softmax_sum")
    if kind == "ce":
        return lambda logits, i, w: losses.cross_entropy(logits, i, w, cfg.label_smoothing)
    if kind == "bce":
        return losses.multilabel_bce
    return lambda logits, i, w: losses.weighted_softmax_ce(logits, i, w, cfg.normalise_targets)


class SeededSampler(torch.utils.data.Sampler):
    """Pairs each drawn sample with a seed fixed by (seed, epoch, its position in the epoch's
    global stream), so its augmentation is the same whatever the world size or a resume."""

    def __init__(self, sampler: BalancedSampler, seed: int) -> None:
        self.sampler, self.seed = sampler, seed

    def __iter__(self):
        s = self.sampler
        for k, pos in enumerate(s):
            global_pos = (s.start + k) * s.world_size + s.rank
            yield pos, ((self.seed * 1_000_003 + s.epoch) * 1_000_000_007 + global_pos) % (2**63)

    def __len__(self) -> int:
        return len(self.sampler)


def build_model(cfg: TrainConfig, num_classes: int, d: Dist, fmt: torch.memory_format
                ) -> tuple[nn.Module, dict[str, Any]]:
    model = create_backbone(cfg.backbone, num_classes, drop_rate=cfg.drop_rate)
    report: dict[str, Any] = {}
    if cfg.pretrained:
        state = checkpoints.load(cfg.pretrained)
        r = load_all_but_head(model, state["model"])
        report = {"loaded_tensors": r.loaded, "reinitialised": r.reinitialised}
    if cfg.continue_from:
        state = checkpoints.load(cfg.continue_from)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise WeblyError(f"{cfg.continue_from} does not fit {cfg.backbone} with {num_classes} "
                             f"classes: {str(e).splitlines()[0]}") from None
        report = {"continued_from": cfg.continue_from, "lr": state.get("last_lr")}
    if cfg.sync_bn and d.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(d.device, memory_format=fmt), report


@torch.no_grad()
def evaluate(model: nn.Module, data: TrainData, cfg: TrainConfig, d: Dist, fmt) -> dict[str, float]:
    """top-1/top-5 on the labelled validation rows (this rank's share, summed over ranks)."""
    ok = data.val_labels >= 0
    if not ok.any():
        return {}
    rows, labels = data.val_rows[ok][d.rank::d.world_size], data.val_labels[ok][d.rank::d.world_size]
    ids = labels[:, None]
    ds = TargetDataset(data.manifest, rows, ids, np.ones_like(ids, np.float32),
                       EvalTransform(cfg.img_size, cfg.crop_pct), substitute=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=max(1, cfg.batch_size // d.world_size),
                                         num_workers=cfg.workers)
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=d.device)
    for x, i, _, bad_pos, _ in loader:  # bad validation images are left out of the counts
        x = normalize_batch(x.to(d.device)).contiguous(memory_format=fmt)
        good = bad_pos < 0
        top5 = model(x).float().topk(min(5, data.num_classes), dim=1).indices.cpu()[good]
        i = i[good][:, :1]
        counts += torch.tensor([(top5[:, :1] == i).sum(), (top5 == i).any(1).sum(), len(i)],
                               dtype=torch.float64, device=d.device)
    model.train()
    all_reduce_sum(counts, d)
    return {"val_top1": float(counts[0] / counts[2]), "val_top5": float(counts[1] / counts[2])}


# Options a resumed run must share with its checkpoint: they fix the model, the sample stream and
# the step count. Others (epochs, lr, workers, logging...) may change, with a warning.
RESUME_MUST_MATCH = ("task", "backbone", "img_size", "batch_size", "accum_steps", "samples_per_epoch",
                     "sampler", "balance", "seed", "max_targets", "shards", "loss", "ema")


def check_resume_config(saved: dict[str, Any], now: dict[str, Any], num_classes: int,
                        saved_classes: int, force: bool) -> list[str]:
    """Differences between a checkpoint's config and this run's: an error for incompatible ones
    (unless `force`), returned as warnings otherwise."""
    diffs = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}
    if saved_classes != num_classes:
        raise WeblyError(f"cannot resume: the checkpoint has {saved_classes} classes, this data {num_classes}")
    bad = {k: v for k, v in diffs.items() if k in RESUME_MUST_MATCH}
    if bad and not force:
        raise WeblyError("cannot resume from a checkpoint made with another config: " + "; ".join(
            f"{k} {a!r} -> {b!r}" for k, (a, b) in bad.items()) + " (use --force to resume anyway)")
    return [f"{k}: {a!r} -> {b!r}" for k, (a, b) in diffs.items()]


def train(data: TrainData, cfg: TrainConfig, run_dir: str | Path, *, task: str,
          resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Train and return a summary; outputs in `run_dir` (see docs/training.md)."""
    cfg.validate()
    run = Path(run_dir)
    d = init_distributed(cfg.device, cfg.dist_timeout_s)
    per_rank = per_rank_batch(cfg.batch_size, d.world_size)
    torch.manual_seed(cfg.seed)
    n_samples = cfg.samples_per_epoch or len(data.rows)
    micro_per_epoch = n_samples // cfg.batch_size
    steps_per_epoch = micro_per_epoch // cfg.accum_steps
    if steps_per_epoch < 1:
        raise WeblyError(f"an epoch of {n_samples} samples holds no optimizer step of "
                         f"{cfg.batch_size} x {cfg.accum_steps}: lower batch_size/accum_steps or "
                         "raise samples_per_epoch")
    fmt = torch.channels_last if uses_channels_last(cfg.backbone, cfg.channels_last) else torch.contiguous_format
    model, transfer = build_model(cfg, data.num_classes, d, fmt)
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    dtype = autocast_dtype(cfg, d.device)
    scaler = torch.amp.GradScaler(d.device.type, enabled=dtype == torch.float16)
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema))
           if cfg.ema else None)
    base_lr = cfg.lr
    if cfg.continue_from and cfg.schedule == "constant":
        base_lr = transfer.get("lr") or cfg.lr  # where the continued run left off
    # `epoch` counts finished epochs; every epoch *number* webly writes or prints is 1-based (the
    # epoch a step belongs to; an epoch cut short by max_steps keeps its number); best epoch 0: none
    epoch, step_in_epoch, step, best = 0, 0, 0, {"val_top1": -1.0, "epoch": 0}
    bad_seen: dict[str, str] = {}
    if resume and checkpoints.latest(run):
        ck = checkpoints.load(checkpoints.latest(run))
        for w in check_resume_config(ck.get("config", {}), {"task": task, **asdict(cfg)}, data.num_classes,
                                     ck.get("num_classes", data.num_classes), force):
            if d.is_primary:
                print(f"webly: resuming with a changed option: {w}", file=sys.stderr)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("ema"):
            ema.load_state_dict(ck["ema"])
        epoch, step_in_epoch, step, best = ck["epoch"], ck["step_in_epoch"], ck["global_step"], ck["best"]
        bad_seen = ck.get("bad_images", {})
        torch.set_rng_state(ck["rng"]["torch"])
        if d.device.type == "cuda" and "cuda" in ck["rng"]:
            torch.cuda.set_rng_state(ck["rng"]["cuda"], d.device)
    net = model
    if cfg.compile:
        net = torch.compile(net)
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[d.local_rank] if d.device.type == "cuda" else None)

    ids, ws = padded_targets(data.targets, cfg.max_targets)
    dataset = TargetDataset(data.manifest, data.rows, ids, ws, TrainTransform(cfg.img_size, (cfg.crop_scale, 1.0)))
    run.mkdir(parents=True, exist_ok=True)
    bad_images = BadImages(len(data.rows), cfg.max_bad_fraction, run / "bad_images.tsv" if d.is_primary else None, bad_seen)
    stream = shard_stream(data, cfg, ids, ws, d) if cfg.shards else None
    if cfg.sampler == "balanced":
        sampler = BalancedSampler(data.membership, n_samples, balance=cfg.balance, seed=cfg.seed,
                                  rank=d.rank, world_size=d.world_size)
    else:
        sampler = ShuffleSampler(len(data.rows), n_samples, seed=cfg.seed, rank=d.rank,
                                 world_size=d.world_size)
    criterion = loss_fn(cfg, task)
    log = MetricsLog(run, d.is_primary, cfg.tensorboard)
    if d.is_primary:
        write_atomic(run / "train.config.json", json.dumps({"task": task, **asdict(cfg)}, indent=1))

    def state(last_lr: float) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if d.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(d.device)
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema else {},
                "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": step, "best": best,
                "last_lr": last_lr, "rng": rng, "config": {"task": task, **asdict(cfg)},
                "bad_images": bad_images.seen,
                "classes": list(data.class_names), "num_classes": data.num_classes}

    t_start, lr, metrics, last_loss = time.time(), base_lr, {}, float("nan")
    done = False
    while epoch < cfg.epochs and not done:
        sampler.set_epoch(epoch, start=step_in_epoch * cfg.accum_steps * per_rank)
        common = dict(batch_size=per_rank, drop_last=True, num_workers=cfg.workers,
                      pin_memory=d.device.type == "cuda", prefetch_factor=4 if cfg.workers else None)
        if stream is not None:  # shards: the epoch's stream, passed over as often as it takes
            loader = stream_batches(stream, epoch, common)
        else:
            loader = torch.utils.data.DataLoader(dataset, sampler=SeededSampler(sampler, cfg.seed),
                                                 **common)
        micro_left = (steps_per_epoch - step_in_epoch) * cfg.accum_steps
        t0, seen, micro = time.time(), 0, 0
        nonfinite = torch.zeros((), dtype=torch.bool, device=d.device)
        for x, ti, tw, bad_pos, reasons in progress(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                                                             total=micro_left, unit="batch"):
            if micro == micro_left:
                break
            if bool((bad_pos >= 0).any()):
                for p, r in zip(bad_pos.tolist(), reasons, strict=True):
                    if p >= 0:
                        bad_images.add(dataset.path(p), r)
            x = normalize_batch(x.to(d.device, non_blocking=True)).contiguous(memory_format=fmt)
            ti, tw = ti.to(d.device, non_blocking=True), tw.to(d.device, non_blocking=True)
            last_micro = (micro + 1) % cfg.accum_steps == 0
            lr = lr_at(cfg, step, steps_per_epoch, base_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            sync = net.no_sync() if d.enabled and not last_micro else contextlib.nullcontext()
            with sync, torch.autocast(d.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = criterion(net(x), ti, tw)
            nonfinite = ~torch.isfinite(loss.detach()) | nonfinite  # no host sync per micro-step
            scaler.scale(loss / cfg.accum_steps).backward()
            micro += 1
            seen += x.shape[0] * d.world_size
            if not last_micro:
                continue
            bad, last_loss = torch.stack([nonfinite.float(), loss.detach().float()]).tolist()  # one sync a step
            if bad:
                raise WeblyError(f"loss is not finite at step {step} (epoch {epoch}); stopped. The last "
                                 f"good checkpoint is {checkpoints.latest(run) or 'none (none written yet)'}")
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            nonfinite.zero_()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            step_in_epoch += 1
            faults.point("train.step")
            if step % cfg.log_every == 0:  # every rank reaches this: the mean over ranks is logged
                mean_loss = all_reduce_sum(loss.detach().float().clone(), d).item() / d.world_size
                log.step(step, epoch + 1, mean_loss, lr, seen / (time.time() - t0))
            if cfg.ckpt_every_steps and step % cfg.ckpt_every_steps == 0 and d.is_primary:
                checkpoints.save_training(state(lr), run, cfg.keep_last)
            if cfg.max_steps and step >= cfg.max_steps:
                done = True
                break
        if not done and micro < micro_left:  # a sampler must fill its epoch; never spin on empty ones
            raise WeblyError(f"epoch {epoch} ended after {micro} of {micro_left} micro-steps")
        number = epoch + 1  # the epoch just run, finished or cut short by max_steps
        if step_in_epoch == steps_per_epoch:
            epoch, step_in_epoch = epoch + 1, 0
        metrics = evaluate(ema.module if ema else model, data, cfg, d, fmt)
        is_best = bool(metrics) and metrics["val_top1"] > best["val_top1"]
        if is_best:
            best = {"val_top1": metrics["val_top1"], "epoch": number}
        log.epoch(number, {"train_loss": last_loss, "lr": lr, **metrics})
        if d.is_primary:
            checkpoints.save_training(state(lr), run, cfg.keep_last, best=is_best)
    summary = {"task": task, "epochs_done": epoch, "steps": step, "final_lr": lr, **metrics,
               "best": best, "bad_images": bad_images.counts(),
               "seconds": round(time.time() - t_start, 1), "world_size": d.world_size,
               **({"transfer": transfer} if transfer else {})}
    if d.is_primary:
        export(ema.module if ema else model, run, cfg, data, task)
        log.close()
        plot_curves(run)
        write_atomic(run / "train.summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def shard_stream(data: TrainData, cfg: TrainConfig, ids: np.ndarray, ws: np.ndarray, d: Dist):
    """Shards -> (image, ids, weights), class-balanced by repeat factors when sampler=balanced.
    Samples whose manifest row is not a training row of this task (no keywords, say) are dropped.
    Resuming a shard-fed run restarts the interrupted epoch's stream (not bit-exact)."""
    import webdataset as wds

    from webly.data.shards import shard_pipeline, shard_urls
    from webly.training.sampling import repeat_factors

    rows = data.rows
    factors = (repeat_factors(np.diff(data.membership.indptr), data.membership, cfg.balance)
               if cfg.sampler == "balanced" else np.ones(len(rows)))

    def position(rec: dict[str, Any]) -> int:
        p = int(np.searchsorted(rows, rec["row"]))
        return p if p < len(rows) and rows[p] == rec["row"] else -1

    def factor(rec: dict[str, Any]) -> float:
        p = position(rec)
        return float(factors[p]) if p >= 0 else 0.0

    def to_targets(sample):
        img, rec = sample
        p = position(rec)
        return img, torch.from_numpy(ids[p]), torch.from_numpy(ws[p]), -1, ""  # shards hold good images only

    pipe = shard_pipeline(shard_urls(cfg.shards, "train"), transform=TrainTransform(cfg.img_size, (cfg.crop_scale, 1.0)),
                          seed=cfg.seed, rank=d.rank, world_size=d.world_size, repeat=factor)
    pipe.append(wds.map(to_targets))
    return pipe


def stream_batches(pipe, epoch: int, loader_kwargs: dict[str, Any]):
    """Batches from a shard stream for one epoch; the caller stops after its micro-steps."""
    for rep in range(1_000_000):
        pipe.shard_list.set_epoch(epoch * 1_000_000 + rep)
        got = False
        for batch in torch.utils.data.DataLoader(pipe, **loader_kwargs):
            got = True
            yield batch
        if not got:
            raise WeblyError("the shard stream yields no training samples (wrong --shards folder?)")


def export(model: nn.Module, run: Path, cfg: TrainConfig, data: TrainData, task: str) -> None:
    """model.safetensors + model.json: what prediction needs, no pickles."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_atomic(run / "model.json", json.dumps({
        "backbone": cfg.backbone, "task": task, "num_classes": data.num_classes,
        "classes": list(data.class_names), "img_size": cfg.img_size, "crop_pct": cfg.crop_pct, "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD, "channels_last": uses_channels_last(cfg.backbone, cfg.channels_last),
        "classifier": head_prefix(model)}, indent=1))


class MetricsLog:
    """metrics.jsonl (every step line and epoch line) and TensorBoard scalars, primary rank only."""

    def __init__(self, run: Path, primary: bool, tensorboard: bool) -> None:
        self.primary = primary
        # held open for the whole run (closed in close()); appending keeps resumed runs in one log
        self.file = open(run / "metrics.jsonl", "a") if primary else None  # noqa: SIM115
        self.tb = None
        if primary and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"))

    def _write(self, rec: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()

    def step(self, step: int, epoch: int, loss: float, lr: float, img_s: float) -> None:
        self._write({"step": step, "epoch": epoch, "loss": loss, "lr": lr, "img_s": round(img_s, 1),
                     "t": round(time.time(), 3)})
        if self.tb:
            for k, v in (("train/loss", loss), ("train/lr", lr), ("train/img_s", img_s)):
                self.tb.add_scalar(k, v, step)

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        self._write({"epoch_end": epoch, **values})
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(f"epoch/{k}", v, epoch)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


def plot_curves(run: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in recs if "step" in r]
    epochs = [r for r in recs if "epoch_end" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot([r["step"] for r in steps], [r["loss"] for r in steps])
    a.set(xlabel="optimizer step", ylabel="training loss", title="Loss")
    if epochs and "val_top1" in epochs[0]:
        b.plot([r["epoch_end"] for r in epochs], [r["val_top1"] for r in epochs], "o-", label="top-1")
        b.plot([r["epoch_end"] for r in epochs], [r["val_top5"] for r in epochs], "s-", label="top-5")
        b.legend()
    b.set(xlabel="epoch", ylabel="validation accuracy", title="Validation")
    fig.tight_layout()
    with atomic_path(run / "training_curves.png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


__all__ = ["TrainConfig", "train", "lr_at", "param_groups"]
