"""WebDataset tar shards: the storage format for multi-node training.

Each shard `{split}-{NNNNNN}.tar` holds, per image, `KEY.jpg` (re-encoded with its shorter side at
most `short_side`, which cuts decode cost at training time) and `KEY.json` (the manifest record plus
`row`, the manifest row number). KEY is the 9-digit manifest row. Beside each shard,
`{split}-{NNNNNN}.idx.npy` (int64 [n, 3]: manifest row, byte offset, byte size of each image)
indexes the tar, written before the tar is renamed into place. `shards-{split}.json` lists the
shards and their sizes. Shards are written by a process pool, each to a temp name renamed when
complete; `node=i/n` makes this machine write every n-th shard only, so many machines share the job.

Training reads shards by index (`ShardImages`): any sampler's positions, one `pread` of the image's
bytes each, so class-balanced draws are spread over the epoch exactly as with image files, and a
resumed run continues bit-exact. 16M images are ~16k files instead of 16M (the load a shared file
system feels), at 16 bytes of index per image in memory. `shard_pipeline` reads shards as a
sequential stream (shard list -> seeded per-epoch shuffle -> this rank's part -> this DataLoader
worker's part -> tar members -> sample shuffle buffer -> decode + transform), for tools that read
everything once.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import webdataset as wds

from webly.core.config import check_choices, opt, parse_part
from webly.core.errors import WeblyError
from webly.core.files import atomic_path, write_atomic
from webly.core.progress import progress
from webly.data.images import bad_image_reason, decode_image, decode_tensor, resize_short_side
from webly.data.manifest import Manifest
from webly.data.paths import check_relative


@dataclass
class ShardConfig:
    split: Literal["train", "val", "test"] = opt("train", "manifest split to write")
    max_count: int = opt(1000, "images per shard")
    short_side: int = opt(256, "re-encode so the shorter side is at most this (never upscaled)")
    quality: int = opt(90, "JPEG quality of the re-encoded images")
    workers: int = opt(1, "processes writing shards in parallel")
    node: str = opt("0/1", "'i/n': this machine writes every n-th shard from the i-th")
    max_bad_fraction: float = opt(0.01,
                                  "error (after writing) when more images than this fraction "
                                  "cannot be decoded")

    def validate(self) -> None:
        if self.max_count < 1 or self.short_side < 1 or not 1 <= self.quality <= 100:
            raise WeblyError("shard: max_count and short_side must be positive, quality in 1..100")
        if not 0 <= self.max_bad_fraction <= 1:
            raise WeblyError("shard.max_bad_fraction must be within [0, 1]")
        parse_part(self.node, "shard.node")
        check_choices(self, "shard")


@dataclass
class ShardJob:
    index: int
    path: Path
    root: Path
    rows: list[dict[str, Any]]
    short_side: int
    quality: int


def _encode(job: ShardJob, rec: dict[str, Any]) -> bytes:
    img = decode_image(job.root / rec["path"], min_short_side=job.short_side)
    img = resize_short_side(img, job.short_side)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=job.quality)
    return buf.getvalue()


def _write_shard(job: ShardJob) -> tuple[int, int, Counter, list[str]]:
    """Write one shard; returns (index, images written, bad counts by reason, first bad paths)."""
    bad: Counter = Counter()
    bad_paths: list[str] = []
    written = 0
    with atomic_path(job.path) as tmp:
        with open(tmp, "wb") as f, wds.TarWriter(f, mtime=0) as tar:
            for rec in job.rows:
                try:
                    data = _encode(job, rec)
                except Exception as e:  # a bad web image is skipped and reported, never fatal
                    reason = bad_image_reason(e)
                    bad[reason] += 1
                    bad_paths.append(f"{rec['path']}: {reason}: {e}")
                    continue
                tar.write({"__key__": f"{rec['row']:09d}", "jpg": data,
                           "json": json.dumps(rec, ensure_ascii=False).encode()})
                written += 1
        buf = io.BytesIO()
        np.save(buf, member_index(tmp))
        # before the tar: a shard in place implies its index
        write_atomic(index_path(job.path), buf.getvalue())
    return job.index, written, bad, bad_paths


def index_path(shard: str | Path) -> Path:
    shard = Path(shard)
    return shard.with_name(shard.name.removesuffix(".tar") + ".idx.npy")


def member_index(shard: str | Path) -> np.ndarray:
    """int64 [n, 3]: (manifest row, data offset, size) of each image member, from tar headers."""
    out = []
    with tarfile.open(shard) as tar:
        for m in tar:
            check_relative(m.name, f"{shard}: member")
            if m.name.endswith(".jpg"):
                out.append((int(m.name.split(".")[0]), m.offset_data, m.size))
    return np.asarray(out, np.int64).reshape(-1, 3)


def _jobs(manifest: Manifest, out: Path, split: str, max_count: int, short_side: int,
          quality: int, node: int, nodes: int) -> Iterator[ShardJob]:
    rows: list[dict[str, Any]] = []
    index = row = 0
    for batch in manifest.iter_batches():
        for rec in batch.to_pylist():
            if rec["split"] == split:
                rows.append({"row": row, **rec})
            row += 1
            if len(rows) == max_count:
                if index % nodes == node:
                    yield ShardJob(index, out / f"{split}-{index:06d}.tar", manifest.root, rows,
                                   short_side, quality)
                rows, index = [], index + 1
    if rows and index % nodes == node:
        yield ShardJob(index, out / f"{split}-{index:06d}.tar", manifest.root, rows, short_side,
                       quality)


def write_shards(manifest_path: str | Path, out_dir: str | Path, cfg: ShardConfig | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write one split of a manifest as tar shards; returns a summary (counts, bad images)."""
    cfg = cfg or ShardConfig()
    cfg.validate()
    manifest = Manifest(manifest_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    node_i, nodes = parse_part(cfg.node, "shard.node")
    split, workers, short_side = cfg.split, cfg.workers, cfg.short_side
    t0 = time.time()
    shards, bad = [], Counter()
    jobs = _jobs(manifest, out, split, cfg.max_count, short_side, cfg.quality, node_i, nodes)
    with ProcessPoolExecutor(max(1, workers)) if workers > 1 else _Serial() as pool:
        for index, n, b, paths in progress(pool.map(_write_shard, jobs), desc=f"shard {split}",
                                           unit="shard"):
            shards.append({"name": f"{split}-{index:06d}.tar", "count": n})
            bad.update(b)
            for p in paths:
                log(f"skipped bad image {p}")
    name = f"shards-{split}.json" if nodes == 1 else f"shards-{split}.node{node_i}of{nodes}.json"
    listing = out / name
    summary = {"split": split, "shards": shards, "images": sum(s["count"] for s in shards),
               "bad_images": dict(bad), "short_side": short_side,
               "seconds": round(time.time() - t0, 2)}
    write_atomic(listing, json.dumps(summary, indent=1))
    n_bad = sum(bad.values())
    if n_bad > cfg.max_bad_fraction * (summary["images"] + n_bad):
        raise WeblyError(f"{n_bad} of {summary['images'] + n_bad} images could not be decoded "
                         "(more than "
                         f"max_bad_fraction {cfg.max_bad_fraction}): {dict(bad)}; see {listing}")
    return summary


class _Serial:
    """Stands in for a process pool when workers=1 (simpler tracebacks, no fork)."""

    def map(self, fn: Callable, it: Iterable) -> Iterator:
        return map(fn, it)

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *_: Any) -> None:
        pass


