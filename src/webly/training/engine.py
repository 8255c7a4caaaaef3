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

Large-resolution finetuning (the seed's trick): `continue_from` the converged checkpoint, a larger
`img_size`, `schedule: constant`: it starts at the lr and after the data epochs where that left.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from webly.core import faults
from webly.core.errors import WeblyError
from webly.core.files import write_atomic
from webly.core.progress import progress
from webly.data.images import (
    BadImages,
    PadCropTransform,
    TrainTransform,
    normalize_batch,
)
from webly.training import checkpoints
from webly.training.config import (
    TrainConfig,
    autocast_dtype,
    check_resume_config,
    lr_at,
    per_rank_batch,
)
from webly.training.distributed import Dist, all_reduce_sum, init_distributed
from webly.training.logs import MetricsLog, plot_curves
from webly.training.models import (
    create_backbone,
    load_all_but_head,
    param_groups,
    uses_channels_last,
)
from webly.training.plan import TrainPlan, out_of_time, plan_of, schedule_step
from webly.training.sampling import BalancedSampler, SeededSampler, ShuffleSampler
from webly.training.tasks import Batch, Task, make_task
from webly.training.trainsets import (
    TargetDataset,
    TrainData,
    make_loader,
    sparse_targets,
    train_images,
    unlabeled_images,
)
from webly.training.validation import validate
from webly.training.weights import LOOKAHEAD_EVERY, averaged_copy, init_from_data, pull_to_average


def build_model(cfg: TrainConfig, num_classes: int, d: Dist, fmt: torch.memory_format
                ) -> tuple[nn.Module, dict[str, Any]]:
    model = create_backbone(cfg.backbone, num_classes, drop_rate=cfg.drop_rate)
    report: dict[str, Any] = {}
    if cfg.pretrained:
        weights, source = checkpoints.pretrained_weights(cfg.pretrained, cfg.backbone)
        r = load_all_but_head(model, weights)
        report = {"pretrained_from": source, "loaded_tensors": r.loaded,
                  "reinitialised": r.reinitialised}
    if cfg.continue_from:
        weights, state = checkpoints.load_weights(cfg.continue_from)
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise WeblyError(f"{cfg.continue_from} does not fit {cfg.backbone} with {num_classes} "
                             f"classes: {str(e).splitlines()[0]}") from None
        report = {"continued_from": cfg.continue_from, "lr": state.get("last_lr"),
                  "stream_start": checkpoints.stream_after(state)}
    if cfg.sync_bn and d.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(d.device, memory_format=fmt), report


@dataclass
class TrainState:
    """Everything a run holds. The counters and what `checkpoint()` returns are all a resume needs:
    `epoch` counts finished epochs, `step_in_epoch` the optimizer steps into the next one."""

    cfg: TrainConfig
    task: str
    run: Path
    d: Dist
    data: TrainData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: nn.Module | None
    objective: Task
    dataset: TargetDataset
    sampler: BalancedSampler | ShuffleSampler
    bad_images: BadImages
    fmt: torch.memory_format
    dtype: torch.dtype | None
    per_rank: int
    steps_per_epoch: int
    base_lr: float
    transfer: dict[str, Any]
    plan: TrainPlan | None = None  # what the run will do, printed before it starts
    lookahead: dict[str, torch.Tensor] | None = None  # the running average (cfg.lookahead)
    net: nn.Module | None = None  # the model as run: compiled and/or DDP-wrapped (`wrap`)
    log: MetricsLog | None = None
    stream_start: int = 0  # the data epoch at this run's epoch 0 (checkpoints.stream_after)
    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"val_top1": -1.0, "epoch": 0})
    lr: float = 0.0
    last_loss: float = float("nan")
    metrics: dict[str, float] = field(default_factory=dict)
    t_start: float = field(default_factory=lambda: time.time())
    trained_s: float = 0.0  # seconds trained before this process (a resumed run's)

    def elapsed(self) -> float:
        """Seconds this run has trained, validation included, across resumptions."""
        return self.trained_s + time.time() - self.t_start

    @property
    def config(self) -> dict[str, Any]:
        return {"task": self.task, **asdict(self.cfg)}

    def checkpoint(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.d.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.d.device)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema else {},
                "lookahead": self.lookahead or {},
                "task_state": self.objective.state_dict(), "epoch": self.epoch,
                "stream_start": self.stream_start,
                "step_in_epoch": self.step_in_epoch, "global_step": self.step, "best": self.best,
                "last_lr": self.lr, "rng": rng, "config": self.config,
                "trained_s": self.elapsed(),
                "bad_images": self.bad_images.seen,
                "classes": list(self.data.class_names), "num_classes": self.data.num_classes}


