"""Image decoding, in one place, and the train/eval transforms that follow it.

`decode_image` turns a path or bytes into an RGB PIL image: for JPEGs much larger than needed it
asks
libjpeg for a reduced-size decode (`Image.draft`, DCT scaling by 1/2, 1/4, 1/8); it applies EXIF
orientation and converts CMYK, palette, alpha (composited on white) and 16-bit images to 8-bit RGB.

`decode_tensor` is the training path: a uint8 CHW tensor. Ordinary JPEGs go straight through
torchvision's libjpeg-turbo decoder; big JPEGs (draft pays) and every other format go through
`decode_image`. The transforms work on uint8 tensors (torchvision's vectorised uint8 antialiased
resize is about 3x faster than PIL's for a crop), and normalising to float happens per batch on
the training device (`normalize_batch`), not per image in the CPU workers.
"""

from __future__ import annotations

import errno
import io
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T
from torchvision.transforms import functional as F

from webly.core.errors import WeblyError

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec but still ships them; the
# pinned version has them. If a later torchvision drops them, JPEGs take the PIL path below.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # pragma: no cover - depends on the torchvision build
        decode_jpeg = None

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


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF header without decoding; None if not found."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return width, int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def decode_tensor(src: str | Path | bytes, min_short_side: int | None = None) -> torch.Tensor:
    """Decode to a uint8 RGB CHW tensor (see the module docstring for which decoder runs)."""
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    if decode_jpeg is not None and data[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
        # PIL's own limit, before libjpeg
        if size and size[0] * size[1] > 2 * Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{size[0]}x{size[1]} pixels: a decompression bomb?")
        if size and not (min_short_side and min_short_side / min(size) < 0.5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                       mode=ImageReadMode.RGB, apply_exif_orientation=True)
            except RuntimeError:
                pass  # unusual or damaged JPEG: PIL decodes what it can, or raises a clear error
    return F.pil_to_tensor(decode_image(data, min_short_side))


def bad_image_reason(e: BaseException) -> str:
    """A short, countable reason an image could not be used (the summary counts these)."""
    msg = str(e)
    if isinstance(e, FileNotFoundError):
        return "missing file"
    if isinstance(e, Image.DecompressionBombError):
        return "too many pixels"
    if "truncated" in msg.lower() or "premature end" in msg.lower():
        return "truncated"
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image"
    if isinstance(e, OSError) and e.errno is not None:  # a file the system cannot read
        return "symlink loop" if e.errno == errno.ELOOP else (e.strerror or "unreadable").lower()
    return type(e).__name__


def try_decode(src: Path | Callable[[], bytes],
               min_short_side: int | None = None) -> tuple[torch.Tensor | None, str]:
    """`decode_tensor` of a file (or of what `src()` reads), or (None, reason) for an image that
    cannot be used: web data is dirty, and one bad file must not stop a stage (callers count, log
    and bound these)."""
    try:
        data = src() if callable(src) else src.read_bytes()
        if not data:
            return None, "empty file"
        return decode_tensor(data, min_short_side), ""
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image, reported
        return None, bad_image_reason(e)


def log_bad_image(path: str, reason: str) -> None:
    print(f"webly: skipped bad image {path}: {reason}", file=sys.stderr)


class BadImages:
    """The bad files a stage met: logged once each (stderr and `log_file`), counted by reason, and
    bounded: more than `max_fraction` of `total` images bad is an error, raised as soon as it is
    certain (`add`) or when the caller is ready (`check`)."""

    def __init__(self, total: int, max_fraction: float, log_file: Path | None = None,
                 seen: dict[str, str] | None = None) -> None:
        self.total, self.max_fraction, self.log_file = total, max_fraction, log_file
        self.seen: dict[str, str] = dict(seen or {})

    def add(self, path: str, reason: str, check: bool = True) -> None:
        if path in self.seen:
            return
        self.seen[path] = reason
        log_bad_image(path, reason)
        if self.log_file is not None:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(f"{path}\t{reason}\n")
        if check:
            self.check()

    def check(self, note: str = "") -> None:
        if len(self.seen) > self.max_fraction * self.total:
            raise WeblyError(f"{len(self.seen)} of {self.total} images could not be decoded (more "
                             "than "
                             f"max_bad_fraction {self.max_fraction}): {self.counts()}; first: "
                             f"{next(iter(self.seen))}{note}")

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.seen.values()).items()))


def resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear antialiased resize of a uint8 CHW tensor, kept in uint8.

    Calls torch's interpolate on a channels-last uint8 batch of one, which has a vectorised uint8
    kernel: 2-4x faster than torchvision's tensor resize (which may go through float) or PIL's.
    """
    y = x.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return torch.nn.functional.interpolate(y, size=size, mode="bilinear", antialias=True,
                                           align_corners=False)[0]


class TrainTransform:
    """Random-resized crop + horizontal flip of a uint8 CHW tensor (PIL images are converted)."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: bool = True) -> None:
        self.size, self.scale, self.ratio, self.hflip = size, scale, ratio, hflip

    def __call__(self, img: torch.Tensor | Image.Image) -> torch.Tensor:
        x = F.pil_to_tensor(img) if isinstance(img, Image.Image) else img
        top, left, h, w = T.RandomResizedCrop.get_params(x, list(self.scale), list(self.ratio))
        x = resize_uint8(x[:, top:top + h, left:left + w], (self.size, self.size))
        return x.flip(-1) if self.hflip and torch.rand(1).item() < 0.5 else x


def reflect_index(size: int, pad: int) -> torch.Tensor:
    """Indices into a `size`-long axis of the axis reflect-padded by `pad` (the padded pixel j
    is pixel reflect_index[j]): a crop of the padded image without building it."""
    i = torch.arange(-pad, size + pad).abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