# -- reading ---------------------------------------------------------------------------------------
def shard_urls(shard_dir: str | Path, split: str = "train") -> list[str]:
    urls = sorted(str(p) for p in Path(shard_dir).glob(f"{split}-*.tar"))
    if not urls:
        raise WeblyError(f"no shards {split}-*.tar in {shard_dir} (write them with `webly shard`)")
    return urls


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torch.distributed if initialised, else torchrun's env, else (0,
    1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardList(wds.pipeline.IterableDataset):
    """This rank's shards for one epoch: a seeded shuffle shared by all ranks, then every
    world-th shard from `rank`, so ranks read disjoint shards and together read all of them."""

    def __init__(self, urls: list[str], *, seed: int = 0, shuffle: bool = True,
                 rank: int | None = None, world_size: int | None = None) -> None:
        self.urls, self.seed, self.shuffle, self.epoch = list(urls), seed, shuffle, 0
        r, w = dist_info()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        if len(self.urls) < self.world_size:
            raise WeblyError(f"{len(self.urls)} shards cannot feed {self.world_size} ranks: "
                             "write more, smaller shards (webly shard --max-count)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, str]]:
        urls = list(self.urls)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(urls)
        for url in urls[self.rank::self.world_size]:
            yield {"url": url}


def _decoder(transform: Callable | None, min_short_side: int | None) -> Callable:
    def decode(sample: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        img = decode_tensor(sample["jpg"], min_short_side=min_short_side)
        return (transform(img) if transform else img), json.loads(sample["json"])
    return decode


def _checked_key(sample: dict[str, Any]) -> dict[str, Any]:
    """A shard member named '../x' or '/x' is an error (webly's own shards use row numbers)."""
    check_relative(sample["__key__"], f"{sample.get('__url__', 'shard')}: member")
    return sample


def shard_pipeline(urls: list[str], *, transform: Callable | None = None, seed: int = 0,
                   shuffle_buffer: int = 1000, rank: int | None = None,
                   world_size: int | None = None,
                   min_short_side: int | None = None) -> wds.DataPipeline:
    """A sequential IterableDataset of (image, record) for a DataLoader; call
    `.shard_list.set_epoch(e)` each epoch."""
    shard_list = ShardList(urls, seed=seed, shuffle=shuffle_buffer > 0, rank=rank,
                           world_size=world_size)
    stages: list[Any] = [shard_list, wds.split_by_worker,
                         wds.tarfile_to_samples(handler=wds.warn_and_continue),
                         wds.map(_checked_key)]
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, rng=random.Random(seed)))
    stages.append(wds.map(_decoder(transform, min_short_side), handler=wds.warn_and_continue))
    pipe = wds.DataPipeline(*stages)
    pipe.shard_list = shard_list
    return pipe


