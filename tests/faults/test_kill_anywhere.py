"""Fault class 1, kill anywhere: `webly run` over synth -> index -> tag -> weigh -> pretrain ->
finetune -> predict -> evaluate, SIGKILLed at seeded points inside each step (the manifest written
but not renamed, after a tagging part, between weighing's outputs, after a training checkpoint,
twice in finetuning, after a predicted batch), then rerun: every output equals an uninterrupted
run's, bit for bit. The process kills itself where the code says it has reached the point
(`webly.core.faults`), so the outcome never depends on how fast the machine is."""

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import yaml
from safetensors.torch import load_file

from webly.data.manifest import Manifest
from webly.data.predictions import load_predictions

pytestmark = pytest.mark.slow

TRAIN = dict(backbone="test_resnet", img_size=32, batch_size=8, accum_steps=1, lr=0.05, workers=0,
             ckpt_every_steps=1, keep_last=2, tensorboard=False, log_every=1)
RECIPE = {"steps": [
    {"id": "data", "stage": "synth", "families": 2, "per_family": 2, "max_per_class": 24,
     "min_per_class": 12, "val_per_class": 4, "test_per_class": 1, "image_width": 32,
     "image_height": 32},
    {"id": "manifest", "stage": "index", "root": "@data"},
    {"id": "tags", "stage": "tag", "manifest": "@manifest", "min_count": 2, "max_df": 0.5,
     "chunk_rows": 8,
     "workers": 1},
    {"id": "weights", "stage": "weigh", "manifest": "@manifest", "tags": "@tags"},
    {"id": "lw", "stage": "pretrain", "set": "lw", "manifest": "@manifest",
     "label_weights": "@weights", "epochs": 1, **TRAIN},
    {"id": "ft", "stage": "finetune", "manifest": "@manifest", "pretrained": "@lw", "epochs": 2,
     **TRAIN},
    {"id": "val", "stage": "predict", "model": "@ft", "manifest": "@manifest", "split": "val",
     "workers": 0},
    {"id": "score", "stage": "evaluate", "preds": "@val", "manifest": "@manifest"},
]}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WEBLY_PROGRESS": "0"}


def _run(recipe, out, fault: str | None = None) -> int:
    cmd = [sys.executable, "-m", "webly.app.cli", "run", str(recipe), "-o", str(out)]
    env = {**ENV, "WEBLY_FAULT": fault} if fault else ENV
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    assert r.returncode in (0, -signal.SIGKILL), r.stderr.decode()[-3000:]
    return r.returncode


def test_killed_anywhere_then_rerun_equals_uninterrupted(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    assert _run(recipe, tmp_path / "ref") == 0
    rng = random.Random(7)
    # in pipeline order; each attempt resumes what the last one left and dies at its point
    faults = ["manifest/manifest.close:1", f"tags/tag.part:{rng.randint(1, 3)}",
              "weights/weigh.write:1",
              f"lw/train.ckpt:{rng.randint(1, 3)}", f"ft/train.ckpt:{rng.randint(1, 4)}",
              f"ft/train.ckpt:{rng.randint(1, 2)}", "val/predict.batch:1"]
    for fault in faults:
        assert _run(recipe, tmp_path / "cut",
                    fault) == -signal.SIGKILL, f"{fault} was never reached"
    assert _run(recipe, tmp_path / "cut") == 0
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    def same_npz(name):
        return (sp.load_npz(ref / name) != sp.load_npz(cut / name)).nnz == 0

    assert Manifest(ref / "manifest/manifest.parquet").read().equals(
        Manifest(cut / "manifest/manifest.parquet").read())
    assert same_npz("tags/keywords.npz")
    assert (ref / "tags/vocab.tsv").read_text() == (cut / "tags/vocab.tsv").read_text()
    assert same_npz("weights/label_weights.npz")
    for run in ("lw", "ft"):
        a, b = (load_file(d / run / "model.safetensors") for d in (ref, cut))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), run  # bit for bit
    pa, pb = load_predictions(ref / "val"), load_predictions(cut / "val")
    assert pa.ids == pb.ids and np.array_equal(pa.top_i, pb.top_i)
    assert np.array_equal(pa.top_p, pb.top_p) and np.array_equal(pa.rest, pb.rest)
    ma, mb = (json.loads((d / "score/metrics.json").read_text()) for d in (ref, cut))
    assert ma["top1"] == mb["top1"]