def setup(data: TrainData, cfg: TrainConfig, run: Path, task: str) -> TrainState:
    """Model, optimizer and data stream of a fresh run (seeded: the same on every rank)."""
    cfg = cfg.concrete()  # validated, automatic values decided
    d = init_distributed(cfg.device, cfg.dist_timeout_s)
    per_rank = per_rank_batch(cfg.batch_size, d.world_size)
    torch.manual_seed(cfg.seed)
    n_samples = cfg.samples_per_epoch or len(data.rows)
    steps_per_epoch = n_samples // cfg.batch_size // cfg.accum_steps
    if steps_per_epoch < 1:
        raise WeblyError(f"an epoch of {n_samples} samples holds no optimizer step of "
                         f"{cfg.batch_size} x {cfg.accum_steps}: lower batch_size/accum_steps or "
                         "raise samples_per_epoch")
    last = uses_channels_last(cfg.backbone, cfg.channels_last)
    fmt = torch.channels_last if last else torch.contiguous_format
    model, transfer = build_model(cfg, data.num_classes, d, fmt)
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.norm_lr), lr=cfg.lr,
                                momentum=cfg.momentum, nesterov=cfg.nesterov)
    dtype = autocast_dtype(cfg, d.device)
    swa = torch.optim.swa_utils
    ema = (swa.AveragedModel(model, multi_avg_fn=swa.get_ema_multi_avg_fn(cfg.ema))
           if cfg.ema else None)
    # the large-resolution stage starts where the continued run left off
    continued = cfg.continue_from and cfg.schedule == "constant"
    base_lr = (transfer.get("lr") or cfg.lr) if continued else cfg.lr
    targets = sparse_targets(data.targets, cfg.max_targets)
    transform = (PadCropTransform(cfg.img_size) if cfg.augment == "pad_crop"
                 else TrainTransform(cfg.img_size, (cfg.crop_scale, 1.0)))
    # pad-crop resizes the whole image first: in memory, that is done once
    size = cfg.img_size if cfg.augment == "pad_crop" else None
    dataset = TargetDataset(train_images(data, cfg.shards, cfg.in_memory, size), targets,
                            transform)
    if hasattr(model, "init_from_images") and not (cfg.pretrained or cfg.continue_from):
        init_from_data(model, dataset, d.device, fmt)
    unlabeled = unlabeled_images(data, cfg.img_size) if cfg.unlabeled_weight else None
    run.mkdir(parents=True, exist_ok=True)
    sampler: BalancedSampler | ShuffleSampler
    if cfg.sampler == "balanced":
        sampler = BalancedSampler(data.membership, n_samples, balance=cfg.balance, seed=cfg.seed,
                                  rank=d.rank, world_size=d.world_size)
    else:
        sampler = ShuffleSampler(len(data.rows), n_samples, seed=cfg.seed, rank=d.rank,
                                 world_size=d.world_size)
    return TrainState(
        cfg=cfg, task=task, run=run, d=d, data=data, model=model, optimizer=optimizer,
        scaler=torch.amp.GradScaler(d.device.type, enabled=dtype == torch.float16), ema=ema,
        objective=make_task(cfg, task, len(dataset), data.num_classes, unlabeled),
        dataset=dataset,
        sampler=sampler,
        bad_images=BadImages(len(data.rows), cfg.max_bad_fraction,
                             run / "bad_images.tsv" if d.is_primary else None),
        lookahead=averaged_copy(model) if cfg.lookahead else None,
        fmt=fmt, dtype=dtype, per_rank=per_rank, steps_per_epoch=steps_per_epoch, base_lr=base_lr,
        transfer=transfer, lr=base_lr, stream_start=transfer.get("stream_start", 0),
        plan=plan_of(cfg, len(data.rows), data.num_classes, n_samples, base_lr,
                     quiet=not d.is_primary))


