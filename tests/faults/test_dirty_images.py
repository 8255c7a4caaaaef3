"""Fault class 2, dirty images: training and prediction finish; each bad file is skipped, logged
once with its path and reason, counted by reason; too many bad files is an error."""

import numpy as np
import pytest
from dirty import write_dirty
from PIL import Image

from webly.core.errors import WeblyError
from webly.data.manifest import Manifest, write_manifest
from webly.data.predictions import load_predictions
from webly.data.records import Record
from webly.inference.predict import PredictConfig, predict
from webly.training.config import TrainConfig
from webly.training.engine import train
from webly.training.trainsets import finetune_data

CLASSES = ["n02129165", "n02129604"]  # lion, tiger
BAD = {"truncated": 5, "empty file": 1, "too many pixels": 1, "missing file": 1, "not an image": 1}


@pytest.fixture(scope="module")
def dirty_manifest(tmp_path_factory):
    """100 good JPEGs, 5% truncated, 1% zero bytes, and one of each special file, in train and
    test."""
    root = tmp_path_factory.mktemp("dirty")
    rng = np.random.default_rng(0)
    expected = write_dirty(root / "special")
    records = []
    for split in ("train", "test"):
        for i in range(100):
            y = i % 2
            img = np.full((40, 40, 3), 200 if y else 40, np.uint8) + rng.integers(0, 30, (40, 40,
                                                                                          3),
                                                                                          dtype=np.uint8)
            Image.fromarray(img).save(root / f"{split}{i}.jpg", quality=90)
            records.append(Record(id=f"{split}{i}", path=f"{split}{i}.jpg", split=split, label=y))
        for k in range(5):
            good = (root / f"{split}{k}.jpg").read_bytes()
            (root / f"{split}_trunc{k}.jpg").write_bytes(good[: len(good) // 3])
            records.append(Record(id=f"{split}_trunc{k}", path=f"{split}_trunc{k}.jpg", split=split,
                                  label=0))
        for name in expected:
            if name != "truncated.jpg":
                records.append(Record(id=f"{split}_{name}", path=f"special/{name}", split=split,
                                      label=1))
    m = root / "manifest.parquet"
    write_manifest(m, records, {"root": str(root), "classes": CLASSES})
    return m


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(backbone="test_resnet", img_size=32, epochs=2, batch_size=16,
                                 accum_steps=1,
                                 lr=0.05, workers=2, tensorboard=False, log_every=5,
                                 sampler="shuffle"), **kw})


def test_training_skips_logs_once_and_counts_by_reason(dirty_manifest, tmp_path, capfd):
    summary = train(finetune_data(Manifest(dirty_manifest)), _cfg(max_bad_fraction=0.1), tmp_path,
                    task="finetune")
    err = capfd.readouterr().err
    assert summary["epochs_done"] == 2 and (tmp_path / "model.safetensors").is_file()
    assert summary["bad_images"] == BAD
    logged = [ln for ln in err.splitlines() if "skipped bad image" in ln]
    assert len(logged) == len(set(logged)) == sum(BAD.values())  # once each, over two epochs
    assert any("special/bomb.jpg: too many pixels" in ln for ln in logged)
    assert len((tmp_path / "bad_images.tsv").read_text().splitlines()) == sum(BAD.values())


def test_too_many_bad_images_is_an_error(dirty_manifest, tmp_path):
    with pytest.raises(WeblyError, match="max_bad_fraction"):
        train(finetune_data(Manifest(dirty_manifest)), _cfg(epochs=1), tmp_path, task="finetune")


def test_prediction_marks_bad_images_and_keeps_every_row(dirty_manifest, tmp_path):
    train(finetune_data(Manifest(dirty_manifest)), _cfg(epochs=1, max_bad_fraction=0.1),
          tmp_path / "run",
          task="finetune")
    s = predict(tmp_path / "run", dirty_manifest, tmp_path / "p",
                PredictConfig(split="test", workers=0, max_bad_fraction=0.1))
    p = load_predictions(tmp_path / "p")
    assert s["images"] == len(p.ids) == 100 + 5 + 4 + 4  # the missing file's row is there too
    assert s["bad_images"] == BAD
    skipped = {i: st for i, st in zip(p.ids, p.status, strict=True) if st != "ok"}
    assert skipped["test_missing.jpg"] == "skipped: missing file"
    assert {"test_alpha.png", "test_cmyk.jpg", "test_sixteen.png",
            "test_anim.gif"}.isdisjoint(skipped)
    with pytest.raises(WeblyError, match="predictions written"):
        predict(tmp_path / "run", dirty_manifest, tmp_path / "p2", PredictConfig(split="test",
                                                                                 workers=0))
    assert (tmp_path / "p2/predictions.parquet").is_file()  # written, then the error: nothing lost
