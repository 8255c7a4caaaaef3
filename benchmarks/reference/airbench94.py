"""airbench94 (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU"), written here from
the paper's description as the reference that `benchmarks/limit.py` holds webly's trainer against.

The published recipe, every part of it: a 7-conv net (a frozen 2x2 patch-whitening first layer
with a learnable bias, then three conv-pool-BN-GELU / conv-BN-GELU groups of widths 64, 256, 256,
a 3x3 max pool, a linear head scaled by 1/9) with identity (dirac) initialisation of every conv's
first channels and BatchNorm without a learned scale at momentum 0.6; label smoothing 0.2; Nesterov
SGD at batch 1024 with the learning rate and weight decay given per 1024 examples and decoupled
from the momentum (lr 11.5, wd 0.0153, momentum 0.85), BatchNorm biases at 64x the lr; a
triangular schedule (0.2 -> 1 over 23% of the steps, then down to 0.07); lookahead (every 5 steps
the weights are pulled to an average whose decay ramps as the cube of progress, copied in whole
at the end); alternating flips (each image is flipped in every other epoch, at random in the
first); a random 2-px translation of a reflect-padded image; the whitening bias frozen after 3
epochs; mirror + translate test-time augmentation. Its own length is 9.9 epochs of 50,000 images.

Here it runs in fp32 on whatever device torch has, for a given number of training draws (so that
it spends the same multiply-adds as the row it is compared with). `airbench` itself is CUDA-only:
on a GPU, run it beside this for a cross-check.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)


@dataclass(frozen=True)
class Hyp:
    epochs_own: float = 9.9  # the published length, in epochs of the training images
    batch_size: int = 1024
    lr: float = 11.5  # per 1024 examples
    momentum: float = 0.85
    weight_decay: float = 0.0153  # per 1024 examples, decoupled from the lr
    bias_scaler: float = 64.0
    label_smoothing: float = 0.2
    whiten_bias_epochs: float = 3.0
    translate: int = 2
    widths: tuple[int, int, int] = (64, 256, 256)
    bn_momentum: float = 0.6  # the weight of the past: torch's momentum is 1 - this
    scaling: float = 1 / 9
    whiten_eps: float = 5e-4
    lookahead_every: int = 5


class Group(nn.Module):
    def __init__(self, cin: int, cout: int, bn_momentum: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(cout, eps=1e-12, momentum=1 - bn_momentum)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout, eps=1e-12, momentum=1 - bn_momentum)
        for norm in (self.norm1, self.norm2):
            norm.weight.requires_grad = False  # no learned scale
        for conv in (self.conv1, self.conv2):
            w = conv.weight.data
            torch.nn.init.dirac_(w[:w.size(1)])  # identity on the first cin channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class Net(nn.Module):
    def __init__(self, hyp: Hyp = Hyp(), classes: int = 10) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, bias=True)
        self.whiten.weight.requires_grad = False
        nn.init.zeros_(self.whiten.bias)
        w = hyp.widths
        self.groups = nn.Sequential(Group(24, w[0], hyp.bn_momentum),
                                    Group(w[0], w[1], hyp.bn_momentum),
                                    Group(w[1], w[2], hyp.bn_momentum))
        self.head = nn.Linear(w[2], classes, bias=False)
        self.scaling = hyp.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(F.gelu(self.whiten(x)))
        return self.head(F.max_pool2d(x, 3).flatten(1)) * self.scaling

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float) -> None:
        """The first layer's filters: the eigenvectors of the 2x2 patches' covariance, each scaled
        by 1/sqrt(eigenvalue + eps), and their negatives (24 filters from 12 dimensions)."""
        patches = images.unfold(2, 2, 1).unfold(3, 2, 1)  # n c h w 2 2
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
        cov = patches.T @ patches / len(patches)
        values, vectors = torch.linalg.eigh(cov)
        filters = (vectors.T / torch.sqrt(values + eps)[:, None]).reshape(12, 3, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).float())


def macs_per_image(hyp: Hyp = Hyp(), size: int = 32) -> int:
    """Forward multiply-adds of one image (FlopCounterMode, on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = Net(hyp).eval()
        x = torch.zeros(1, 3, size, size)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(x)
    return fc.get_total_flops() // 2


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - MEAN) / STD


def translate(padded: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Each image's own random crop of its padded copy (a shift of up to `pad` px each way)."""
    b, size = len(padded), padded.shape[-1] - 2 * pad
    dy, dx = (torch.randint(0, 2 * pad + 1, (b,), generator=g) for _ in range(2))
    ar = torch.arange(size)
    rows, cols = (dy[:, None] + ar)[:, :, None], (dx[:, None] + ar)[:, None, :]
    nhwc = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols]
    return nhwc.permute(0, 3, 1, 2)


