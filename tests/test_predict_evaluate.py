"""predict -> evaluate -> submit, with exact metric checks on hand-made predictions."""

import json

import numpy as np
import pytest

from webly.app.cli import main
from webly.core.errors import WeblyError
from webly.data.manifest import write_manifest
from webly.data.predictions import load_predictions, write_predictions
from webly.data.records import Record
from webly.inference.evaluate import evaluate, metrics, submit
from webly.inference.predict import PredictConfig, _views, predict, view_sizes


def _manifest(tmp_path, split="val", labels=(0, 0, 0, 1)):
    recs = [Record(id=f"{split}{i:06d}.jpg", path=f"x/{i}.jpg", split=split,
                   label=(lab if split != "test" else None))
            for i, lab in enumerate(labels)]
    recs += [Record(id="t.jpg", path="t.jpg", split="train", label=c) for c in (0, 0, 0, 1, 2)]
    m = tmp_path / "m.parquet"
    write_manifest(m, recs, {"root": str(tmp_path), "classes": ["n1", "n2", "n3"],
                             "class_names": ["a", "b", "c"]})
    return m


def _preds(tmp_path, ids, top, split="val", status=None):
    """Predictions for `ids`; each at the manifest row its name gives ("val000002.jpg": row 2)."""
    top = np.asarray(top, np.int32)
    rows = [int(i[-10:-4]) for i in ids]
    write_predictions(tmp_path, {"row": np.asarray(rows), "ids": ids,
                                 "status": status or ["ok"] * len(ids), "top_i": top,
                                 "top_p": np.full(top.shape, 0.2, np.float16)},
                      {"classes": ["n1", "n2", "n3"], "num_classes": 3, "split": split})
    return tmp_path


def test_plain_and_class_balanced_accuracy(tmp_path):
    m = _manifest(tmp_path)
    ids = [f"val{i:06d}.jpg" for i in range(4)]
    p = _preds(tmp_path / "p", ids, [[0, 1, 2, 0, 0], [0, 1, 2, 0, 0], [1, 0, 2, 0, 0], [0, 2, 1, 0,
                                                                                         0]])
    r = evaluate(p, m)
    assert r["top1"] == pytest.approx(0.5)  # 2 of 4 images
    assert r["balanced_top1"] == pytest.approx((2 / 3 + 0) / 2)  # class a: 2/3, class b: 0
    assert r["top5"] == 1.0 and r["most_confused"][0]["count"] == 1
    assert (p / "per_class.tsv").read_text().splitlines()[1].startswith("0\tn1\ta\t3\t3\t0.6667")
    assert (p / "per_class_accuracy.png").stat().st_size > 1000


def test_skipped_images_count_as_wrong():
    top = np.array([[0, 1], [1, 0]])
    m = metrics(top, np.array([True, False]), np.array([0, 1]), 2)
    assert m["top1"] == 0.5 and m["top5"] == 0.5


def test_missing_or_duplicate_ids_are_listed(tmp_path):
    m = _manifest(tmp_path)
    p = _preds(tmp_path / "p", ["val000000.jpg", "val000000.jpg", "val000001.jpg"], [[0] * 5] * 3)
    with pytest.raises(WeblyError,
                       match="1 image ids duplicated in the predictions, first: val000000.jpg"):
        evaluate(p, m)
    p = _preds(tmp_path / "q", ["val000000.jpg", "val000001.jpg"], [[0] * 5] * 2)
    with pytest.raises(WeblyError,
                       match="2 image ids without a prediction, first: val000002.jpg, "
                             "val000003.jpg"):
        evaluate(p, m)


def test_submission_matches_webvision_format(tmp_path):
    ids = ["test000001.jpg", "test000002.jpg"]
    p = _preds(tmp_path / "p", ids, [[4, 3, 2, 1, 0], [0, 1, 2, 3, 4]], split="test")
    assert main(["submit", str(p), "-o", str(tmp_path / "sub.txt")]) == 0
    want = "test000001.jpg 4 3 2 1 0\ntest000002.jpg 0 1 2 3 4\n"
    assert (tmp_path / "sub.txt").read_text() == want
    val = _preds(tmp_path / "v", ids, [[0] * 5] * 2, split="val")
    with pytest.raises(WeblyError, match="submit needs test"):
        submit(val, tmp_path / "x.txt")


@pytest.fixture(scope="module")
def trained(synth_small, synth_manifest, tmp_path_factory):
    from webly.data.manifest import Manifest
    from webly.training.config import TrainConfig
    from webly.training.engine import train
    from webly.training.trainsets import finetune_data

    run = tmp_path_factory.mktemp("run")
    train(finetune_data(Manifest(synth_manifest)), TrainConfig(
        backbone="test_resnet", img_size=32, batch_size=16, accum_steps=1, workers=0, epochs=1,
        tensorboard=False), run, task="finetune")
    return run


@pytest.mark.parametrize("tta", ["center", "flip", "flip_shift", "multiscale"])
def test_view_sizes_are_the_views_predicted(tta):
    """Compute is counted from view_sizes: it must be what _views feeds the model."""
    import torch

    for size in (16, 20, 23, 32, 224, 299, 380):
        got = [v.shape[-1] for v in _views(torch.zeros(1, 3, size, size), tta, size)]
        assert got == view_sizes(tta, size), (tta, size)
    expected = {"center": [20], "flip": [20, 20], "flip_shift": [20] * 6,
                "multiscale": [20, 20, 23, 23]}[tta]
    assert view_sizes(tta, 20) == expected  # the benchmark's labeller: two views at 20 px


