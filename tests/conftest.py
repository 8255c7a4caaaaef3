"""Shared fixtures: one small generated WebVision dataset per test session, built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WEBLY_PROGRESS", "0")


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> tuple[Path, dict]:
    """A 12-concept WebVision 2.0 tree with 32x32 images and the records the generator wrote."""
    from webly.app.demo.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth") / "wv2"
    cfg = SynthConfig(families=3, per_family=4, max_per_class=20, min_per_class=4,
                      val_per_class=2, test_per_class=2, image_width=40, image_height=32, seed=3)
    return root, generate(root, cfg)


@pytest.fixture(scope="session")
def synth_manifest(synth_small, tmp_path_factory) -> Path:
    from webly.data.index import IndexConfig, index_dataset

    out = tmp_path_factory.mktemp("manifest") / "manifest.parquet"
    index_dataset(synth_small[0], out, IndexConfig())
    return out
