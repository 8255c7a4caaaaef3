"""Image files listed in a manifest: a map-style dataset (the shard-free path for small jobs) and
`ImageFiles`, the byte source training reads (`webly.data.shards.ShardImages` is the other)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from webly.core.errors import WeblyError
from webly.core.files import write_atomic
from webly.core.progress import progress
from webly.data.images import decode_tensor, resize_uint8, try_decode
from webly.data.manifest import Manifest


class ImageFileDataset(torch.utils.data.Dataset):
    """(image, label) for the rows of one split; label is -1 where the manifest has none.

    Paths stay in one Arrow array (not 16M Python strings) and labels in a NumPy array, so worker
    processes share them cheaply. Images are decoded to uint8 tensors (`decode_tensor`), drafting
    big JPEGs to `min_short_side`.
    """

    def __init__(self, manifest: Manifest, split: str, transform: Callable | None = None,
                 min_short_side: int | None = None) -> None:
        table = manifest.read(["path", "label", "split"])
        table = table.filter(pc.equal(table["split"], split))
        self.root = manifest.root
        self.paths = table["path"].combine_chunks()
        self.labels = np.asarray(table["label"].fill_null(-1).to_numpy(), dtype=np.int64)
        self.transform = transform
        self.min_short_side = min_short_side

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = decode_tensor(self.root / self.paths[i].as_py(), min_short_side=self.min_short_side)
        return (self.transform(img) if self.transform else img), int(self.labels[i])


class ImageFiles:
    """The bytes of the image files of some manifest rows: `read(pos)`, `name(pos)` (the same
    interface as `webly.data.shards.ShardImages`). Paths stay one Arrow array."""

    def __init__(self, manifest: Manifest, rows: np.ndarray) -> None:
        self.root = manifest.root
        self.paths = manifest.read(["path"]).column(0).combine_chunks().take(rows)

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, pos: int) -> str:
        return self.paths[pos].as_py()

    def read(self, pos: int) -> bytes:
        return (self.root / self.name(pos)).read_bytes()


class MemoryImages(ImageFiles):
    """`ImageFiles` decoded once into one uint8 tensor [n, 3, H, W], for small images such as
    CIFAR's: 50k 32x32 images are 150 MB, and no epoch decodes again. `pixels(pos)` is the
    image, or None for one that could not be decoded (`reason(pos)`). Without `size` the images
    must all be one size; with it, each is resized to size x size once here (for an augmentation
    that resizes the whole image first, such as pad-crop: the same pixels, no resize a draw), and a
    JPEG at least twice that size is decoded at a reduced DCT scale (1/2, 1/4, 1/8), never below
    `size`: a folder of phone photos costs a fraction of a full decode each, once. With `cache`
    (a folder) and `size`, the decoded array is kept there under a key of the files' identity
    and the size, and read back by the next step that needs the same images at the same size
    (a recipe's CE, its continuations and a sweep decode a folder of photos once)."""

    MAX_BYTES = 8 << 30

    def __init__(self, manifest: Manifest, rows: np.ndarray, size: int | None = None,
                 cache: Path | None = None) -> None:
        super().__init__(manifest, rows)
        self.array: torch.Tensor | None = None
        self.reasons: dict[int, str] = {}
        key = self.key(size) if cache is not None and size else ""
        if key and self._load(cache, key):
            return
        self._decode(size)
        if key:
            self._save(cache, key)

    def key(self, size: int) -> str:
        """The cache key: the size, and each file's path, byte size and modification time (a
        file changed in place gets a new key; reading every byte of 16M files to hash them would
        cost what the cache saves)."""
        h = hashlib.sha256(f"v1 {size}".encode())
        for pos in range(len(self)):
            st = (self.root / self.name(pos)).stat()
            h.update(f"\n{self.name(pos)} {st.st_size} {st.st_mtime_ns}".encode())
        return h.hexdigest()[:32]

    def _load(self, cache: Path, key: str) -> bool:
        arr, meta = cache / f"{key}.npy", cache / f"{key}.json"
        if not (arr.is_file() and meta.is_file()):
            return False
        self.array = torch.from_numpy(np.load(arr))
        self.reasons = {int(k): v for k, v in json.loads(meta.read_text()).items()}
        print(f"[webly] decoded images read from the cache: {arr}", file=sys.stderr, flush=True)
        return True

    def _save(self, cache: Path, key: str) -> None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache / f"{key}.npy.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                np.save(f, self.array.numpy())
            os.replace(tmp, cache / f"{key}.npy")
            write_atomic(cache / f"{key}.json", json.dumps(self.reasons))
        except OSError as e:  # a read-only or full disk: the images are in memory all the same
            print(f"[webly] could not cache the decoded images in {cache}: {e}", file=sys.stderr)

    def _decode(self, size: int | None) -> None:
        rows = len(self)
        for pos in progress(range(rows), desc="decode into memory", unit="img"):
            img, reason = try_decode(self.root / self.name(pos), min_short_side=size)
            if img is None:
                self.reasons[pos] = reason
                continue
            if size and img.shape[-2:] != (size, size):
                img = resize_uint8(img, (size, size))
            if self.array is None:
                nbytes = rows * img.numel()
                if nbytes > self.MAX_BYTES:
                    raise WeblyError(f"in_memory: {rows} images of {tuple(img.shape)} need "
                                     f"{nbytes / 2**30:.1f} GiB; train from files or shards")
                self.array = torch.zeros((rows, *img.shape), dtype=torch.uint8)
            if img.shape != self.array.shape[1:]:
                raise WeblyError(f"in_memory needs images of one size: {self.name(pos)} is "
                                 f"{tuple(img.shape)}, not {tuple(self.array.shape[1:])}")
            self.array[pos] = img
        if self.array is None:
            raise WeblyError("in_memory: no training image could be decoded")

    def pixels(self, pos: int) -> torch.Tensor | None:
        return None if pos in self.reasons else self.array[pos]

    def reason(self, pos: int) -> str:
        return self.reasons.get(pos, "")
