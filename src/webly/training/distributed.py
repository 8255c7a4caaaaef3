"""Distributed set-up as a pure function: torchrun's environment -> a small record.

One process on a CPU or GPU when not launched by torchrun; under `torchrun` (one node or many via
`--nnodes/--rdzv-*`) NCCL on GPUs, gloo on CPUs. A rank that dies makes the others fail within
`timeout_s` instead of hanging.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from webly.core.errors import WeblyError


@dataclass(frozen=True)
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto": this rank's GPU when torch sees one, else the CPU; "cuda" without a GPU is an
    error."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WeblyError(f"device {device} asked for, but torch sees no GPU")
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    return torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


def init_distributed(device: str = "auto", timeout_s: int = 600) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank, local, world, dev)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t)
    return t