def restore(s: TrainState, ck: dict[str, Any], force: bool = False) -> None:
    """Continue from checkpoint `ck` exactly: weights, optimizer, position, RNG, bad images seen."""
    for w in check_resume_config(ck.get("config", {}), s.config, s.data.num_classes,
                                 ck.get("num_classes", s.data.num_classes), force):
        if s.d.is_primary:
            print(f"webly: resuming with a changed option: {w}", file=sys.stderr)
    s.model.load_state_dict(ck["model"])
    s.optimizer.load_state_dict(ck["optimizer"])
    s.scaler.load_state_dict(ck["scaler"])
    if s.ema is not None and ck.get("ema"):
        s.ema.load_state_dict(ck["ema"])
    if s.lookahead is not None and ck.get("lookahead"):
        s.lookahead = {k: v.to(s.d.device) for k, v in ck["lookahead"].items()}
    s.objective.load_state_dict(ck.get("task_state", {}))
    s.epoch, s.step_in_epoch, s.step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
    s.best = ck["best"]
    s.trained_s = float(ck.get("trained_s", 0.0))
    s.bad_images.seen.update(ck.get("bad_images", {}))
    torch.set_rng_state(ck["rng"]["torch"])
    if s.d.device.type == "cuda" and "cuda" in ck["rng"]:
        torch.cuda.set_rng_state(ck["rng"]["cuda"], s.d.device)


def wrap(s: TrainState) -> None:
    """Compile and/or DDP-wrap the (restored) model; open the logs."""
    net = torch.compile(s.model) if s.cfg.compile else s.model
    if s.d.enabled:
        ids = [s.d.local_rank] if s.d.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    s.net = net
    s.log = MetricsLog(s.run, s.d.is_primary, s.cfg.tensorboard)
    if s.d.is_primary:
        write_atomic(s.run / "train.config.json", json.dumps(s.config, indent=1))


def _loader(s: TrainState):
    return make_loader(s.dataset, s.per_rank, s.cfg.workers, prefetch=4, drop_last=True,
                       sampler=SeededSampler(s.sampler, s.cfg.seed),
                       pin_memory=s.d.device.type == "cuda")


def run_epoch(s: TrainState) -> bool:
    """Train to the end of the current epoch (or to max_steps, or out of time: then True)."""
    cfg, d = s.cfg, s.d
    s.sampler.set_epoch(s.stream_start + s.epoch,
                        start=s.step_in_epoch * cfg.accum_steps * s.per_rank)
    micro_left = (s.steps_per_epoch - s.step_in_epoch) * cfg.accum_steps
    t0, seen, micro = time.time(), 0, 0
    nonfinite = torch.zeros((), dtype=torch.bool, device=d.device)
    batches = progress(_loader(s), desc=f"epoch {s.epoch + 1}/{cfg.epochs}", total=micro_left,
                       unit="batch")
    for x, ti, tw, bad_pos, reasons, pos in batches:
        if micro == micro_left:
            break
        for p, r in zip(bad_pos.tolist(), reasons, strict=True):
            if p >= 0:
                s.bad_images.add(s.dataset.path(p), r)
        ti, tw, pos = (t.to(d.device, non_blocking=True) for t in (ti, tw, pos))
        x = normalize_batch(x.to(d.device, non_blocking=True)).contiguous(memory_format=s.fmt)
        batch = Batch(x, ti, tw, pos, epoch=s.step / s.steps_per_epoch,
                      micro_step=s.step * cfg.accum_steps + micro % cfg.accum_steps)
        last_micro = (micro + 1) % cfg.accum_steps == 0
        at = schedule_step(cfg, s.step, cfg.epochs * s.steps_per_epoch, s.elapsed())
        s.lr = lr_at(cfg, at, s.steps_per_epoch, s.base_lr)
        for g in s.optimizer.param_groups:
            g["lr"] = s.lr * g.get("lr_scale", 1.0)
        sync = s.net.no_sync() if d.enabled and not last_micro else contextlib.nullcontext()
        with sync, torch.autocast(d.device.type, dtype=s.dtype or torch.float32,
                                  enabled=s.dtype is not None):
            loss = s.objective.loss(s.net, batch)
        nonfinite = ~torch.isfinite(loss.detach()) | nonfinite  # no host sync per micro-step
        s.scaler.scale(loss / cfg.accum_steps).backward()
        micro += 1
        seen += x.shape[0] * d.world_size
        if last_micro:
            optimizer_step(s, loss, nonfinite, seen / (time.time() - t0))
            if (cfg.max_steps and s.step >= cfg.max_steps) or out_of_time(cfg, s.elapsed()):
                return True
    if micro < micro_left:  # a sampler must fill its epoch; never spin on empty ones
        raise WeblyError(f"epoch {s.epoch + 1} ended after {micro} of {micro_left} micro-steps")
    return False