def lr_factor(step: int, total: int) -> float:
    warm = int(total * 0.23)
    if step < warm:
        return 0.2 + 0.8 * step / warm
    return 1.0 - 0.93 * (step - warm) / max(total - warm, 1)


def train(images: torch.Tensor, labels: torch.Tensor, draws: int, hyp: Hyp = Hyp(),
          seed: int = 0, log_every: int = 20) -> tuple[Net, dict]:
    """Train on uint8 images (N, 3, 32, 32) for `draws` images (whole batches), as published."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = len(images)
    bs = min(hyp.batch_size, n)  # the published 1024, or all of a smaller set (tests)
    x_all = normalise(images)
    net = Net(hyp, int(labels.max()) + 1)
    net.init_whitening(x_all[:5000], hyp.whiten_eps)
    net = net.to(memory_format=torch.channels_last)  # faster convolutions on CPUs and GPUs
    # decoupled hyper-parameters (Nesterov SGD's step is 1 + 1/(1 - momentum) gradients long)
    kilostep = 1024 * (1 + 1 / (1 - hyp.momentum))
    lr, wd = hyp.lr / kilostep, hyp.weight_decay * bs / kilostep
    lr_bias = lr * hyp.bias_scaler
    norms = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
    rest = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
    opt = torch.optim.SGD([{"params": norms, "lr": lr_bias, "weight_decay": wd / lr_bias},
                           {"params": rest, "lr": lr, "weight_decay": wd / lr}],
                          momentum=hyp.momentum, nesterov=True)
    base = [group["lr"] for group in opt.param_groups]
    total = max(1, math.ceil(draws / bs))
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    pad = F.pad(x_all, (hyp.translate,) * 4, mode="reflect")
    flip_first = torch.rand(n, generator=g) < 0.5
    step, epoch, t0, losses = 0, 0, time.time(), []
    while step < total:
        net.whiten.bias.requires_grad = epoch < hyp.whiten_bias_epochs
        flip = flip_first if epoch % 2 == 0 else ~flip_first  # alternating flips
        order = torch.randperm(n, generator=g)
        for i in range(0, n - bs + 1, bs):
            idx = order[i:i + bs]
            x = translate(pad[idx], hyp.translate, g)
            x = torch.where(flip[idx].view(-1, 1, 1, 1), x.flip(-1), x)
            x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(x), labels[idx], label_smoothing=hyp.label_smoothing,
                                   reduction="none").sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group, b in zip(opt.param_groups, base, strict=True):
                group["lr"] = b * lr_factor(step, total)
            opt.step()
            step += 1
            if step % hyp.lookahead_every == 0 or step == total:
                decay = 0.95 ** 5 * (step / total) ** 3 if step < total else 1.0
                with torch.no_grad():
                    for k, v in net.state_dict().items():
                        if v.dtype.is_floating_point:
                            ema[k].lerp_(v, 1 - decay)
                            v.copy_(ema[k])
            losses.append(loss.item() / bs)
            if log_every and step % log_every == 0:
                print(f"reference: step {step}/{total} epoch {epoch + 1} loss "
                      f"{np.mean(losses[-log_every:]):.3f} {time.time() - t0:.0f}s", flush=True)
            if step == total:
                break
        epoch += 1
    return net, {"steps": step, "draws": step * bs, "epochs": step * bs / n,
                 "seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def predict(net: Net, images: torch.Tensor, tta: int = 2, batch: int = 1000) -> torch.Tensor:
    """Logits with the published test-time augmentation: 0 none, 1 mirror, 2 mirror + translate
    (the mirrored pair at the image and, averaged, at 1-px shifts up-left and down-right)."""
    net.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalise(images[i:i + batch]).contiguous(memory_format=torch.channels_last)

        def mirror(v: torch.Tensor) -> torch.Tensor:
            return 0.5 * (net(v) + net(v.flip(-1))) if tta >= 1 else net(v)

        logits = mirror(x)
        if tta >= 2:
            p = F.pad(x, (1,) * 4, mode="reflect")
            shifted = 0.5 * (mirror(p[:, :, :32, :32]) + mirror(p[:, :, 2:, 2:]))
            logits = 0.5 * logits + 0.5 * shifted
        out.append(logits)
    return torch.cat(out)


def tta_views(tta: int) -> int:
    return {0: 1, 1: 2, 2: 6}[tta]
