"""`webly plan`: image passes and GPU-hours per step, from the published or a measured table."""

import json
from pathlib import Path

import pytest

from webly.app.cli import main
from webly.app.pipeline import load_recipe
from webly.app.plan import PUBLISHED, plan
from webly.core.errors import WeblyError
from webly.training.config import TrainConfig

RECIPE = {"steps": [
    {"id": "m", "stage": "index", "root": "data"},
    {"id": "ft", "stage": "finetune", "manifest": "@m", "backbone": "resnest101e", "img_size": 256,
     "samples_per_epoch": 1000, "epochs": 9},
    {"id": "p", "stage": "predict", "model": "@ft", "manifest": "@m", "split": "val",
     "tta": "flip"},
]}


def test_costs_follow_from_the_table():
    rows, source = plan(RECIPE, {"val": 3000})
    by = {r.step: r for r in rows}
    assert by["m"].gpu_hours == 0
    assert by["ft"].passes == 9000 and by["ft"].img_s == PUBLISHED["resnest101e"][0]
    assert by["ft"].gpu_hours == pytest.approx(9000 / 254 / 3600)
    # prediction: 2 views (flip), a forward pass a third of a training step
    assert by["p"].img_s == pytest.approx(254 * 3 / 2) and by["p"].passes == 3000
    assert "published" in source


def test_a_measured_table_replaces_the_published_one(tmp_path):
    f = tmp_path / "rates.json"
    f.write_text(json.dumps({"resnest101e@128": 1000.0}))
    rows, source = plan(RECIPE, {"val": 3000}, str(f))
    # scaled by multiply-adds (the cost model), which follow the pixels to within a percent
    assert rows[1].img_s == pytest.approx(1000 * (128 / 256) ** 2, rel=0.01) and str(f) in source
    f.write_text(json.dumps({"resnet50@224": 10.0}))
    with pytest.raises(WeblyError, match="no throughput for 'resnest101e'"):
        plan(RECIPE, None, str(f))


def test_the_system_recipe_is_a_plan_a_team_could_run(capsys):
    recipe = Path(__file__).parents[1] / "configs/webvision2/system.yaml"
    rows, _ = plan(recipe)
    assert sum(r.gpu_hours for r in rows) <= 3000
    _, steps = load_recipe(recipe)
    sizes: dict[str, set] = {}
    for s in steps:
        if s.stage in ("pretrain", "finetune"):
            cfg = TrainConfig(**{k: v for k, v in s.options.items() if not str(v).startswith("@")})
            assert cfg.samples_per_epoch, s.id
            if cfg.schedule == "step":  # the lr decays inside the run, not after it
                assert cfg.step_epochs < cfg.epochs, s.id
            sizes.setdefault(cfg.backbone, set()).add(cfg.img_size)
    assert all(len(v) == 1 for b, v in sizes.items() if b != "resnest200e")
    assert sizes["resnest200e"] == {256, 320}  # trained at 256, continued at 320
    assert main(["plan", str(recipe)]) == 0
    assert "Total: " in capsys.readouterr().out