class ShardImages:
    """Random access to the images of a set of manifest rows held in shards: `read(pos)` -> the
    JPEG bytes of `rows[pos]` (one open + pread; nothing held open, so it forks and pickles into
    DataLoader workers). Rows the shards lack (images skipped as bad when sharding) raise
    WeblyError on read and are counted as bad images by the training dataset."""

    def __init__(self, shard_dir: str | Path, rows: np.ndarray, split: str = "train") -> None:
        self.urls = shard_urls(shard_dir, split)
        parts = []
        for i, url in enumerate(self.urls):
            path = index_path(url)
            # written just before its tar: an index newer than its tar belongs to a rewrite that
            # did not finish, and shards from older versions have none; both are rebuilt by scan
            fresh = path.is_file() and path.stat().st_mtime <= Path(url).stat().st_mtime
            idx = np.load(path) if fresh else member_index(url)
            parts.append(np.column_stack([idx, np.full(len(idx), i, np.int64)]))
        allx = np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)
        allx = allx[np.argsort(allx[:, 0], kind="stable")]
        rows = np.asarray(rows, np.int64)
        at = np.minimum(np.searchsorted(allx[:, 0], rows), max(len(allx) - 1, 0))
        found = (allx[at, 0] == rows) if len(allx) else np.zeros(len(rows), bool)
        self.shard = np.where(found, allx[at, 3], -1).astype(np.int32)
        self.offset = allx[at, 1].astype(np.int64)
        self.size = allx[at, 2].astype(np.int32)
        self.rows, self.missing = rows, int((~found).sum())

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, pos: int) -> str:
        s = int(self.shard[pos])
        where = Path(self.urls[s]).name if s >= 0 else "no shard"
        return f"{where}:{int(self.rows[pos]):09d}.jpg"

    def read(self, pos: int) -> bytes:
        s = int(self.shard[pos])
        if s < 0:
            raise WeblyError(f"manifest row {int(self.rows[pos])} is not in the shards")
        fd = os.open(self.urls[s], os.O_RDONLY)
        try:
            data = os.pread(fd, int(self.size[pos]), int(self.offset[pos]))
        finally:
            os.close(fd)
        if len(data) != self.size[pos]:
            raise WeblyError(f"{self.urls[s]}: truncated (changed since it was indexed?)")
        return data


def read_shard_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON records of one shard, in order (for checks and tools; no image decoding)."""
    with tarfile.open(path) as tar:
        for member in tar:
            check_relative(member.name, f"{path}: member")
            if member.name.endswith(".json"):
                yield json.loads(tar.extractfile(member).read())


def run_shard(*, manifest: str, cfg: ShardConfig, out: Path) -> dict[str, Any]:
    """The `shard` stage; every skipped image is named on stderr."""
    return write_shards(manifest, out, cfg, log=lambda m: print(m, file=sys.stderr))
