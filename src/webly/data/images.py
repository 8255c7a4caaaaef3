"""Image decoding, in one place, and the train/eval transforms that follow it.

`decode_image` turns a path or bytes into an RGB PIL image as cheaply as possible: for JPEGs much
larger than needed it asks libjpeg for a reduced-size decode (`Image.draft`, DCT scaling by 1/2,
1/4, 1/8), which is most of the cost saved; it applies EXIF orientation and converts CMYK, palette,
alpha (composited on white) and 16-bit images to 8-bit RGB. Transforms return uint8 CHW tensors:
normalising to float happens per batch on the training device (`normalize_batch`), not per image
on the CPU workers.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Refuse decompression bombs (PIL raises above 2x this); WebVision has no genuine images this big.
Image.MAX_IMAGE_PIXELS = 89_478_485


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) or 1.0
        return Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")  # L, CMYK, YCbCr, 1, F, ...


def decode_image(src: str | Path | bytes, min_short_side: int | None = None) -> Image.Image:
    """Decode to RGB; with `min_short_side`, JPEGs are decoded at the smallest DCT scale that keeps
    the shorter side >= that many pixels (never smaller)."""
    img = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
    if min_short_side and img.format == "JPEG":
        w, h = img.size
        s = min_short_side / min(w, h)
        if s < 0.5:  # draft only pays off when at least a 2x reduction is possible
            img.draft("RGB", (max(1, round(w * s)), max(1, round(h * s))))
    img.load()
    if "exif" in img.info:  # only images that carry EXIF can be rotated by it
        img = ImageOps.exif_transpose(img)
    return _to_rgb(img)


def resize_short_side(img: Image.Image, short: int) -> Image.Image:
    """Downscale so the shorter side is `short` (never upscale): what shards store."""
    w, h = img.size
    if min(w, h) <= short:
        return img
    s = short / min(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC, reducing_gap=3.0)


def train_transform(size: int, scale: tuple[float, float] = (0.08, 1.0),
                    hflip: bool = True) -> v2.Compose:
    """Random-resized crop + flip -> uint8 CHW tensor (normalise later, per batch)."""
    # Crop and resize on the PIL image (only the cropped region is resampled), then to a tensor.
    steps = [v2.RandomResizedCrop(size, scale=scale, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, v2.PILToTensor()])


def eval_transform(size: int, crop_pct: float = 0.875) -> v2.Compose:
    """Resize shorter side to size/crop_pct, centre crop -> uint8 CHW tensor."""
    return v2.Compose([v2.Resize(int(round(size / crop_pct)), antialias=True),
                       v2.CenterCrop(size), v2.PILToTensor()])


def normalize_batch(x: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD, dtype: torch.dtype = torch.float32
                    ) -> torch.Tensor:
    """uint8 NCHW batch -> normalised float batch, on whatever device `x` is on."""
    m = torch.tensor(mean, device=x.device, dtype=dtype).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=x.device, dtype=dtype).view(1, -1, 1, 1) * 255
    return (x.to(dtype) - m) / s
