"""The training engine on CPU with timm's tiny test models and generated data."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from webly.app.cli import main
from webly.app.demo.synth import SynthConfig, generate
from webly.core.errors import WeblyError
from webly.data.folds import fold_of
from webly.data.index import IndexConfig, index_dataset
from webly.data.manifest import Manifest
from webly.labels.tagging import TagConfig, tag
from webly.training import checkpoints
from webly.training.config import TrainConfig
from webly.training.engine import train
from webly.training.trainsets import finetune_data, leave_out_fold

TINY = ["--img-size", "32", "--batch-size", "16", "--accum-steps", "1", "--workers", "0",
        "--log-every", "1", "--tensorboard", "--lr", "0.05", "--weight-decay", "0"]


@pytest.fixture(scope="module")
def data6(tmp_path_factory) -> Path:
    """6 concepts (two WordNet families), 30-60 noisy training images each, 10 clean val each."""
    d = tmp_path_factory.mktemp("train")
    generate(d / "wv", SynthConfig(families=2, per_family=3, max_per_class=60, min_per_class=30,
                                   val_per_class=10, test_per_class=2, image_width=32,
                                   image_height=32, label_noise=0.1, seed=0))
    index_dataset(d / "wv", d / "manifest.parquet", IndexConfig())
    tag(d / "manifest.parquet", d / "tags", TagConfig(min_count=2, max_df=0.5))
    return d


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if '"step"' in x]


def test_wt_pretrain_then_finetune_learns(data6, capsys):
    m = str(data6 / "manifest.parquet")
    assert main(["pretrain", m, "--set", "wt", "--tags", str(data6 / "tags"), "-o",
                 str(data6 / "wt"),
                 "--backbone", "test_resnet", "--epochs", "3", *TINY]) == 0
    wt = _losses(data6 / "wt")
    assert np.mean(wt[-5:]) < np.mean(wt[:5])
    assert main(["finetune", m, "-o", str(data6 / "ft"), "--pretrained",
                 str(data6 / "wt/ckpt/last.pt"),
                 "--backbone", "test_resnet", "--epochs", "4", "--schedule", "cosine", *TINY]) == 0
    summary = json.loads((data6 / "ft/train.summary.json").read_text())
    assert summary["val_top1"] > 2 / 6  # chance is 1/6
    assert summary["transfer"]["reinitialised"] == ["fc.bias", "fc.weight"]
    ft = _losses(data6 / "ft")
    assert np.mean(ft[-5:]) < np.mean(ft[:5])
    for f in ("model.safetensors", "model.json", "training_curves.png", "metrics.jsonl",
              "ckpt/best.pt"):
        assert (data6 / "ft" / f).is_file(), f
    assert list((data6 / "ft/tb").iterdir())
    meta = json.loads((data6 / "ft/model.json").read_text())
    assert meta["num_classes"] == 6 and meta["backbone"] == "test_resnet"
    # the full evaluation preprocessing, as prediction reads it (augment auto at 32 px:
    # pad-and-crop, evaluated on the whole image squashed)
    assert meta["crop_pct"] == 1.0
    assert meta["preprocess"] == {"size": meta["img_size"], "resize": "squash",
                                  "crop_pct": meta["crop_pct"], "interpolation": "bilinear",
                                  "antialias": True, "mean": list(meta["mean"]),
                                  "std": list(meta["std"])}


def test_pretrained_and_continue_from_take_a_folder_its_weights_or_a_checkpoint(data6, tmp_path,
                                                                                capsys):
    """A run folder means what a recipe's "@wt" means (its ckpt/last.pt); its model.safetensors
    and a checkpoint load the same weights; a file of another kind is a one-line error."""
    m = str(data6 / "manifest.parquet")
    base = ["--backbone", "test_resnet", "--max-steps", "1", *TINY]
    assert main(["finetune", m, "-o", str(tmp_path / "a"), *base]) == 0
    a = tmp_path / "a"
    forms = [a, a / "model.safetensors", a / "ckpt/last.pt"]
    w = [checkpoints.load_weights(f)[0] for f in forms]
    assert all(w[0].keys() == x.keys() and all(torch.equal(w[0][k], x[k]) for k in w[0])
               for x in w[1:])
    for i, f in enumerate(forms):
        for flag in ("--pretrained", "--continue-from"):
            assert main(["finetune", m, "-o", str(tmp_path / f"b{i}{flag}"), flag, str(f),
                         *base]) == 0, (flag, f)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    for wrong in (tmp_path / "empty", tmp_path / "notes.txt", Path(m), tmp_path / "x.safetensors",
                  data6 / "tags"):
        capsys.readouterr()
        assert main(["finetune", m, "-o", str(tmp_path / "c"), "--pretrained", str(wrong),
                     *base]) == 2, wrong
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error" in err[0] and "Traceback" not in err[0], err


def test_pretrained_takes_a_state_dict_or_a_timm_name_and_records_where_from(data6, tmp_path,
                                                                          monkeypatch, capsys):
    """Weights from another trainer (a plain state dict, DDP's `module.` keys included) or a timm
    model name (timm's own download, faked here: no test touches the network); the run records
    where they came from; without a network the error names the local-file alternative."""
    import timm

    from webly.training.models import create_backbone

    m = str(data6 / "manifest.parquet")
    base = ["--backbone", "test_resnet", "--max-steps", "1", *TINY]
    theirs = create_backbone("test_resnet", 1000).state_dict()  # an ImageNet-sized head
    torch.save({f"module.{k}": v for k, v in theirs.items()}, tmp_path / "sd.pth")
    torch.save({"state_dict": theirs}, tmp_path / "wrapped.pt")
    for f in ("sd.pth", "wrapped.pt"):
        run = tmp_path / f"run-{f}"
        assert main(["finetune", m, "-o", str(run), "--pretrained", str(tmp_path / f), *base]) == 0
        t = json.loads((run / "train.summary.json").read_text())["transfer"]
        assert t["pretrained_from"] == f"file {(tmp_path / f).resolve()}"
        assert t["reinitialised"] == ["fc.bias", "fc.weight"] and t["loaded_tensors"] > 10

    real = timm.create_model
    fetched = []

    def hub(name, pretrained=False, **kw):  # timm's download, from weights made here
        if pretrained:
            fetched.append(name)
            return real("test_resnet", num_classes=1000)
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", hub)
    assert main(["finetune", m, "-o", str(tmp_path / "hub"), "--pretrained",
                 "test_resnet.r160_in1k", *base]) == 0
    t = json.loads((tmp_path / "hub/train.summary.json").read_text())["transfer"]
    assert fetched == ["test_resnet.r160_in1k"]
    assert t["pretrained_from"] == "timm test_resnet.r160_in1k (timm's pretrained weights)"

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    for spec, says in (("timm:test_resnet", "give a local file: --pretrained weights.safetensors"),
                       ("resnet50", "train --backbone resnet50 with it (not test_resnet)"),
                       ("no_such_net_xyz", "not a timm model name")):
        capsys.readouterr()
        assert main(["finetune", m, "-o", str(tmp_path / "off"), "--pretrained", spec,
                     *base]) == 2, spec
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err


def test_a_continued_run_draws_the_epochs_after_its_parents(data6, tmp_path):
    """A chain of runs (CE, then more CE from its weights) sees new shuffles and augmentations, as
    one longer run would: each starts the seeded data stream where its parent's left off."""
    m = str(data6 / "manifest.parquet")
    base = ["--backbone", "test_resnet", "--samples-per-epoch", "32",  # 2 steps an epoch
            *(x for x in TINY if x != "--tensorboard")]
    t = tmp_path
    runs = [("a", ["--epochs", "2"]), ("b", ["--epochs", "1", "--continue-from", str(t / "a")]),
            ("c", ["--epochs", "1", "--continue-from", str(t / "b")]),
            ("d", ["--max-steps", "1", "--continue-from", str(t / "c")]),  # stops mid-epoch
            ("e", ["--epochs", "1", "--continue-from", str(t / "d")]),
            ("f", ["--epochs", "1", "--continue-from", str(t / "a/model.safetensors")])]
    for name, extra in runs:
        assert main(["finetune", m, "-o", str(tmp_path / name), *base, *extra]) == 0, name
    start = {name: checkpoints.load(tmp_path / name / "ckpt/last.pt")["stream_start"]
             for name, _ in runs}
    assert start == {"a": 0, "b": 2, "c": 3, "d": 4, "e": 5, "f": 0}
    summary = json.loads((tmp_path / "b/train.summary.json").read_text())
    assert summary["transfer"]["stream_start"] == 2


def test_large_resolution_stage_continues_lr(data6, tmp_path):
    m = str(data6 / "manifest.parquet")
    base = ["--backbone", "test_resnet", "--img-size", "32", "--batch-size", "16", "--accum-steps",
            "1",
            "--workers", "0", "--no-tensorboard", "--lr", "0.01", "--epochs", "2", "--schedule",
            "step", "--step-epochs", "1"]
    assert main(["finetune", m, "-o", str(tmp_path / "a"), *base]) == 0
    last_lr = checkpoints.load(tmp_path / "a/ckpt/last.pt")["last_lr"]
    assert last_lr == pytest.approx(0.001)  # 0.01 decayed once
    assert main(["finetune", m, "-o", str(tmp_path / "b"), "--continue-from",
                 str(tmp_path / "a/ckpt/last.pt"),
                 *base[:2], "--img-size", "48", *base[4:-6], "--epochs", "1", "--schedule",
                 "constant"]) == 0
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert lrs and all(lr == pytest.approx(0.001) for lr in lrs)


def test_gradient_accumulation_equals_big_batch(data6, tmp_path):
    data = finetune_data(Manifest(data6 / "manifest.parquet"))
    common = dict(backbone="test_vit", img_size=32, workers=0, sampler="shuffle", max_steps=1,
                  epochs=1, lr=0.1, schedule="constant", tensorboard=False, seed=5)
    train(data, TrainConfig(batch_size=8, accum_steps=4, **common), tmp_path / "accum",
          task="finetune")
    train(data, TrainConfig(batch_size=32, accum_steps=1, **common), tmp_path / "big",
          task="finetune")
    a = load_file(tmp_path / "accum/model.safetensors")
    b = load_file(tmp_path / "big/model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    from webly.training.models import create_backbone

    torch.manual_seed(5)  # train() seeds before building: this is both runs' initial model
    init = create_backbone("test_vit", 6).state_dict()
    assert any((init[k] - a[k]).abs().max() > 1e-4 for k in a)  # the step did change weights


def _cmd(m: str, run: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "webly.app.cli", "finetune", m, "-o", str(run), "--backbone",
            "test_resnet",
            "--img-size", "32", "--batch-size", "8", "--accum-steps", "2", "--workers", "0",
            "--no-tensorboard", "--epochs", "2", "--ckpt-every-steps", "1", "--keep-last", "2",
            "--samples-per-epoch", "160", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(data6, tmp_path):
    m = str(data6 / "manifest.parquet")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cmd(m, tmp_path / "full", []), check=True, env=env, capture_output=True)
    # 10 steps an epoch, a checkpoint after each and at each epoch's end; each attempt counts from
    # its own start: step 3 (epoch 1), step 11 (mid-epoch 2), right after the final checkpoint
    for fault in ("train.ckpt:3", "train.ckpt:9", "train.ckpt:10"):
        r = subprocess.run(_cmd(m, tmp_path / "cut", ["--resume"]), env={**env,
                                                                         "WEBLY_FAULT": fault},
                           capture_output=True)
        assert r.returncode == -signal.SIGKILL, (fault, r.stderr.decode()[-2000:])
    assert not (tmp_path / "cut/model.safetensors").exists()
    subprocess.run(_cmd(m, tmp_path / "cut", ["--resume"]), check=True, env=env,
                   capture_output=True)
    a = load_file(tmp_path / "full/model.safetensors")
    b = load_file(tmp_path / "cut/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def test_epoch_numbers_are_one_based_also_when_max_steps_cuts_an_epoch(data6, tmp_path):
    data = finetune_data(Manifest(data6 / "manifest.parquet"))
    cfg = TrainConfig(backbone="test_resnet", img_size=32, batch_size=16, accum_steps=1, workers=0,
                      epochs=3, samples_per_epoch=80, max_steps=7, log_every=1, tensorboard=False)
    summary = train(data, cfg, tmp_path, task="finetune")  # 5 steps an epoch: stops in epoch 2
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "step" in r] == [1, 1, 1, 1, 1, 2, 2]
    ends = [r for r in lines if "epoch_end" in r]
    assert [r["epoch_end"] for r in ends] == [1, 2]
    best = max(ends, key=lambda r: r["val_top1"])  # the first of equals, as training keeps it
    assert summary["best"] == {"val_top1": best["val_top1"], "epoch": best["epoch_end"]}
    assert summary["epochs_done"] == 1 and summary["steps"] == 7


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data6, tmp_path, monkeypatch):
    import webly.training.engine as engine
    from webly.training.tasks import Task, criterion_for

    class Poisoned(Task):  # a training method whose 4th loss is NaN
        calls = 0

        def loss(self, net, batch):
            Poisoned.calls += 1
            return super().loss(net, batch) * (float("nan") if Poisoned.calls == 4 else 1.0)

    monkeypatch.setattr(engine, "make_task",
                        lambda cfg, task, *_: Poisoned(criterion_for(cfg, task)))
    data = finetune_data(Manifest(data6 / "manifest.parquet"))
    cfg = TrainConfig(backbone="test_resnet", img_size=32, batch_size=8, accum_steps=1, workers=0,
                      ckpt_every_steps=2, tensorboard=False)
    with pytest.raises(WeblyError,
                       match=r"loss is not finite at step 3 .*last good checkpoint is .*last.pt"):
        train(data, cfg, tmp_path, task="finetune")
    assert checkpoints.load(tmp_path / "ckpt/last.pt")["global_step"] == 2


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    good = {"global_step": 1, "x": torch.ones(3)}
    checkpoints.save_training(good, tmp_path, keep=3)

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WeblyError, match="No space left on device.*previous checkpoint is intact"):
        checkpoints.save_training({"global_step": 2, "x": torch.zeros(3)}, tmp_path, keep=3)
    monkeypatch.undo()
    assert checkpoints.load(tmp_path / "ckpt/last.pt")["global_step"] == 1
    assert not list((tmp_path / "ckpt").glob(".*tmp*"))


def test_checkpoint_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WeblyError, match="not a loadable webly checkpoint"):
        checkpoints.load(tmp_path / "evil.pt")


