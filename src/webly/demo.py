"""`webly demo`: the project's front door, run on generated data in a few minutes on a CPU.

Today it runs synth -> index -> shard -> tag (WT-Set) -> weigh (LW-Set) -> WT-Set pretraining ->
finetuning from it, and finetuning without pretraining for comparison, with the tiny CPU recipe
(configs/tiny/cpu.yaml settings), and prints what each produced. Prediction, pseudo-labels,
ensembles and the report join as they land.
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

TINY = dict(backbone="test_resnet", img_size=32, batch_size=32, accum_steps=1, lr=0.05,
            weight_decay=0.0, schedule="cosine", workers=2, log_every=5)


def _train_steps(out: Path, manifest: Path, tags: Path) -> dict[str, Any]:
    """WT pretrain -> finetune, and finetune from scratch: same finetuning budget."""
    from webly.data.manifest import Manifest
    from webly.train import TrainConfig, train
    from webly.trainsets import finetune_data, pretrain_data

    m = Manifest(manifest)
    runs = {"pretrain_wt": (out / "wt", lambda: train(pretrain_data(m, "wt", tags),
                                                        TrainConfig(epochs=3, **TINY), out / "wt", task="pretrain_wt")),
            "finetune_from_wt": (out / "ft_wt", lambda: train(finetune_data(m), TrainConfig(
                epochs=4, pretrained=str(out / "wt/ckpt/last.pt"), **TINY), out / "ft_wt", task="finetune")),
            "finetune_scratch": (out / "ft_scratch", lambda: train(finetune_data(m), TrainConfig(
                epochs=4, **TINY), out / "ft_scratch", task="finetune"))}
    result = {}
    for name, (run, fn) in runs.items():
        summary = run / "train.summary.json"
        result[name] = json.loads(summary.read_text()) if summary.is_file() else fn()
    result["val_top1"] = {k: result[k].get("val_top1") for k in ("finetune_scratch", "finetune_from_wt")}
    return result


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
    steps.update(_train_steps(out, manifest, tags))
    steps["seconds"] = round(time.time() - t0, 2)
    print(f"demo run directory: {out.resolve()}")
    return steps
