"""After training: `webly classify`, `webly.load`, `webly export`, on tiny models and generated
images (a timm backbone and one of webly's own, which squashes non-square images)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import webly
from webly.app.cli import main
from webly.core.errors import WeblyError
from webly.data.manifest import Manifest
from webly.data.predictions import load_predictions
from webly.inference.classify import Classifier, ClassifyConfig, classify, iter_inputs
from webly.inference.predict import PredictConfig, _Images, load_model, predict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["test_resnet", "cifar_resnet9"])
def trained(request, synth_manifest, tmp_path_factory):
    from webly.training.config import TrainConfig
    from webly.training.engine import train
    from webly.training.trainsets import finetune_data

    run = tmp_path_factory.mktemp(request.param)
    augment = {"augment": "pad_crop", "crop_pct": 1.0} if request.param == "cifar_resnet9" else {}
    train(finetune_data(Manifest(synth_manifest)), TrainConfig(
        backbone=request.param, img_size=32, batch_size=16, accum_steps=1, workers=0, epochs=1,
        tensorboard=False, **augment), run, task="finetune")
    return run


def _test_files(synth_manifest) -> list[Path]:
    m = Manifest(synth_manifest)
    t = m.read(["path", "split"]).to_pylist()
    return [m.root / r["path"] for r in t if r["split"] == "test"]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


def test_classify_agrees_with_predict(trained, synth_manifest, tmp_path):
    files = _test_files(synth_manifest)
    predict(trained, synth_manifest, tmp_path / "p", PredictConfig(split="test", workers=0))
    p = load_predictions(tmp_path / "p")
    classes = json.loads((trained / "model.json").read_text())["classes"]
    out = tmp_path / "c.csv"
    s = classify(trained, [str(f) for f in files], out, ClassifyConfig(top_k=3, workers=0))
    assert s["classified"] == len(files) and s["skipped"] == 0
    rows = {r[0]: r for r in _rows(out)}
    for i, f in enumerate(files):
        r = rows[str(f)]
        assert r[1] == classes[p.top_i[i, 0]]  # the same top-1
        # predictions.parquet keeps float16 probabilities: equal to its rounding
        assert float(r[2]) == pytest.approx(float(p.top_p[i, 0]), abs=5e-4)
    # the same input tensor, pixel for pixel, and one forward pass: equal to 1e-5
    clf = webly.load(trained)
    m = Manifest(synth_manifest)
    t = m.read(["path", "split"])
    paths = t.filter(np.asarray(t["split"].to_pylist()) == "test")["path"].combine_chunks()
    images = _Images(m.root, paths, clf.transform)
    for i, f in enumerate(files):
        assert torch.equal(images[i][0], clf.tensor(f))
    got = clf.predict(files, top_k=3)
    for f, g in zip(files, got, strict=True):
        r = rows[str(f)]
        assert [n for n, _ in g] == r[1::2]
        assert np.allclose([q for _, q in g], [float(x) for x in r[2::2]], atol=1e-5)


def test_classify_skips_counts_and_lists_bad_files(trained, synth_manifest, tmp_path):
    files = _test_files(synth_manifest)
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    for f in files[:3]:
        shutil.copy(f, d / f.name)
    shutil.copy(files[3], d / "sub" / files[3].name)
    (d / "broken.jpg").write_bytes(files[0].read_bytes()[:40])
    (d / "notes.txt").write_text("not an image")
    (d / "empty.jpg").write_bytes(b"")
    os.symlink(d, d / "sub" / "loop")  # a folder linking back up the tree
    os.symlink("self.jpg", d / "self.jpg")  # a link to itself
    os.symlink("gone.jpg", d / "dangling.jpg")
    out = tmp_path / "out.csv"
    assert main(["classify", str(trained), str(d), str(tmp_path / "nowhere.jpg"), "-o", str(out),
                 "--workers", "0"]) == 0
    assert len(_rows(out)) == 4
    skipped = dict(line.split("\t") for line in
                   out.with_name("out.csv.skipped.tsv").read_text().splitlines()[1:])
    assert skipped == {str(d / "broken.jpg"): "truncated", str(d / "notes.txt"): "not an image",
                       str(d / "empty.jpg"): "empty file", str(d / "sub/loop"): "symlink loop",
                       str(d / "self.jpg"): "symlink loop", str(d / "dangling.jpg"): "missing file",
                       str(tmp_path / "nowhere.jpg"): "missing file"}
    # worker processes split the walk and classify the same images
    s = classify(trained, [str(d)], tmp_path / "w.jsonl", ClassifyConfig(workers=2))
    assert s["classified"] == 4 and s["skipped"] == 6
    assert sorted(s["skipped_by_reason"].items()) == [
        ("empty file", 1), ("missing file", 1), ("not an image", 1), ("symlink loop", 2),
        ("truncated", 1)]
    lines = [json.loads(x) for x in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert sorted(x["path"] for x in lines) == sorted(r[0] for r in _rows(out))
    assert all(len(x["classes"]) == 5 and x["probs"] == sorted(x["probs"], reverse=True)
               for x in lines)


def test_classify_reads_a_list_and_fails_only_when_nothing_was_classified(trained,
                                                                          synth_manifest,
                                                                          tmp_path, capsys):
    files = _test_files(synth_manifest)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(map(str, files[:2])) + "\n\n" + str(tmp_path / "x.jpg") + "\n")
    s = classify(trained, [], tmp_path / "l.csv", ClassifyConfig(workers=0), list_file=str(lst))
    assert (s["classified"], s["skipped"]) == (2, 1)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/a.jpg").write_bytes(b"nope")
    assert main(["classify", str(trained), str(tmp_path / "bad"), "-o",
                 str(tmp_path / "b.csv"), "--workers", "0"]) == 2
    assert "no image could be classified" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [
    {"inputs": []}, {"cfg": ClassifyConfig(top_k=0)}, {"cfg": ClassifyConfig(tta="five")},
    {"cfg": ClassifyConfig(workers=-1)}, {"list_file": "/nonexistent/list.txt"}])
def test_classify_bad_input_is_a_clear_error(trained, tmp_path, bad):
    args = {"inputs": ["x.jpg"], "cfg": ClassifyConfig(workers=0), "list_file": None, **bad}
    with pytest.raises(WeblyError):
        classify(trained, args["inputs"], tmp_path / "o.csv", args["cfg"], args["list_file"])


def test_load_rejects_what_it_cannot_classify(trained, tmp_path):
    clf = webly.load(trained)
    with pytest.raises(WeblyError, match="list"):
        clf.predict("a.jpg")
    with pytest.raises(WeblyError, match="cannot classify"):
        clf.predict([tmp_path / "missing.jpg"])
    with pytest.raises(WeblyError, match="PIL"):
        clf.predict([np.zeros((3, 4, 4))])
    with pytest.raises(WeblyError, match="model.safetensors"):
        webly.load(tmp_path)


def test_iter_inputs_walks_in_name_order(tmp_path):
    for name in ("b/2.jpg", "b/1.jpg", "a.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    got = [Path(p).relative_to(tmp_path).as_posix() for p, _ in iter_inputs([tmp_path])]
    assert got == ["a.jpg", "b/1.jpg", "b/2.jpg"]


def test_readme_python_example_runs(trained, synth_manifest, capsys):
    """The README's example, with its model and photo replaced by a trained model and an image."""
    text = (REPO / "README.md").read_text()
    code = re.search(r"<!-- python-api -->\n```python\n(.*?)```", text, re.S).group(1)
    photo = _test_files(synth_manifest)[0]
    code = code.replace("runs/demo/ft_wt_pl", str(trained)).replace("photo.jpg", str(photo))
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    classes = json.loads((trained / "model.json").read_text())["classes"]
    assert len(lines) == 3 and all(line.split(":")[0] in classes for line in lines)