class PadCropTransform:
    """Horizontal flip + a random `size` crop of the image reflect-padded by size/8 (4 px at 32):
    the standard augmentation for small images, where a random-resized crop loses too much."""

    def __init__(self, size: int) -> None:
        self.size, self.pad = size, max(1, size // 8)
        # the crop at each offset as indices into the unpadded image (reflect padding), and
        # flipped: two index_selects on uint8 instead of a float pad and a copy, 4-5x faster a
        # small image
        i = reflect_index(size, self.pad)
        self.index = [i[o:o + size] for o in range(2 * self.pad + 1)]
        self.flipped = [ix.flip(0) for ix in self.index]

    def __call__(self, img: torch.Tensor | Image.Image) -> torch.Tensor:
        x = F.pil_to_tensor(img) if isinstance(img, Image.Image) else img
        if x.shape[-2:] != (self.size, self.size):
            x = resize_uint8(x, (self.size, self.size))
        top, left = (int(v) for v in torch.randint(0, 2 * self.pad + 1, (2,)))
        cols = (self.flipped if torch.rand(1).item() < 0.5 else self.index)[left]
        return x.index_select(1, self.index[top]).index_select(2, cols)


def pad_crop_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """`PadCropTransform` on a uint8 batch [N, 3, S, S] at once: each image flipped with p 0.5
    and cropped at its own offset from itself reflect-padded by S/8 (one gather, no padding
    copy)."""
    n, s = x.shape[0], x.shape[-1]
    pad = max(1, s // 8)
    i = reflect_index(s, pad)
    off = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    rows = i[off[0, :, None] + torch.arange(s)]  # [N, S]
    cols = i[off[1, :, None] + torch.arange(s)]
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows, cols = rows.to(x.device), cols.to(x.device)
    n_i = torch.arange(n, device=x.device)[:, None, None, None]
    c_i = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[n_i, c_i, rows[:, None, :, None], cols[:, None, None, :]]


def strong_augment_batch(x: torch.Tensor, generator: torch.Generator | None = None
                         ) -> torch.Tensor:
    """A strong view of a uint8 batch [N, 3, S, S] for consistency training (FixMatch's "strong"
    augmentation, made cheap enough to run per micro-batch on a CPU): per image, a random
    brightness and contrast in [0.5, 1.5], saturation in [0, 1.5] (0: grey), and a cutout of a
    square of side S/2 (grey), on top of the weak view it is given. Vectorised: one set of
    tensor ops a batch, no per-image Python."""
    n, s = x.shape[0], x.shape[-1]
    u = torch.rand(3, n, 1, 1, 1, generator=generator).to(x.device)
    y = x.float() / 255
    grey = (y * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(
        1, keepdim=True)
    y = grey + (y - grey) * (1.5 * u[2])  # saturation
    y = y * (0.5 + u[0])  # brightness
    mean = y.mean((1, 2, 3), keepdim=True)
    y = mean + (y - mean) * (0.5 + u[1])  # contrast
    side = max(1, s // 2)
    # the square's first row and column; a centre near the edge cuts a smaller part (as cutout)
    start = torch.randint(0, s, (2, n), generator=generator).to(x.device)[..., None] - side // 2
    ar = torch.arange(s, device=x.device)
    inside = (ar >= start) & (ar < start + side)  # [2, N, S]: rows, columns
    cut = (inside[0, :, :, None] & inside[1, :, None, :])[:, None]  # [N, 1, S, S]
    y = torch.where(cut, torch.full_like(y, 0.5), y)
    return (y.clamp(0, 1) * 255).round().to(torch.uint8)


RESIZE_MODES = ("crop", "squash")


@dataclass(frozen=True)
class Preprocess:
    """The evaluation preprocessing a model was trained for: what `model.json` records and every
    consumer (validation during training, `predict`, later tools) reads, so a 60x80 photo is
    seen the same way in training and prediction.

    resize "crop": the shorter side to size/crop_pct, then the centre size x size (timm's eval,
    for models trained on random-resized crops); "squash": the whole image to (size/crop_pct)^2,
    then the centre crop (for models trained with pad_crop, which squashes the whole image to a
    square). Both with bilinear antialiased resizing of uint8 pixels, then (x/255 - mean) / std.
    """

    size: int
    resize: str = "crop"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    antialias: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def to_json(self) -> dict:
        return {"size": self.size, "resize": self.resize, "crop_pct": self.crop_pct,
                "interpolation": self.interpolation, "antialias": self.antialias,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_meta(cls, meta: dict, size: int = 0) -> Preprocess:
        """From model.json (`preprocess`; a model written before it: its img_size and crop_pct
        with a centre crop, as prediction did then); `size` overrides the input size."""
        p = dict(meta.get("preprocess") or {"size": meta["img_size"],
                                            "crop_pct": meta.get("crop_pct", 0.875),
                                            "mean": meta.get("mean", IMAGENET_MEAN),
                                            "std": meta.get("std", IMAGENET_STD)})
        if size:
            p["size"] = size
        p["mean"], p["std"] = tuple(p["mean"]), tuple(p["std"])
        if p.get("resize", "crop") not in RESIZE_MODES:
            raise WeblyError(f"model.json: unknown preprocess.resize {p['resize']!r}")
        return cls(**p)


def resize_for(augment: str) -> str:
    """The evaluation resize that matches a training augmentation (see `Preprocess`)."""
    return "squash" if augment == "pad_crop" else "crop"


class EvalTransform:
    """`Preprocess`'s resize and centre crop -> uint8 CHW tensor (normalising is per batch)."""

    def __init__(self, size: int, crop_pct: float = 0.875, resize: str = "crop") -> None:
        self.size, self.resize = size, int(round(size / crop_pct))
        self.mode = resize

    @classmethod
    def of(cls, pre: Preprocess) -> EvalTransform:
        return cls(pre.size, pre.crop_pct, pre.resize)

    def __call__(self, img: torch.Tensor | Image.Image) -> torch.Tensor:
        x = F.pil_to_tensor(img) if isinstance(img, Image.Image) else img
        h, w = x.shape[-2:]
        if self.mode == "squash":
            if (h, w) != (self.resize, self.resize):
                x = resize_uint8(x, (self.resize, self.resize))
        else:
            s = self.resize / min(h, w)
            x = resize_uint8(x, (max(1, round(h * s)), max(1, round(w * s))))
        return F.center_crop(x, [self.size, self.size])


def train_transform(size: int, scale: tuple[float, float] = (0.08, 1.0),
                    hflip: bool = True) -> TrainTransform:
    return TrainTransform(size, scale, hflip=hflip)


def eval_transform(size: int, crop_pct: float = 0.875) -> EvalTransform:
    return EvalTransform(size, crop_pct)


def normalize_batch(x: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD, dtype: torch.dtype = torch.float32
                    ) -> torch.Tensor:
    """uint8 NCHW batch -> normalised float batch, on whatever device `x` is on.

    One conversion then two in-place ops: ~3x faster on a CPU than `(x.float() - m) / s`, which
    allocates two more full-size temporaries.
    """
    scale = 1.0 / (torch.tensor(std, device=x.device, dtype=dtype).view(1, -1, 1, 1) * 255)
    shift = -torch.tensor(mean, device=x.device, dtype=dtype).view(1, -1, 1, 1) / \
        torch.tensor(std, device=x.device, dtype=dtype).view(1, -1, 1, 1)
    return x.to(dtype).mul_(scale).add_(shift)
