"""Images/s of webly's training loop vs a bare hand-written PyTorch loop: same model, batch, data,
precision, DataLoader and worker count. The difference is the loop's own overhead (sampling,
seeding, LR schedule, accumulation bookkeeping, NaN check, logging, checkpoint-free steps).

    .venv/bin/python -m benchmarks.speed.train_step --backbone resnet18 --img-size 64 --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from webly.app.demo.synth import SynthConfig, generate
from webly.data.datasets import ImageFiles
from webly.data.images import TrainTransform, normalize_batch
from webly.data.index import IndexConfig, index_dataset
from webly.data.manifest import Manifest
from webly.training.config import TrainConfig
from webly.training.engine import train
from webly.training.models import create_backbone
from webly.training.trainsets import TargetDataset, collate, finetune_data, sparse_targets


def bare_loop(data, args) -> float:
    torch.manual_seed(0)
    model = create_backbone(args.backbone, data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    ds = TargetDataset(ImageFiles(data.manifest, data.rows), sparse_targets(data.targets, 1),
                       TrainTransform(args.img_size))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, drop_last=True,
                                         collate_fn=collate,
                                         num_workers=args.workers,
                                         prefetch_factor=4 if args.workers else None)
    seen, t0, step = 0, None, 0
    while step < args.steps:
        for x, i, *_ in loader:
            x = normalize_batch(x)
            loss = torch.nn.functional.cross_entropy(model(x), i[:, 0])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step == args.warmup:
                t0, seen = time.perf_counter(), 0
            elif t0 is not None:
                seen += x.shape[0]
            if step == args.steps:
                break
    return seen / (time.perf_counter() - t0)


def webly_loop(data, args, run: Path) -> float:
    cfg = TrainConfig(backbone=args.backbone, img_size=args.img_size, batch_size=args.batch,
                      accum_steps=1, workers=args.workers, sampler="shuffle", max_steps=args.steps,
                      epochs=1000, log_every=args.warmup, tensorboard=False, channels_last="off",
                      samples_per_epoch=args.steps * args.batch)
    train(data, cfg, run, task="finetune")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines if '"step"' in x]
    # img/s between the warm-up step and the last step, from the loop's own step timestamps
    return (args.steps - args.warmup) * args.batch / (recs[-1]["t"] - recs[0]["t"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10,
                    help="untimed first steps (also webly's log interval)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(work / "wv", SynthConfig(max_per_class=60, min_per_class=60, val_per_class=0,
                                          test_per_class=0, image_width=96, image_height=96))
        index_dataset(work / "wv", work / "m.parquet", IndexConfig(splits=["train"]))
        data = finetune_data(Manifest(work / "m.parquet"))
        bare, ours = [], []
        for r in range(args.repeats):  # alternate, so drift in the machine hits both alike
            bare.append(bare_loop(data, args))
            ours.append(webly_loop(data, args, work / f"run{r}"))
    b, w = max(bare), max(ours)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; {args.backbone} at {args.img_size}px, batch "
          f"{args.batch}, "
          f"{args.workers} workers, fp32, {args.steps - args.warmup} timed steps, best of "
          f"{args.repeats}")
    print("| loop | images/s |\n|---|---:|")
    print(f"| bare PyTorch loop | {b:.1f} |")
    print(f"| webly.training.engine | {w:.1f} |")
    print(f"overhead: {100 * (1 - w / b):.1f}%")


if __name__ == "__main__":
    main()
