"""Fault class 1, kill anywhere: `webly run` over synth -> index -> tag -> weigh -> pretrain ->
finetune -> predict -> evaluate, SIGKILLed at seeded random moments (inside tagging, weighing,
training steps, checkpoint writes, validation, prediction), then rerun: every output equals an
uninterrupted run's, bit for bit."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp
import yaml
from safetensors.torch import load_file

from webly.data.manifest import Manifest
from webly.predict import load_predictions

TRAIN = dict(backbone="test_resnet", img_size=32, batch_size=8, accum_steps=1, lr=0.05, workers=0,
             ckpt_every_steps=1, keep_last=2, tensorboard=False, log_every=1)
RECIPE = {"steps": [
    {"id": "data", "stage": "synth", "families": 2, "per_family": 2, "max_per_class": 24,
     "min_per_class": 12, "val_per_class": 4, "test_per_class": 1, "image_width": 32, "image_height": 32},
    {"id": "manifest", "stage": "index", "root": "@data"},
    {"id": "tags", "stage": "tag", "manifest": "@manifest", "min_count": 2, "max_df": 0.5, "chunk_rows": 8,
     "workers": 1},
    {"id": "weights", "stage": "weigh", "manifest": "@manifest", "tags": "@tags"},
    {"id": "lw", "stage": "pretrain", "set": "lw", "manifest": "@manifest", "weights": "@weights", "epochs": 1, **TRAIN},
    {"id": "ft", "stage": "finetune", "manifest": "@manifest", "pretrained": "@lw", "epochs": 2, **TRAIN},
    {"id": "val", "stage": "predict", "model": "@ft", "manifest": "@manifest", "split": "val", "workers": 0},
    {"id": "score", "stage": "evaluate", "preds": "@val", "manifest": "@manifest"},
]}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WEBLY_PROGRESS": "0"}


def _run(recipe, out) -> None:
    cmd = [sys.executable, "-m", "webly.cli", "run", str(recipe), "-o", str(out)]
    r = subprocess.run(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-3000:]


def _kill_when(recipe, out, ready, delay: float, timeout: float = 300) -> bool:
    """Start the recipe; SIGKILL it `delay` s after `ready()` holds; False if it ended first."""
    cmd = [sys.executable, "-m", "webly.cli", "run", str(recipe), "-o", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.wait()
    return False


def _started(out, step):
    return lambda: (out / step / "step.started").is_file() and not (out / step / "step.json").is_file()


def _ckpts(out, step, n):
    return lambda: len(list((out / step / "ckpt").glob("step-*.pt"))) >= n if (out / step / "ckpt").is_dir() else False


def test_killed_anywhere_then_rerun_equals_uninterrupted(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    _run(recipe, tmp_path / "ref")
    rng = random.Random(7)
    killed_in = []
    cut = tmp_path / "cut"
    # in pipeline order, each after a seeded random delay into the step: index, tagging, weighing,
    # pretraining, finetuning around its checkpoint writes (twice: the second hits the resumed
    # run) and validation, prediction
    targets = [("manifest", _started(cut, "manifest")), ("tags", _started(cut, "tags")),
               ("weights", _started(cut, "weights")), ("lw", _ckpts(cut, "lw", 1)),
               ("ft", _ckpts(cut, "ft", 1)), ("ft", _ckpts(cut, "ft", 2)), ("val", _started(cut, "val"))]
    for step, ready in targets:
        if _kill_when(recipe, cut, ready, rng.uniform(0.0, 0.3)):
            killed_in.append(step)
    _run(recipe, tmp_path / "cut")
    print("killed in:", killed_in)
    assert {"tags", "lw", "ft"} <= set(killed_in)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert Manifest(ref / "manifest/manifest.parquet").read().equals(Manifest(cut / "manifest/manifest.parquet").read())
    assert (sp.load_npz(ref / "tags/keywords.npz") != sp.load_npz(cut / "tags/keywords.npz")).nnz == 0
    assert (ref / "tags/vocab.tsv").read_text() == (cut / "tags/vocab.tsv").read_text()
    assert (sp.load_npz(ref / "weights/label_weights.npz") != sp.load_npz(cut / "weights/label_weights.npz")).nnz == 0
    for run in ("lw", "ft"):
        a, b = load_file(ref / run / "model.safetensors"), load_file(cut / run / "model.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), run  # bit for bit
    pa, pb = load_predictions(ref / "val"), load_predictions(cut / "val")
    assert pa.ids == pb.ids and np.array_equal(pa.top_i, pb.top_i) and np.array_equal(pa.probs, pb.probs)
    ma, mb = (json.loads((d / "score/metrics.json").read_text()) for d in (ref, cut))
    assert ma["top1"] == mb["top1"]
