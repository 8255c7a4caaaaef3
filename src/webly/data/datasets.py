"""Image files listed in a manifest: a map-style dataset (the shard-free path for small jobs) and
`ImageFiles`, the byte source training reads (`webly.data.shards.ShardImages` is the other)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow.compute as pc
import torch

from webly.core.errors import WeblyError
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
    `size`: a folder of phone photos costs a fraction of a full decode each, once."""

    MAX_BYTES = 8 << 30

    def __init__(self, manifest: Manifest, rows: np.ndarray, size: int | None = None) -> None:
        super().__init__(manifest, rows)
        self.array: torch.Tensor | None = None
        self.reasons: dict[int, str] = {}
        for pos in progress(range(len(rows)), desc="decode into memory", unit="img"):
            img, reason = try_decode(self.root / self.name(pos), min_short_side=size)
            if img is None:
                self.reasons[pos] = reason
                continue
            if size and img.shape[-2:] != (size, size):
                img = resize_uint8(img, (size, size))
            if self.array is None:
                nbytes = len(rows) * img.numel()
                if nbytes > self.MAX_BYTES:
                    raise WeblyError(f"in_memory: {len(rows)} images of {tuple(img.shape)} need "
                                     f"{nbytes / 2**30:.1f} GiB; train from files or shards")
                self.array = torch.zeros((len(rows), *img.shape), dtype=torch.uint8)
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
