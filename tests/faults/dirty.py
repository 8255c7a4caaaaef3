"""Dirty web files for fault tests: what real crawls contain, made small and fast."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

# name -> expected: "ok" (decodes, maybe after conversion) or the reason it must be skipped
KINDS = {
    "truncated.jpg": "bad", "zero.jpg": "bad", "alpha.png": "ok", "cmyk.jpg": "ok",
    "sixteen.png": "ok", "anim.gif": "ok", "bomb.jpg": "bad", "missing.jpg": "bad",
    "text.jpg": "bad",
}


def _jpeg(rng: np.random.Generator, size: int = 48, mode: str = "RGB") -> bytes:
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    (img.convert("CMYK") if mode == "CMYK" else img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bomb_jpeg(rng: np.random.Generator, side: int = 20000) -> bytes:
    """A small JPEG whose header claims side x side pixels (what a decompression bomb looks
    like)."""
    data = bytearray(_jpeg(rng))
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", side, side)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def write_dirty(folder: Path, seed: int = 0) -> dict[str, str]:
    """Write one file of each kind (except `missing.jpg`); return name -> expected."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    good = _jpeg(rng)
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "zero.jpg").write_bytes(b"")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8),
                    "RGBA").save(folder / "alpha.png")
    (folder / "cmyk.jpg").write_bytes(_jpeg(rng, mode="CMYK"))
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(folder / "sixteen.png")
    frames = [Image.fromarray(rng.integers(0, 255, (40, 40, 3),
                                           dtype=np.uint8)).convert("P") for _ in range(2)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    (folder / "bomb.jpg").write_bytes(bomb_jpeg(rng))
    (folder / "text.jpg").write_text("<html>404 Not Found</html>")
    return dict(KINDS)