def test_bad_train_config(data6):
    data = finetune_data(Manifest(data6 / "manifest.parquet"))
    with pytest.raises(WeblyError, match="holds no optimizer step"):
        train(data, TrainConfig(backbone="test_resnet", batch_size=256, accum_steps=8),
              "/tmp/never",
              task="finetune")
    with pytest.raises(WeblyError, match="train.schedule: .linear. is not one of"):
        TrainConfig(schedule="linear").validate()


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--elr", "3"]], ids=["plain", "elr"])
def test_ddp_two_processes_match_single_process(data6, tmp_path, extra):
    m = str(data6 / "manifest.parquet")
    args = ["finetune", m, "--backbone", "test_vit", "--img-size", "32", "--batch-size", "16",
            "--accum-steps", "2", "--workers", "0", "--no-tensorboard", "--epochs", "1",
            "--log-every", "1", "--sampler", "shuffle", "--seed", "1", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", "29533", "-m", "webly.app.cli"]
    r = subprocess.run([*torchrun, *args, "-o", str(tmp_path / "ddp")], env=env,
                       capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "webly.app.cli", *args, "-o", str(tmp_path / "one")],
                   env=env,
                   check=True, capture_output=True)
    ddp, one = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert json.loads((tmp_path / "ddp/train.summary.json").read_text())["world_size"] == 2
    assert len(ddp) == len(one) > 3
    assert np.allclose(ddp, one, rtol=1e-3, atol=1e-4)
    if extra:  # ELR: every rank saw every image's update, as the single process did
        a, b = (checkpoints.load(tmp_path / r / "ckpt/last.pt")["task_state"]["elr_targets"]
                for r in ("ddp", "one"))
        assert a.abs().sum() > 0 and torch.allclose(a, b, atol=1e-3)