def _same_tensor_probs(trained, synth_manifest):
    clf = Classifier.load(trained, device="cpu")
    x = torch.stack([clf.tensor(f) for f in _test_files(synth_manifest)])
    from webly.data.images import normalize_batch

    pre = clf.preprocess
    return clf.probabilities(x), normalize_batch(x, pre.mean, pre.std).numpy()


def test_torchscript_export_matches(trained, synth_manifest, tmp_path):
    out = tmp_path / "model.pt"
    assert main(["export", str(trained), "--format", "torchscript", "-o", str(out)]) == 0
    want, x = _same_tensor_probs(trained, synth_manifest)
    ts = torch.jit.load(str(out))
    got = ts(torch.from_numpy(x)).softmax(1).detach().numpy()
    assert np.abs(got - want).max() < 1e-4
    side = json.loads((tmp_path / "model.pt.json").read_text())
    meta = json.loads((trained / "model.json").read_text())
    assert side["classes"] == meta["classes"] and side["preprocess"] == meta["preprocess"]


# one backbone in the fast subset: the export path is the same; the other in the full suite
@pytest.mark.parametrize("trained", ["cifar_resnet9", pytest.param("test_resnet",
                                                                   marks=pytest.mark.slow)],
                         indirect=True)
def test_onnx_export_matches(trained, synth_manifest, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    pytest.importorskip("onnxscript", reason="the export extra is not installed")
    out = tmp_path / "model.onnx"
    assert main(["export", str(trained), "--format", "onnx", "-o", str(out)]) == 0
    want, x = _same_tensor_probs(trained, synth_manifest)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]  # a batch of 24: free batch size
    got = torch.from_numpy(logits).softmax(1).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_export_bad_format(trained, tmp_path):
    from webly.inference.export import export

    with pytest.raises(WeblyError, match="format"):
        export(trained, "tflite", tmp_path / "m.tflite")


def test_plain_timm_loads_the_weights(trained, synth_manifest):
    """docs/formats.md: a timm backbone's model.safetensors loads into timm as it is."""
    meta = json.loads((trained / "model.json").read_text())
    if meta["backbone"] not in __import__("timm").list_models():
        pytest.skip("webly's own backbone: ONNX/TorchScript are its way out")
    import timm
    from safetensors.torch import load_file

    net = timm.create_model(meta["backbone"], num_classes=len(meta["classes"]))
    net.load_state_dict(load_file(str(trained / "model.safetensors")))
    ours, _ = load_model(trained)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), ours(x), atol=1e-6)
