"""`webly run --nproc-per-node 2`: training and prediction steps under torchrun (2 gloo processes on
the CPU), the rest in-process; a step killed inside torchrun resumes when the recipe is rerun."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from webly.app.launch import Launch, command
from webly.app.stages import BY_NAME
from webly.data.predictions import load_predictions

TRAIN = dict(backbone="test_resnet", img_size=32, batch_size=8, accum_steps=1, workers=0,
             ckpt_every_steps=1, tensorboard=False, log_every=1, sampler="shuffle")
RECIPE = {"steps": [
    {"id": "data", "stage": "synth", "families": 2, "per_family": 2, "max_per_class": 16,
     "min_per_class": 12, "val_per_class": 3, "test_per_class": 1, "image_width": 32,
     "image_height": 32},
    {"id": "manifest", "stage": "index", "root": "@data"},
    {"id": "ft", "stage": "finetune", "manifest": "@manifest", "epochs": 2, **TRAIN},
    {"id": "val", "stage": "predict", "model": "@ft", "manifest": "@manifest", "split": "val",
     "workers": 0},
    {"id": "score", "stage": "evaluate", "preds": "@val", "manifest": "@manifest"},
]}


def _run(recipe, out, port, fault=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WEBLY_PROGRESS": "0"}
    if fault:
        env["WEBLY_FAULT"] = fault
    cmd = [sys.executable, "-m", "webly.app.cli", "run", str(recipe), "-o", str(out),
           "--nproc-per-node", "2", "--master-port", str(port)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_training_and_prediction_steps_run_under_torchrun_and_resume(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "run"
    r = _run(recipe, out, 29561, fault="train.ckpt:3")  # rank 0 dies after its 3rd checkpoint
    assert r.returncode == 2 and "torchrun finetune exited" in r.stderr, r.stderr[-3000:]
    r = _run(recipe, out, 29562)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ft (finetune): resume" in r.stderr
    summary = json.loads((out / "ft/step.json").read_text())["summary"]
    assert summary["world_size"] == 2
    steps = [json.loads(x)["step"] for x in (out / "ft/metrics.jsonl").read_text().splitlines()
             if '"step"' in x]
    assert steps.count(1) == 1 and steps[-1] == summary["steps"]  # resumed, not restarted
    p = load_predictions(out / "val")
    assert len(p.ids) == 12 and list(p.rows) == sorted(p.rows)  # both ranks' parts, in order
    assert json.loads((out / "score/metrics.json").read_text())["images"] == 12
    assert (out / "ft/finetune.launch.yaml").is_file()


def test_the_command_line_of_a_launched_step(tmp_path):
    cmd = command(BY_NAME["pretrain"], {"manifest": "m.parquet", "set": "lw",
                                        "label_weights": "w"}, tmp_path / "c.yaml", tmp_path / "o",
                  Launch(8, 2, 1, "node0", 29400), resume=True)
    assert cmd[3:8] == ["--nproc-per-node=8", "--nnodes=2", "--node-rank=1",
                        "--master-addr=node0", "--master-port=29400"]
    assert cmd[-11:] == ["pretrain", "m.parquet", "--set", "lw", "--label-weights", "w", "-o",
                         str(tmp_path / "o"), "--config", str(tmp_path / "c.yaml"), "--resume"]


@pytest.mark.slow
def test_two_nodes_share_the_run_folder(tmp_path):
    """`--nnodes 2`: two `webly run` processes on one machine stand in for two nodes; node 1 joins
    the torchrun of each training and prediction step and waits for node 0's other steps."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WEBLY_PROGRESS": "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "webly.app.cli", "run", str(recipe), "-o",
                               str(out), "--nproc-per-node", "1", "--nnodes", "2", "--node-rank",
                               str(rank), "--master-addr", "127.0.0.1", "--master-port", "29571"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert json.loads((out / "ft/step.json").read_text())["summary"]["world_size"] == 2
    p = load_predictions(out / "val")
    assert len(p.ids) == 12 and list(p.rows) == sorted(p.rows)  # both nodes' parts, in order
    assert json.loads((out / "score/metrics.json").read_text())["images"] == 12