def optimizer_step(s: TrainState, loss: torch.Tensor, nonfinite: torch.Tensor,
                   img_s: float) -> None:
    """Apply the accumulated gradients; log and checkpoint on schedule."""
    cfg = s.cfg
    bad, s.last_loss = torch.stack([nonfinite.float(),
                                    loss.detach().float()]).tolist()  # one sync a step
    if bad:
        raise WeblyError(f"loss is not finite at step {s.step} (epoch {s.epoch + 1}); stopped. The "
                         f"last good checkpoint is {checkpoints.latest(s.run) or 'none yet'}")
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    nonfinite.zero_()
    if s.ema is not None:
        s.ema.update_parameters(s.model)
    s.step += 1
    if s.lookahead is not None:
        total = cfg.epochs * s.steps_per_epoch  # the schedule's length (a cut run: in finish)
        if s.step >= total:
            pull_to_average(s.model, s.lookahead, 1.0)
        elif s.step % LOOKAHEAD_EVERY == 0:
            pull_to_average(s.model, s.lookahead,
                            cfg.lookahead ** LOOKAHEAD_EVERY * (s.step / total) ** 3)
    s.step_in_epoch += 1
    s.plan.tick(s.step)
    faults.point("train.step")
    if s.step % cfg.log_every == 0:  # every rank reaches this: the mean over ranks is logged
        mean_loss = all_reduce_sum(loss.detach().float().clone(), s.d).item() / s.d.world_size
        s.log.step(s.step, s.epoch + 1, mean_loss, s.lr, img_s)
    if cfg.ckpt_every_steps and s.step % cfg.ckpt_every_steps == 0 and s.d.is_primary:
        checkpoints.save_training(s.checkpoint(), s.run, cfg.keep_last)


def end_epoch(s: TrainState) -> None:
    """Validate, log and checkpoint the epoch just run (finished, or cut short by max_steps)."""
    number = s.epoch + 1  # 1-based, as every epoch number webly writes
    if s.step_in_epoch == s.steps_per_epoch:
        s.epoch, s.step_in_epoch = s.epoch + 1, 0
    s.metrics = validate(s.ema.module if s.ema else s.model, s.data, s.cfg, s.d, s.fmt)
    is_best = bool(s.metrics) and s.metrics["val_top1"] > s.best["val_top1"]
    if is_best:
        s.best = {"val_top1": s.metrics["val_top1"], "epoch": number}
    s.log.epoch(number, {"train_loss": s.last_loss, "lr": s.lr, **s.metrics,
                         **s.objective.metrics()})
    if s.d.is_primary:
        checkpoints.save_training(s.checkpoint(), s.run, s.cfg.keep_last, best=is_best)


def finish(s: TrainState) -> dict[str, Any]:
    """Export the model for prediction, close the logs, plot, and return the summary."""
    if s.lookahead is not None:  # a run cut short (time budget) ends on the average too
        pull_to_average(s.model, s.lookahead, 1.0)
    summary = {"task": s.task, "epochs_done": s.epoch, "steps": s.step, "final_lr": s.lr,
               **s.metrics,
               "best": s.best, "bad_images": s.bad_images.counts(),
               "seconds": round(time.time() - s.t_start, 1), "world_size": s.d.world_size,
               "plan": s.plan.to_json(),
               **({"transfer": s.transfer} if s.transfer else {})}
    if s.d.is_primary:
        summary["exported"] = load_exported(s)
        checkpoints.export(s.ema.module if s.ema else s.model, s.run, s.cfg, s.data, s.task)
        s.log.close()
        plot_curves(s.run)
        write_atomic(s.run / "train.summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def load_exported(s: TrainState) -> dict[str, Any]:
    """With `export: best`, put the best epoch's weights (ckpt/best.pt) back into the model to be
    exported; which epoch that is, for the summary."""
    last = {"epoch": s.epoch, "val_top1": s.metrics.get("val_top1")}
    best = s.run / "ckpt" / "best.pt"
    if s.cfg.export != "best":
        return last
    if s.best["epoch"] == 0 or not best.is_file():
        print("webly: export best: no validation score was recorded (no labelled val split); "
              "exporting the last epoch", file=sys.stderr)
        return last
    ck = checkpoints.load(best)
    (s.ema if s.ema else s.model).load_state_dict(ck["ema"] if s.ema else ck["model"])
    return dict(s.best)


def train(data: TrainData, cfg: TrainConfig, run_dir: str | Path, *, task: str,
          resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Train and return a summary; outputs in `run_dir` (see docs/training.md)."""
    s = setup(data, cfg, Path(run_dir), task)
    if resume and checkpoints.latest(s.run):
        restore(s, checkpoints.load(checkpoints.latest(s.run)), force)
    wrap(s)
    s.plan.announce()
    while s.epoch < cfg.epochs:
        done = run_epoch(s)
        end_epoch(s)
        if done:
            break
    return finish(s)


__all__ = ["TrainConfig", "TrainState", "train", "setup", "restore", "run_epoch", "finish"]
