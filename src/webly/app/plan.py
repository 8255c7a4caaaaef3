"""`webly plan RECIPE`: what a recipe costs before it runs.

Per step: images per epoch (`samples_per_epoch`, or the split's images), epochs, image passes, the
throughput it assumes and the GPU-hours that follow; then the total. Training rates come from a
throughput table: by default timm's published training rates (RTX 3090, AMP), or a measured
table (`--throughput FILE`, JSON {"backbone@size": img_s, ...}, e.g. from
`benchmarks/speed/gpu.sh`). Costs are the one cost model's (`webly.inference.cost`): a step's
multiply-adds over the table's rate in multiply-adds a second, so a rate at another input size or
for prediction (each test-time view a forward pass) follows from the multiply-adds. CPU stages
cost no GPU-hours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webly.core.config import resolve_config
from webly.core.errors import WeblyError
from webly.inference import cost

# timm's published training throughput, RTX 3090, AMP: img/s at the given input size
PUBLISHED = {"resnet50": (826.0, 224), "resnest101e": (254.0, 256),
             "resnext101_32x8d": (276.0, 224), "efficientnet_b4": (293.0, 320),
             "resnest200e": (83.0, 320)}
PUBLISHED_NAME = "timm's published training rates (RTX 3090, AMP)"
WEBVISION2 = {"train": 16_000_000, "val": 250_000, "test": 500_000}  # images per split


@dataclass
class Row:
    step: str
    stage: str
    model: str = ""
    images_per_epoch: int = 0
    epochs: float = 0
    passes: float = 0
    img_s: float = 0
    gpu_hours: float = 0


def load_table(path: str | None) -> tuple[dict[str, tuple[float, int]], str]:
    if not path:
        return dict(PUBLISHED), PUBLISHED_NAME
    raw = json.loads(Path(path).read_text())
    table = {}
    for key, rate in raw.items():
        name, _, size = key.partition("@")
        if not size.isdigit():
            raise WeblyError(f"{path}: keys are 'backbone@size', got {key!r}")
        table[name] = (float(rate), int(size))
    return table, f"measured ({path})"


def rate(table: dict[str, tuple[float, int]], backbone: str, source: str = "") -> cost.Rate:
    """The table's training rate of `backbone`, in multiply-adds a second."""
    if backbone not in table:
        raise WeblyError(f"no throughput for {backbone!r}; known: {', '.join(sorted(table))} "
                         "(add it with --throughput FILE)")
    img_s, size = table[backbone]
    return cost.Rate.of_training(backbone, size, img_s, source)


def plan(recipe: str | Path | dict[str, Any], images: dict[str, int] | None = None,
         throughput: str | None = None) -> tuple[list[Row], str]:
    """The cost of every step of `recipe`; `images` per split (default: WebVision 2.0's)."""
    from webly.app.pipeline import load_recipe
    from webly.inference.predict import PredictConfig
    from webly.training.config import TrainConfig

    images = {**WEBVISION2, **(images or {})}
    table, source = load_table(throughput)
    _, steps = load_recipe(recipe)
    rows = []
    for s in steps:
        options = _plain(s.options)
        if s.stage in ("pretrain", "finetune"):
            cfg = resolve_config(TrainConfig, options, where=s.id)
            per_epoch = cfg.samples_per_epoch or images["train"]
            passes = float(per_epoch * cfg.epochs)
            if cfg.max_steps:
                passes = min(passes, cfg.max_steps * cfg.batch_size * cfg.accum_steps)
            r, macs = rate(table, cfg.backbone), cost.train_macs(cfg.backbone, cfg.img_size, 1)
            rows.append(Row(s.id, s.stage, f"{cfg.backbone}@{cfg.img_size}", per_epoch, cfg.epochs,
                            passes, 1 / r.seconds(macs), r.seconds(passes * macs) / 3600))
        elif s.stage == "predict":
            cfg = resolve_config(PredictConfig, options, where=s.id)
            model = _model_of(s, steps)
            size = cfg.img_size or model[1]
            r, macs = rate(table, model[0]), cost.predict_macs(model[0], size, 1, cfg.tta)
            n = images[cfg.split]
            rows.append(Row(s.id, s.stage, f"{model[0]}@{size} {cfg.tta}", n, 1, float(n),
                            1 / r.seconds(macs), r.seconds(n * macs) / 3600))
        else:
            rows.append(Row(s.id, s.stage))
    return rows, source


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """A step's options without @references (they name files, not costs)."""
    return {k: v for k, v in options.items() if not (isinstance(v, str) and v.startswith("@"))}


def _model_of(step: Any, steps: list[Any]) -> tuple[str, int]:
    """(backbone, training size) of the run a predict step reads."""
    from webly.training.config import TrainConfig

    ref = str(step.inputs.get("model", ""))
    by_id = {s.id: s for s in steps}
    if not ref.startswith("@") or ref[1:] not in by_id:
        raise WeblyError(f"{step.id}: plan needs the model as an @reference to a training step")
    src = by_id[ref[1:]]
    options = _plain(src.options)
    cfg = resolve_config(TrainConfig, options, where=src.id)
    return cfg.backbone, cfg.img_size


def table_text(rows: list[Row], source: str, images: dict[str, int]) -> str:
    lines = ["| step | stage | model | images/epoch | epochs | image passes | img/s per GPU "
             "| GPU-hours |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if not r.model:
            lines.append(f"| {r.step} | {r.stage} | (CPU) | | | | | 0 |")
            continue
        lines.append(f"| {r.step} | {r.stage} | {r.model} | {r.images_per_epoch:,} | {r.epochs:g} "
                     f"| {r.passes:.3g} | {r.img_s:.0f} | {r.gpu_hours:,.1f} |")
    total = sum(r.gpu_hours for r in rows)
    passes = sum(r.passes for r in rows if r.stage in ("pretrain", "finetune"))
    lines += ["", f"Total: {total:,.0f} GPU-hours ({total / 8 / 24:.1f} days on 8 GPUs); "
              f"{passes:.3g} training image passes.",
              f"Throughput: {source}. Images: "
              + ", ".join(f"{k} {v:,}" for k, v in images.items()) + "."]
    return "\n".join(lines)
