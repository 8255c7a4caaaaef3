"""Data layer: the record type, dataset readers, the Parquet manifest, tar shards, decoding."""

from webly.data.datasets import ImageFileDataset
from webly.data.folder import FolderReader
from webly.data.images import decode_image, eval_transform, normalize_batch, train_transform
from webly.data.index import IndexConfig, index_dataset, open_reader
from webly.data.manifest import Manifest, ManifestWriter, write_manifest
from webly.data.records import Record, Source
from webly.data.shards import (
    ShardConfig,
    read_shard_records,
    shard_pipeline,
    shard_urls,
    write_shards,
)
from webly.data.webvision import WebVisionReader

__all__ = [
    "FolderReader", "ImageFileDataset", "IndexConfig", "ShardConfig", "Manifest", "ManifestWriter", "Record", "Source",
    "WebVisionReader", "decode_image", "eval_transform", "index_dataset", "normalize_batch",
    "open_reader", "read_shard_records", "shard_pipeline", "shard_urls", "train_transform",
    "write_manifest", "write_shards",
]
