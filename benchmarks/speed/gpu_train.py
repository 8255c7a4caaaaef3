"""Training images/s of the seed's backbones on one GPU, bf16, in both memory formats.

Synthetic uint8 batches already on the GPU (normalised there, as webly does), SGD step included:
the GPU's ceiling, to compare with timm's published numbers (RTX 3090, AMP, train img/s:
resnest101e 254, resnest200e 83, resnext101_32x8d 276, efficientnet_b4 293) and with what the data
pipeline delivers (`data_pipeline.py --workers N` on the same machine).

    python -m benchmarks.speed.gpu_train --seconds 20 --json gpu_rates.json

`--json` writes {"backbone@size": img/s} in the memory format webly picks for that backbone
(`--channels-last auto`), the table `webly plan --throughput FILE` reads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from webly.data.images import normalize_batch
from webly.training.models import create_backbone, uses_channels_last

MODELS = {"resnet50": 224, "resnest101e": 256, "resnest200e": 320, "resnext101_32x8d": 224,
          "efficientnet_b4": 320}


def rate(name: str, size: int, batch: int, channels_last: bool, seconds: float) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_backbone(name, 1000).cuda().to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x8 = torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")

    def step() -> None:
        x = normalize_batch(x8).contiguous(memory_format=fmt)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += batch
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", help="write the plan's throughput table here")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, batch "
          f"{args.batch}")
    print("| backbone | input | contiguous img/s | channels_last img/s |\n|---|---:|---:|---:|")
    table = {}
    for name, size in MODELS.items():
        a = rate(name, size, args.batch, False, args.seconds)
        b = rate(name, size, args.batch, True, args.seconds)
        print(f"| {name} | {size} | {a:.0f} | {b:.0f} |", flush=True)
        table[f"{name}@{size}"] = round(b if uses_channels_last(name, "auto") else a, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
