"""Fault class 4, bad configs: wrong types, unknown keys, negative sizes are one-line errors; a
resume from a checkpoint made with another config warns on harmless differences, refuses
incompatible ones unless forced; a recipe step whose options changed after an interruption starts
over instead of resuming someone else's checkpoint."""

import pytest

from webly.app.cli import main
from webly.app.demo.synth import SynthConfig, generate
from webly.app.pipeline import run
from webly.core.errors import WeblyError
from webly.data.index import IndexConfig, index_dataset
from webly.data.manifest import Manifest
from webly.training.config import TrainConfig
from webly.training.engine import train
from webly.training.trainsets import finetune_data


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    generate(d / "wv", SynthConfig(families=2, per_family=2, max_per_class=20, min_per_class=20,
                                   val_per_class=2, test_per_class=1, image_width=32,
                                   image_height=32))
    index_dataset(d / "wv", d / "m.parquet", IndexConfig())
    return d


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(backbone="test_resnet", img_size=32, epochs=1, batch_size=16,
                                 accum_steps=1, workers=0, tensorboard=False), **kw})


@pytest.mark.parametrize("flags,msg", [
    (["--epochs", "two"], "finetune.epochs: expected an integer"),
    (["--batch-size", "-4"], "must be positive"),
    (["--lr", "fast"], "finetune.lr: expected a number"),
    (["--max-bad-fraction", "2"], "max_bad_fraction"),
    (["--crop-scale", "0"], "crop_scale"),
])
def test_bad_flags_are_one_line_errors(small, tmp_path, capsys, flags, msg):
    code = main(["finetune", str(small / "m.parquet"), "-o", str(tmp_path / "r"), "--backbone",
                 "test_resnet",
                 *flags])
    err = capsys.readouterr().err
    assert code == 2 and msg in err


def test_unknown_key_in_a_config_file(small, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("finetune:\n  epoch: 3\n")
    code = main(["finetune", str(small / "m.parquet"), "-o", str(tmp_path / "r"), "--config",
                 str(tmp_path / "c.yaml")])
    assert code == 2 and "epoch" in capsys.readouterr().err


def test_resume_with_changed_options(small, tmp_path, capfd):
    data = finetune_data(Manifest(small / "m.parquet"))
    train(data, _cfg(lr=0.01), tmp_path, task="finetune")
    train(data, _cfg(epochs=2, lr=0.02), tmp_path, task="finetune", resume=True)  # harmless: warned
    assert "resuming with a changed option: lr: 0.01 -> 0.02" in capfd.readouterr().err
    with pytest.raises(WeblyError, match=r"another config: batch_size 16 -> 8 .*--force"):
        train(data, _cfg(epochs=3, batch_size=8), tmp_path, task="finetune", resume=True)
    with pytest.raises(WeblyError, match="backbone 'test_resnet' -> 'test_vit'"):
        train(data, _cfg(epochs=3, backbone="test_vit"), tmp_path, task="finetune", resume=True)
    s = train(data, _cfg(epochs=3, batch_size=8), tmp_path, task="finetune", resume=True,
              force=True)
    assert s["epochs_done"] == 3


def test_recipe_step_changed_after_an_interruption_starts_over(small, tmp_path):
    step = {"id": "ft", "stage": "finetune", "manifest": str(small / "m.parquet"),
            "backbone": "test_resnet",
            "img_size": 32, "epochs": 1, "batch_size": 16, "accum_steps": 1, "workers": 0}
    run({"steps": [step]}, tmp_path)
    (tmp_path / "ft/step.json").unlink()  # as if killed after its checkpoint
    stale = tmp_path / "ft/stale.txt"
    stale.write_text("from the old options")
    run({"steps": [{**step, "batch_size": 8}]}, tmp_path)  # would be refused if it resumed
    assert not stale.exists() and (tmp_path / "ft/step.json").is_file()