def test_flip_shift_weighs_the_image_pair_as_much_as_the_shifted_pairs():
    """airbench's mirror + translate views: the unshifted pair half the vote, each shifted pair
    a quarter; a view-blind model gets its own probabilities back."""
    import torch

    from webly.inference.predict import Preprocess, probabilities

    class Column(torch.nn.Module):  # class: the brightest of the first three columns
        def forward(self, x):
            return 50 * torch.nn.functional.one_hot(x[:, 0].sum(1)[:, :3].argmax(1), 3).float()

    x = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    x[0, :, 3, 1] = 255  # a bright pixel in column 1: only the unshifted, unmirrored view says 1
    pre = Preprocess(size=8, crop_pct=1.0, mean=(0.0,) * 3, std=(1.0,) * 3)
    p = probabilities(Column(), x, pre, "flip_shift", torch.device("cpu"))
    assert torch.allclose(p.sum(1), torch.ones(1))
    assert p[0, 1] == pytest.approx(2 / 8, abs=1e-4)  # 2 of 8 (equal weights: 1 of 6)


@pytest.mark.parametrize("tta", ["center", "multiscale"])
def test_predict_writes_the_distribution_as_topk_and_rest(trained, synth_manifest, synth_small,
                                                           tmp_path, tta):
    root, records = synth_small
    bad = root / records["test"][1].path
    saved = bad.read_bytes()
    bad.write_bytes(b"broken")
    try:
        s = predict(trained, synth_manifest, tmp_path, PredictConfig(split="test", tta=tta,
                                                                     workers=0,
                                                                     max_bad_fraction=0.5))
    finally:
        bad.write_bytes(saved)
    p = load_predictions(tmp_path)
    assert s["images"] == len(records["test"]) == len(p.ids) and s["skipped_images"] == 1
    assert p.ids == [r.id for r in records["test"]] and p.status[1].startswith("skipped: ")
    # top_k 50 >= 12 classes: every class kept, most probable first, nothing left over
    assert p.top_i.shape == (len(p.ids), 12) and p.info["k"] == 12
    assert all(sorted(r) == list(range(12)) for r in p.top_i.tolist())
    assert np.allclose(p.top_p.sum(1), 1, atol=0.01) and np.allclose(p.rest, 0, atol=0.01)
    assert (np.diff(p.top_p, axis=1) <= 1e-3).all()
    cfg = PredictConfig(split="test", tta=tta, top_k=3, workers=0, max_bad_fraction=0.5)
    predict(trained, synth_manifest, tmp_path / "k3", cfg)
    p3 = load_predictions(tmp_path / "k3")
    ok = p.ok  # (the broken image was restored in between)
    assert p3.top_i.shape == (len(p.ids), 3) and np.array_equal(p3.top_i[ok], p.top_i[ok, :3])
    assert np.allclose(p3.rest, 1 - p3.top_p.sum(1), atol=2e-3)
    assert main(["evaluate", str(tmp_path), "--manifest", str(synth_manifest), "--labels",
                 str(root / "truth/test_labels.txt")]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["images"] == len(p.ids)


def test_predict_class_count_mismatch(trained, tmp_path):
    m = _manifest(tmp_path)  # 3 classes; the model predicts 12
    with pytest.raises(WeblyError, match="predicts 12 classes but .* has 3"):
        predict(trained, m, tmp_path / "p", PredictConfig(split="val", workers=0))


@pytest.mark.parametrize("tta", ["center", "flip"])
def test_predict_features_are_the_classifier_input(trained, synth_manifest, tmp_path, tta):
    """features.npy holds, row by row, what the classifier layer read (averaged over the views):
    the layer applied to it gives back the predicted probabilities (exactly for one view; for
    flip the average of the views' features, then the layer, is the linear part of it)."""
    import torch

    from webly.data.predictions import load_features
    from webly.inference.predict import load_model, merge_features

    predict(trained, synth_manifest, tmp_path, PredictConfig(split="val", tta=tta, workers=0,
                                                            features=True))
    p, f = load_predictions(tmp_path), load_features(tmp_path)
    model, _ = load_model(trained)
    assert f.dtype == np.float16 and f.shape == (len(p.ids), model.fc.in_features)
    with torch.no_grad():
        q = model.fc(torch.from_numpy(np.asarray(f, np.float32))).softmax(1).numpy()
    dense = np.zeros_like(q)
    np.put_along_axis(dense, p.top_i.astype(np.int64), p.top_p, axis=1)
    if tta == "center":
        assert np.allclose(q, dense, atol=0.01)
    else:  # the mean of two softmaxes is not the softmax of the mean: the top class agrees
        assert (q.argmax(1) == dense.argmax(1)).mean() > 0.9
    # torchrun's part files (rank r: rows r, r + W, ...) merge back into the file's row order
    for r in range(2):
        (tmp_path / f"part{r}").mkdir()
        np.save(tmp_path / f"part{r}/features.npy", np.asarray(f[r::2]))
    merge_features([tmp_path / "part0", tmp_path / "part1"], tmp_path / "merged", len(f))
    assert np.array_equal(load_features(tmp_path / "merged"), f)
