"""`webly demo`: the project's front door, run on generated data in a few minutes on a CPU.

Today it runs synth -> index -> shard -> tag (WT-Set) -> weigh (LW-Set), and prints what each
produced. Later stages (pretrain, finetune, predict, evaluate) join as they land.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from webly.config import save_config
from webly.data.index import IndexConfig, index_dataset
from webly.data.shards import ShardConfig, write_shards
from webly.semantics import WeighConfig, weigh
from webly.synth import SynthConfig, generate
from webly.tagging import TagConfig, tag


def run_demo(out: Path, *, fresh: bool = False) -> dict[str, Any]:
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    steps: dict[str, Any] = {}
    data = out / "data"
    synth_cfg = SynthConfig()
    if not (data / "synth.summary.json").is_file():
        recs = generate(data, synth_cfg)
        save_config(synth_cfg, data / "synth.config.yaml", "synth")
        (data / "synth.summary.json").write_text(json.dumps({s: len(r) for s, r in recs.items()}))
    steps["synth"] = json.loads((data / "synth.summary.json").read_text())
    manifest = out / "manifest.parquet"
    if not manifest.is_file():
        steps["index"] = index_dataset(data, manifest, IndexConfig())
    shards = out / "shards"
    if not (shards / "shards-train.json").is_file():
        steps["shard"] = write_shards(manifest, shards, ShardConfig(max_count=256, short_side=64),
                                      log=lambda m: None)
    tags = out / "tags"
    if not (tags / "stats.json").is_file():
        steps["tag"] = tag(manifest, tags, TagConfig(min_count=3, workers=2))
    weights = out / "weights"
    if not (weights / "stats.json").is_file():
        steps["weigh"] = weigh(manifest, tags, weights, WeighConfig())
    steps["seconds"] = round(time.time() - t0, 2)
    print(f"demo run directory: {out.resolve()}")
    return steps
