"""`webly shard` -> shard loader: same records, decodable images, disjoint rank/worker splits."""

import json
import os
import tarfile

import pytest
import torch

from webly.app.cli import main
from webly.core.errors import WeblyError
from webly.data.images import train_transform
from webly.data.manifest import Manifest
from webly.data.shards import (
    ShardConfig,
    ShardList,
    read_shard_records,
    shard_pipeline,
    shard_urls,
    write_shards,
)


@pytest.fixture(scope="module")
def shards(synth_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    summary = write_shards(synth_manifest, out, ShardConfig(max_count=40, short_side=24, workers=2))
    return out, summary


def test_shards_hold_every_train_record(shards, synth_manifest):
    out, summary = shards
    train = [r for r in Manifest(synth_manifest).iter_records() if r.split == "train"]
    assert summary["images"] == len(train) and summary["bad_images"] == {}
    got = [rec for url in shard_urls(out) for rec in read_shard_records(url)]
    assert [g["id"] for g in got] == [r.id for r in train]
    assert all(g["title"] == r.title and g["label"] == r.label for g, r in zip(got, train,
                                                                               strict=True))
    listing = json.loads((out / "shards-train.json").read_text())
    assert sum(s["count"] for s in listing["shards"]) == len(train)


def test_loader_yields_same_records_and_decodable_images(shards, synth_manifest):
    out, _ = shards
    train_ids = {r.id for r in Manifest(synth_manifest).iter_records() if r.split == "train"}
    pipe = shard_pipeline(shard_urls(out), transform=train_transform(16), shuffle_buffer=10)
    samples = list(pipe)
    assert {rec["id"] for _, rec in samples} == train_ids and len(samples) == len(train_ids)
    img, _ = samples[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 16, 16)
    # images were re-encoded with the shorter side at most 24
    raw = list(shard_pipeline(shard_urls(out), shuffle_buffer=0))
    assert max(min(im.shape[-2:]) for im, _ in raw) <= 24


def test_loader_in_dataloader_workers(shards):
    out, summary = shards
    pipe = shard_pipeline(shard_urls(out), transform=train_transform(16), shuffle_buffer=0)
    loader = torch.utils.data.DataLoader(pipe, batch_size=8, num_workers=2,
                                         collate_fn=lambda b: [r["id"] for _, r in b])
    ids = [i for batch in loader for i in batch]
    assert len(ids) == len(set(ids)) == summary["images"]


def test_ranks_read_disjoint_shards_that_cover_all():
    urls = [f"s{i}.tar" for i in range(10)]
    for epoch in (0, 1):
        parts = []
        for rank in range(3):
            sl = ShardList(urls, seed=1, rank=rank, world_size=3)
            sl.set_epoch(epoch)
            parts.append([d["url"] for d in sl])
        flat = [u for p in parts for u in p]
        assert sorted(flat) == sorted(urls) and len(flat) == len(set(flat))
    a, b = ShardList(urls, seed=1, rank=0, world_size=1), ShardList(urls, seed=1, rank=0,
                                                                    world_size=1)
    b.set_epoch(1)
    assert list(a) != list(b)  # reshuffled per epoch
    with pytest.raises(WeblyError, match="cannot feed"):
        ShardList(urls[:2], rank=0, world_size=3)


def test_node_split_and_bad_options(synth_manifest, tmp_path):
    s0 = write_shards(synth_manifest, tmp_path, ShardConfig(max_count=30, node="0/2"))
    s1 = write_shards(synth_manifest, tmp_path, ShardConfig(max_count=30, node="1/2"))
    names0, names1 = {s["name"] for s in s0["shards"]}, {s["name"] for s in s1["shards"]}
    assert names0.isdisjoint(names1) and (tmp_path / "shards-train.node1of2.json").is_file()
    assert s0["images"] + s1["images"] == len([r for r in Manifest(synth_manifest).iter_records()
                                               if r.split == "train"])
    for node in ("2/2", "x"):
        with pytest.raises(WeblyError, match="shard.node"):
            write_shards(synth_manifest, tmp_path, ShardConfig(node=node))


def test_bad_image_is_skipped_and_counted(synth_small, synth_manifest, tmp_path, capsys):
    root, records = synth_small
    victim = root / records["train"][0].path
    saved = victim.read_bytes()
    try:
        victim.write_bytes(b"not a jpeg")
        assert main(["shard", str(synth_manifest), "-o", str(tmp_path), "--max-count", "1000",
                     "--max-bad-fraction", "0.5"]) == 0
        captured = capsys.readouterr()
        assert "skipped bad image" in captured.err and records["train"][0].path in captured.err
        summary = json.loads((tmp_path / "shard.summary.json").read_text())
        assert summary["bad_images"] == {"not an image": 1}
        assert summary["images"] == len(records["train"]) - 1
    finally:
        victim.write_bytes(saved)


def test_shard_index_reads_each_image_by_offset(shards, synth_manifest):
    import numpy as np

    from webly.data.shards import ShardImages, index_path, member_index

    out, summary = shards
    urls = shard_urls(out)
    assert all(index_path(u).is_file() for u in urls)
    members = {}
    for url in urls:
        with tarfile.open(url) as tar:
            for mem in tar:
                if mem.name.endswith(".jpg"):
                    members[int(mem.name.split(".")[0])] = tar.extractfile(mem).read()
    rows = np.array(sorted(members)[::-1] + [10**6])  # any order; one row the shards lack
    images = ShardImages(out, rows)
    assert images.missing == 1 and len(images) == len(rows)
    assert all(images.read(i) == members[r] for i, r in enumerate(rows[:-1]))
    with pytest.raises(WeblyError, match="not in the shards"):
        images.read(len(rows) - 1)
    # shards written before the index existed are indexed by scanning their headers
    idx = index_path(urls[0])
    saved = np.load(idx)
    idx.unlink()
    try:
        assert np.array_equal(member_index(urls[0]), saved)
        assert ShardImages(out, rows).read(0) == members[rows[0]]
    finally:
        np.save(idx, saved)
    # an index newer than its tar (a rewrite cut between the two) is not trusted
    first = int(saved[0, 0])  # a row of shard 0
    np.save(idx, saved[::-1] + 512)
    t = os.stat(urls[0]).st_mtime
    os.utime(idx, (t + 10, t + 10))
    try:
        assert ShardImages(out, np.array([first])).read(0) == members[first]
    finally:
        np.save(idx, saved)
        os.utime(idx, (t - 10, t - 10))