def test_shard_fed_balanced_training_resumes_exactly(data6, tmp_path):
    """Shards are read by index: the balanced sampler's draws, and a cut run resumes bit-exact."""
    from webly.data.shards import ShardConfig, write_shards

    m = data6 / "manifest.parquet"
    write_shards(m, tmp_path / "shards", ShardConfig(max_count=40, short_side=32),
                 log=lambda _: None)
    args = ["--shards", str(tmp_path / "shards"), "--backbone", "test_resnet", "--epochs", "3",
            "--samples-per-epoch", "160", "--schedule", "cosine", *TINY, "--no-tensorboard"]
    assert main(["finetune", str(m), "-o", str(tmp_path / "run"), *args]) == 0
    s = json.loads((tmp_path / "run/train.summary.json").read_text())
    assert s["steps"] == 3 * 160 // 16 and s["val_top1"] > 2 / 6
    assert main(["finetune", str(m), "-o", str(tmp_path / "cut"), *args, "--max-steps", "15"]) == 0
    assert main(["finetune", str(m), "-o", str(tmp_path / "cut"), *args, "--resume"]) == 0
    a = load_file(tmp_path / "run/model.safetensors")
    b = load_file(tmp_path / "cut/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# the resized path (24) in the fast subset; the native size (32) in the full suite
@pytest.mark.parametrize("size", [pytest.param(32, marks=pytest.mark.slow), 24])
def test_in_memory_images_train_exactly_as_files(data6, tmp_path, size):
    """Decoded once into memory or decoded every epoch: the same pixels, the same weights; with
    pad-crop augmentation and mixup too, and at a smaller size (resized once in memory)."""
    m = str(data6 / "manifest.parquet")
    args = ["--backbone", "test_resnet", "--epochs", "2", "--samples-per-epoch", "96", *TINY,
            "--img-size", str(size), "--no-tensorboard", "--augment", "pad_crop", "--mixup",
            "0.4"]
    assert main(["finetune", m, "-o", str(tmp_path / "files"), *args]) == 0
    assert main(["finetune", m, "-o", str(tmp_path / "mem"), *args, "--in-memory"]) == 0
    a = load_file(tmp_path / "files/model.safetensors")
    b = load_file(tmp_path / "mem/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(WeblyError, match="not with shards"):
        TrainConfig(in_memory=True, shards="s").validate()


def test_in_memory_counts_bad_images_and_refuses_mixed_sizes(data6, tmp_path):
    import shutil

    from PIL import Image

    from webly.data.datasets import MemoryImages

    root = tmp_path / "wv"
    shutil.copytree(data6 / "wv", root)
    manifest = Manifest(data6 / "manifest.parquet")
    rows = np.arange(4)
    paths = [manifest.read(["path"]).column(0)[i].as_py() for i in rows]
    manifest.root = root
    (root / paths[1]).write_bytes(b"not an image")
    images = MemoryImages(manifest, rows)
    assert images.pixels(1) is None and images.reason(1) and images.pixels(0).shape == (3, 32, 32)
    Image.new("RGB", (40, 30)).save(root / paths[2], format="JPEG")
    with pytest.raises(WeblyError, match="one size"):
        MemoryImages(manifest, rows)
    resized = MemoryImages(manifest, rows, size=24)  # resized once: any sizes will do
    assert resized.pixels(2).shape == resized.pixels(0).shape == (3, 24, 24)
    # a photo far larger than the size is decoded at a reduced DCT scale, then resized: its
    # pixels are the full decode's to within JPEG's rounding
    ramp = np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (300, 1))
    Image.fromarray(np.stack([ramp, ramp.T[:300, :300].repeat(2, 1)[:, :400], ramp], -1)).save(
        root / paths[3], format="JPEG", quality=95)
    from PIL import JpegImagePlugin

    from webly.data import images as imgs

    drafts = []
    real = JpegImagePlugin.JpegImageFile.draft
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(JpegImagePlugin.JpegImageFile, "draft",
                   lambda self, mode, size, **kw: drafts.append(size) or real(self, mode, size))
        small = MemoryImages(manifest, rows, size=24)
    assert drafts == [(32, 24)]  # only the 400x300 photo is decoded reduced (24 / 300 < 1/2)
    full = imgs.resize_uint8(imgs.decode_tensor(root / paths[3]), (24, 24)).float()
    assert (small.pixels(3).float() - full).abs().mean() < 4


def test_decoded_images_are_cached_by_the_files_identity(data6, tmp_path, monkeypatch):
    """A second step needing the same images at the same size reads the cache (nothing is
    decoded); a file changed in place, or another size, decodes again; bad images stay bad."""
    import shutil

    from webly.data import datasets

    root = tmp_path / "wv"
    shutil.copytree(data6 / "wv", root)
    manifest = Manifest(data6 / "manifest.parquet")
    manifest.root = root
    rows = np.arange(5)
    paths = [manifest.read(["path"]).column(0)[i].as_py() for i in rows]
    (root / paths[1]).write_bytes(b"not an image")
    cache = tmp_path / "cache"
    first = datasets.MemoryImages(manifest, rows, size=16, cache=cache)
    assert len(list(cache.glob("*.npy"))) == 1 and first.reason(1)

    def no_decode(*a, **kw):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as mp:
        mp.setattr(datasets, "try_decode", no_decode)
        again = datasets.MemoryImages(manifest, rows, size=16, cache=cache)
    assert torch.equal(again.array, first.array) and again.reasons == first.reasons
    (root / paths[0]).write_bytes((root / paths[2]).read_bytes())  # changed in place
    changed = datasets.MemoryImages(manifest, rows, size=16, cache=cache)
    assert torch.equal(changed.pixels(0), first.pixels(2))
    datasets.MemoryImages(manifest, rows, size=8, cache=cache)
    assert len(list(cache.glob("*.npy"))) == 3


def test_leave_out_fold_trains_on_the_other_half(data6, tmp_path):

    m = str(data6 / "manifest.parquet")
    n = len(finetune_data(Manifest(m)).rows)
    kept = int((fold_of(finetune_data(Manifest(m)).rows, 2) != 0).sum())
    assert 0 < kept < n
    assert main(["finetune", m, "-o", str(tmp_path / "f0"), "--backbone", "test_resnet",
                 "--epochs", "1", *TINY, "--no-tensorboard", "--leave-out-fold", "0/2"]) == 0
    s = json.loads((tmp_path / "f0/train.summary.json").read_text())
    assert s["steps"] == kept // 16  # an epoch is the images left in, not all of them


def test_ema_weights_are_exported(data6, tmp_path):
    data = finetune_data(Manifest(data6 / "manifest.parquet"))
    cfg = TrainConfig(backbone="test_resnet", img_size=32, batch_size=16, accum_steps=1, workers=0,
                      epochs=1, ema=0.5, tensorboard=False, max_steps=4)
    train(data, cfg, tmp_path, task="finetune")
    ck = checkpoints.load(tmp_path / "ckpt/last.pt")
    exported = load_file(tmp_path / "model.safetensors")
    ema = {k.removeprefix("module."): v for k, v in ck["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(exported[k], ema[k]) for k in exported)
    assert any(not torch.equal(exported[k], ck["model"][k]) for k in exported if k in ck["model"])


def test_elr_targets_travel_in_checkpoints_and_a_cut_run_resumes_exactly(data6, tmp_path):
    data = finetune_data(Manifest(data6 / "manifest.parquet"))
    common = dict(backbone="test_resnet", img_size=32, batch_size=16, accum_steps=1, workers=0,
                  epochs=2, samples_per_epoch=64, elr=3.0, tensorboard=False, lr=0.05)
    train(data, TrainConfig(**common), tmp_path / "whole", task="finetune")
    train(data, TrainConfig(**common, max_steps=5), tmp_path / "cut", task="finetune")
    train(data, TrainConfig(**common), tmp_path / "cut", task="finetune", resume=True)
    a, b = (checkpoints.load(tmp_path / r / "ckpt/last.pt") for r in ("whole", "cut"))
    ta, tb = a["task_state"]["elr_targets"], b["task_state"]["elr_targets"]
    assert ta.shape == (len(data.rows), data.num_classes) and ta.abs().sum() > 0
    assert torch.equal(ta, tb)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_consistency_learns_from_the_images_without_a_label_and_resumes_exactly(data6, tmp_path):
    """Labels dropped (-1, as pseudo-label writes) make images unlabelled: consistency training
    decodes them into memory, draws them by step (a cut run resumes bit-exact), and changes the
    weights; every unlabelled image is left out of the labelled stream."""
    m = Manifest(data6 / "manifest.parquet")
    labels = np.asarray(m.read(["label"]).column(0).fill_null(-1).to_numpy(), np.int64)
    train_rows = finetune_data(m).rows
    dropped = train_rows[::3]
    labels[dropped] = -1
    data = finetune_data(m, labels)
    assert np.array_equal(np.sort(data.unlabeled_rows), np.sort(dropped))
    assert not np.isin(data.rows, dropped).any()
    common = dict(backbone="test_resnet", img_size=24, batch_size=16, accum_steps=2, workers=0,
                  epochs=2, samples_per_epoch=64, tensorboard=False, lr=0.05, in_memory=True,
                  augment="pad_crop",
                  unlabeled_weight=1.0, unlabeled_ratio=0.5, unlabeled_threshold=0.0)
    train(data, TrainConfig(**common), tmp_path / "whole", task="finetune")
    train(data, TrainConfig(**common, max_steps=3), tmp_path / "cut", task="finetune")
    train(data, TrainConfig(**common), tmp_path / "cut", task="finetune", resume=True)
    train(data, TrainConfig(**{**common, "unlabeled_weight": 0.0}), tmp_path / "off",
          task="finetune")
    a, b, off = (load_file(tmp_path / r / "model.safetensors") for r in ("whole", "cut", "off"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], off[k]) for k in a)
    epochs = [json.loads(x) for x in (tmp_path / "whole/metrics.jsonl").read_text().splitlines()
              if '"epoch_end"' in x]
    assert [e["unlabeled_confident"] for e in epochs] == [1.0, 1.0]  # threshold 0: all
    with pytest.raises(WeblyError, match="every training image has a label"):
        train(finetune_data(m), TrainConfig(**common), tmp_path / "none", task="finetune")
    folded = leave_out_fold(data, "0/2")
    assert 0 < len(folded.unlabeled_rows) < len(data.unlabeled_rows)
    assert (fold_of(folded.unlabeled_rows, 2) != 0).all()


def test_export_best_exports_the_best_validation_epoch(data6, tmp_path, capsys):
    data = finetune_data(Manifest(data6 / "manifest.parquet"))
    common = dict(backbone="test_resnet", img_size=32, batch_size=16, accum_steps=1, workers=0,
                  epochs=3, samples_per_epoch=96, tensorboard=False, lr=0.05, schedule="constant")
    s = train(data, TrainConfig(**common, export="best"), tmp_path / "best", task="finetune")
    best = checkpoints.load(tmp_path / "best/ckpt/best.pt")
    exported = load_file(tmp_path / "best/model.safetensors")
    assert all(torch.equal(exported[k], best["model"][k]) for k in exported)
    assert s["exported"] == s["best"] == best["best"] and 1 <= s["best"]["epoch"] <= 3
    scores = [json.loads(x)["val_top1"] for x in
              (tmp_path / "best/metrics.jsonl").read_text().splitlines() if '"epoch_end"' in x]
    # the best is the first epoch to reach the top score (a later tie does not replace it);
    # whether this tiny run peaks before its end depends on the CPU's kernels
    assert s["best"]["val_top1"] == max(scores)
    assert s["best"]["epoch"] == scores.index(max(scores)) + 1
    last = train(data, TrainConfig(**common), tmp_path / "last", task="finetune")
    assert last["exported"] == {"epoch": 3, "val_top1": scores[-1]}  # same run, bit for bit
    final = checkpoints.load(tmp_path / "last/ckpt/last.pt")["model"]
    assert all(torch.equal(load_file(tmp_path / "last/model.safetensors")[k], final[k])
               for k in exported)
    unscored = replace(data, val_labels=np.full(len(data.val_labels), -1))
    capsys.readouterr()
    none = train(unscored, TrainConfig(**{**common, "epochs": 1}, export="best"),
                 tmp_path / "none", task="finetune")
    assert none["exported"]["epoch"] == 1 and "exporting the last epoch" in capsys.readouterr().err
    with pytest.raises(WeblyError, match="export"):
        TrainConfig(export="first").validate()


def test_the_plan_warns_on_runs_that_cannot_work():
    from webly.training.plan import plan_of

    # the calibration: WebVision's accumulation of 8 on 31,306 images for 6 epochs
    cfg = TrainConfig(backbone="cifar_resnet9", img_size=32, epochs=6, batch_size=128,
                      accum_steps=8, lr=0.1, schedule="step")
    p = plan_of(cfg, 31_306, 53, 31_306)
    assert (p.effective_batch, p.steps_per_epoch, p.optimizer_steps) == (1024, 30, 180)
    text = " ".join(p.warnings)
    assert "only 180 optimizer steps" in text and "never decays" in text
    assert "0 decays in this run" in p.schedule
    ok = plan_of(replace(cfg, accum_steps=1, schedule="cosine"), 31_306, 53, 31_306)
    assert ok.warnings == [] and ok.optimizer_steps == 1464 and "cosine to 1.15e-07" in ok.schedule
    assert any("warmup" in w for w in plan_of(replace(cfg, accum_steps=1, schedule="cosine",
                                                      warmup_epochs=6), 31_306, 53,
                                              31_306).warnings)
    assert any("head" in w for w in plan_of(replace(cfg, accum_steps=1, epochs=100), 200, 53,
                                            200).warnings)
    big = plan_of(replace(cfg, accum_steps=1, epochs=200), 2000, 10, 2000)
    assert any("effective batch" in w for w in big.warnings)


def test_training_prints_its_plan_and_keeps_it_in_the_summary(data6, tmp_path, capsys):
    m = str(data6 / "manifest.parquet")
    assert main(["finetune", m, "-o", str(tmp_path / "a"), "--backbone", "test_resnet",
                 "--epochs", "1", *TINY[:4], "--accum-steps", "8", *TINY[6:]]) == 0
    err = capsys.readouterr().err
    assert "[webly] plan: " in err and "effective batch 128" in err
    assert "[webly] warning: only 1 optimizer steps" in err and "53% of the 242 images" in err
    plan = json.loads((tmp_path / "a/train.summary.json").read_text())["plan"]
    assert plan["optimizer_steps"] == 1 and len(plan["warnings"]) >= 2


def test_loader_workers_default_to_what_the_machine_has(monkeypatch):
    """-1 (the default): the cores this process may use, shared by the ranks on the machine, at
    most 4; one core per rank loads in the process. A number is taken as given; below -1 is an
    error."""
    from webly.training.config import loader_workers

    for cores, ranks, want in ((2, 1, 2), (16, 1, 4), (16, 8, 2), (8, 8, 0), (1, 1, 0)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
        assert loader_workers(-1) == want, (cores, ranks)
    assert loader_workers(3) == 3 and TrainConfig().workers == -1
    with pytest.raises(WeblyError, match="counts must not be negative"):
        replace(TrainConfig(), workers=-2).validate()


def test_the_schedule_follows_a_time_budget_whichever_is_further():
    from webly.training.config import TrainConfig
    from webly.training.plan import out_of_time, schedule_step

    off = TrainConfig()
    assert schedule_step(off, 7, 100, 1e9) == 7 and not out_of_time(off, 1e9)
    cfg = TrainConfig(time_budget_s=60.0)
    assert schedule_step(cfg, 10, 100, 30.0) == 50.0  # half the time: half the schedule
    assert schedule_step(cfg, 80, 100, 30.0) == 80  # a faster machine: the steps lead
    assert schedule_step(cfg, 10, 100, 600.0) == 100.0  # never past the end
    assert not out_of_time(cfg, 59.9) and out_of_time(cfg, 60.0)
    with pytest.raises(WeblyError, match="must not be negative"):
        TrainConfig(time_budget_s=-1).validate()


def test_a_time_budget_ends_the_run_and_its_schedule_on_time(data6, tmp_path, monkeypatch):
    """A clock that advances a fixed amount a call (no real timing): the run stops when its budget
    is spent, well before its epochs, with the lr annealed to the end; a resumed run counts the
    time before it."""
    from webly.training import engine

    clock = {"t": 0.0}

    def tick() -> float:
        clock["t"] += 0.05
        return clock["t"]

    monkeypatch.setattr(engine.time, "time", tick)
    m = str(data6 / "manifest.parquet")
    args = ["--backbone", "test_resnet", "--epochs", "50", "--samples-per-epoch", "64",
            "--schedule", "cosine", "--warmup-epochs", "0", *TINY, "--no-tensorboard"]
    assert main(["finetune", m, "-o", str(tmp_path / "t"), *args, "--time-budget-s", "3"]) == 0
    s = json.loads((tmp_path / "t/train.summary.json").read_text())
    assert 0 < s["steps"] < 50 * 4 and s["final_lr"] < 1e-3 * 0.05
    assert "stops after 3s of training" in s["plan"]["schedule"]
    ck = torch.load(tmp_path / "t/ckpt/last.pt", weights_only=False)
    assert ck["trained_s"] >= 3.0


def test_whitened_first_layer_is_set_from_the_training_images_and_stays(data6, tmp_path):
    """cifar_airbench's first layer whitens 2x2 patches of the images it trains on (through it
    their covariance is diagonal, each variance l / (l + eps) for the direction's own l: about
    one but where the images hardly vary) and is not trained."""
    from webly.data.images import normalize_batch
    from webly.training.engine import setup
    from webly.training.weights import WHITEN_IMAGES

    data = finetune_data(Manifest(data6 / "manifest.parquet"))
    cfg = TrainConfig(backbone="cifar_airbench_w32", img_size=32, batch_size=16, accum_steps=1,
                      workers=0, epochs=1, max_steps=3, tensorboard=False, lr=0.05,
                      augment="pad_crop", in_memory=True)
    s = setup(data, cfg, tmp_path / "probe", task="finetune")
    n = min(WHITEN_IMAGES, len(s.dataset))
    x = normalize_batch(torch.stack([s.dataset[(i, i)][0] for i in range(n)]))
    w = s.model.whiten.weight.detach()
    out = torch.nn.functional.conv2d(x, w[:12]).permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = out.T @ out / len(out)
    patches = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    lam = torch.linalg.eigvalsh(patches.double().T @ patches.double() / len(patches))
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 1e-3
    assert torch.allclose(torch.diag(cov).sort().values, (lam / (lam + 5e-4)).sort().values,
                          atol=1e-3)
    train(data, cfg, tmp_path / "run", task="finetune")
    ck = checkpoints.load(tmp_path / "run/ckpt/last.pt")
    assert torch.equal(ck["model"]["whiten.weight"], w)


def test_lookahead_ends_on_its_average_and_a_cut_run_resumes_exactly(data6, tmp_path):
    data = finetune_data(Manifest(data6 / "manifest.parquet"))
    common = dict(backbone="cifar_airbench_w32", img_size=24, batch_size=16, accum_steps=1,
                  workers=0, epochs=2, samples_per_epoch=96, lookahead=0.95, nesterov=True,
                  norm_lr=8.0, label_smoothing=0.2, tensorboard=False, lr=0.05,
                  augment="pad_crop", in_memory=True)
    train(data, TrainConfig(**common), tmp_path / "whole", task="finetune")
    train(data, TrainConfig(**common, max_steps=7), tmp_path / "cut", task="finetune")
    train(data, TrainConfig(**common), tmp_path / "cut", task="finetune", resume=True)
    a, b = (checkpoints.load(tmp_path / r / "ckpt/last.pt") for r in ("whole", "cut"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # the last step put the average into the model: the two are one
    assert a["lookahead"] and all(torch.equal(a["model"][k], v) for k, v in a["lookahead"].items())
    exported = load_file(tmp_path / "whole/model.safetensors")
    assert all(torch.equal(exported[k], a["model"][k]) for k in exported)


def test_lookahead_and_norm_lr_are_checked():
    with pytest.raises(WeblyError, match="choose one"):
        TrainConfig(ema=0.9, lookahead=0.95).validate()
    with pytest.raises(WeblyError, match="lookahead must be within"):
        TrainConfig(lookahead=1.0).validate()
    with pytest.raises(WeblyError, match="norm_lr positive"):
        TrainConfig(norm_lr=0).validate()
