"""What a training run will do, said before it does it, with a plain warning for plans that
cannot work.

A run's defaults can fit one dataset and fail quietly on another: accumulation 8 (the seed's, for
16M images on many GPUs) turns 6 epochs of 31k images into 180 optimizer steps; a step decay
every 90 epochs never decays a 6-epoch run. `plan_of` reads the config and the data's size and
returns the plan (images, epochs, draws per epoch, effective batch, optimizer steps, the lr
schedule's shape) with its warnings; the engine prints it, logs it and writes it in the summary,
and adds the time estimated from the first steps.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from webly.core.progress import duration
from webly.training.config import TrainConfig, lr_at

MIN_STEPS = 300  # fewer optimizer steps than this rarely train a network from scratch
MAX_BATCH_SHARE = 0.05  # an effective batch above 5% of the data: few steps per epoch
MIN_IMAGES_PER_CLASS = 5  # a head over more classes than the data can show
ESTIMATE_AFTER = 20  # optimizer steps timed before the whole run's time is estimated
WARM_STEPS = 3  # first steps left out of the timing (allocator and thread-pool warm-up)


@dataclass
class TrainPlan:
    images: int
    classes: int
    epochs: int
    draws_per_epoch: int
    effective_batch: int
    steps_per_epoch: int
    optimizer_steps: int
    schedule: str
    warnings: list[str] = field(default_factory=list)
    estimated_seconds: float | None = None
    seconds_per_step: float | None = None
    quiet: bool = False  # a DDP rank other than 0: plans, prints nothing
    _t0: float = field(default=0.0, repr=False)

    def lines(self) -> list[str]:
        return [f"plan: {self.images} images, {self.classes} classes; {self.epochs} epochs of "
                f"{self.draws_per_epoch} draws; effective batch {self.effective_batch}; "
                f"{self.optimizer_steps} optimizer steps ({self.steps_per_epoch} an epoch); "
                f"lr {self.schedule}"] + [f"warning: {w}" for w in self.warnings]

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_") and k != "quiet"}

    def announce(self) -> None:
        """Print the plan and its warnings (stderr: the terminal and a cluster log alike)."""
        for line in [] if self.quiet else self.lines():
            print(f"[webly] {line}", file=sys.stderr, flush=True)
        self._t0 = time.monotonic()

    def tick(self, step: int) -> None:
        """Times ESTIMATE_AFTER optimizer steps of this process after its first WARM_STEPS, then
        prints the whole run's time."""
        if step == WARM_STEPS and self._t0:
            self._t0 = time.monotonic()
        last = WARM_STEPS + ESTIMATE_AFTER
        if step == last and self._t0 and self.optimizer_steps > step and not self.quiet:
            self.seconds_per_step = (time.monotonic() - self._t0) / ESTIMATE_AFTER
            self.estimated_seconds = round(self.seconds_per_step * self.optimizer_steps, 1)
            print(f"[webly] estimated: {duration(self.estimated_seconds)} for "
                  f"{self.optimizer_steps} optimizer steps (from steps {WARM_STEPS + 1}-{last}; "
                  "validation not counted)", file=sys.stderr, flush=True)


def schedule_step(cfg: TrainConfig, step: int, total_steps: int, elapsed_s: float) -> float:
    """The step the lr schedule reads: the optimizer step, or with a time budget the share of the
    budget spent times the run's steps when that is further, so that the schedule ends when the
    time does on any machine (and when the steps do on one faster than planned)."""
    if not cfg.time_budget_s:
        return step
    return max(float(step), min(elapsed_s / cfg.time_budget_s, 1.0) * total_steps)


def out_of_time(cfg: TrainConfig, elapsed_s: float) -> bool:
    return bool(cfg.time_budget_s) and elapsed_s >= cfg.time_budget_s


def schedule_shape(cfg: TrainConfig, base_lr: float, steps_per_epoch: int, steps: int) -> str:
    """The lr schedule in words, with the lr it ends at (read off `lr_at`, so it cannot drift)."""
    end = lr_at(cfg, max(steps - 1, 0), steps_per_epoch, base_lr)
    warm = f", {cfg.warmup_epochs:g} warmup epochs" if cfg.warmup_epochs else ""
    if cfg.schedule == "cosine":
        return f"{base_lr:g} cosine to {end:.3g}{warm}"
    if cfg.schedule == "step":
        decays = int((steps / steps_per_epoch) // cfg.step_epochs) if steps_per_epoch else 0
        return (f"{base_lr:g} x{cfg.gamma:g} every {cfg.step_epochs} epochs ({decays} decays in "
                f"this run, ends at {end:.3g}){warm}")
    return f"{base_lr:g} constant{warm}"


def plan_of(cfg: TrainConfig, images: int, classes: int, draws_per_epoch: int,
            base_lr: float | None = None, quiet: bool = False) -> TrainPlan:
    """The plan of training `cfg` on `images` labelled images over `classes` classes."""
    base_lr = cfg.lr if base_lr is None else base_lr
    batch = cfg.batch_size * cfg.accum_steps
    per_epoch = draws_per_epoch // batch
    steps = per_epoch * cfg.epochs
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    shape = schedule_shape(cfg, base_lr, max(per_epoch, 1), steps)
    if cfg.time_budget_s:
        shape += (f"; stops after {duration(cfg.time_budget_s)} of training (validation "
                  "included), the schedule following the time spent (at most these steps)")
    p = TrainPlan(images=images, classes=classes, epochs=cfg.epochs,
                  draws_per_epoch=draws_per_epoch, effective_batch=batch,
                  steps_per_epoch=per_epoch, optimizer_steps=steps, schedule=shape, quiet=quiet)
    if steps < MIN_STEPS and not (cfg.pretrained or cfg.continue_from):  # from scratch only
        p.warnings.append(
            f"only {steps} optimizer steps (batch {cfg.batch_size} x {cfg.accum_steps} "
            f"accumulation over {draws_per_epoch} draws, {cfg.epochs} epochs): a network rarely "
            f"learns in fewer than {MIN_STEPS}; lower --accum-steps or --batch-size, or train "
            "more epochs")
    if batch > MAX_BATCH_SHARE * max(images, 1):
        p.warnings.append(f"the effective batch of {batch} is {100 * batch / max(images, 1):.0f}%"
                          f" of the {images} images: few updates an epoch; lower --accum-steps")
    if cfg.warmup_epochs >= cfg.epochs:
        p.warnings.append(f"the warmup ({cfg.warmup_epochs:g} epochs) is as long as the run "
                          f"({cfg.epochs} epochs): the lr never reaches {base_lr:g}")
    if cfg.schedule == "step" and cfg.step_epochs >= cfg.epochs and cfg.epochs > 1:
        p.warnings.append(f"the step schedule decays every {cfg.step_epochs} epochs but the run "
                          f"has {cfg.epochs}: the lr never decays; use --schedule cosine or "
                          "--step-epochs")
    if classes and images < MIN_IMAGES_PER_CLASS * classes:
        p.warnings.append(f"{images} images for a head over {classes} classes (fewer than "
                          f"{MIN_IMAGES_PER_CLASS} a class): the head cannot learn most classes")
    return p
