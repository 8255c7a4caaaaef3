"""benchmarks/limit.py on a small generated CIFAR-10N tree: every row at the same compute, the
reference's parts doing what the paper says, and no row reading the clean labels it must not."""

import json

import pytest
import torch
from benchtools import GUARD, REPO  # noqa: F401  (the audit hook)
from test_cifar10n_bench import make_cifar10n_like

from benchmarks import limit
from benchmarks.reference import airbench94 as ab
from benchmarks.studies import tta_views


def _guarded(fn):
    """`fn` with the guard on: a row's training and scoring must not open the clean labels
    (preparing the data does, to make and measure the noise)."""
    def run(*args, **kwargs):
        GUARD["on"] = True
        try:
            return fn(*args, **kwargs)
        finally:
            GUARD["on"] = False
    return run


@pytest.mark.slow
def test_limit_rows_spend_the_same_compute_and_never_read_the_clean_labels(tmp_path, capsys,
                                                                          monkeypatch):
    data = make_cifar10n_like(tmp_path / "cifar10n", 900, 100)
    out = tmp_path / "limit"
    GUARD["opened"] = []
    for name in ("run_webly", "run_reference"):
        monkeypatch.setattr(limit, name, _guarded(getattr(limit, name)))
    limit.main(["--data", str(data), "--labels", "worst", "--out", str(out), "--cache",
                str(tmp_path / "cache"), "--epochs", "2", "--holdout", "200", "--variant",
                "la:lookahead=0.95,test_tta=flip_shift"])
    assert not GUARD["opened"]
    res = json.loads((out / "limit.json").read_text())
    rows = {r["recipe"]: r for r in res["rows"]}
    assert set(rows) == {"webly", "webly la", "reference"}
    unit = res["unit_pflop"]
    assert rows["webly"]["pflop"] == pytest.approx(unit, rel=0.05)
    assert rows["webly la"]["pflop"] == pytest.approx(unit, rel=0.05)
    # the reference trains whole batches (here all 400 training images a step): within one
    one_batch = res["train_images"] * 3 * ab.macs_per_image() / 1e15
    assert abs(rows["reference"]["pflop"] - unit) <= one_batch
    assert rows["webly la"]["test_tta"] == "flip_shift"
    assert all(0 <= r["top1"] <= 100 for r in res["rows"])
    assert "| reference |" in capsys.readouterr().out
    # a second call reads the finished rows back
    before = (out / "reference.json").read_text()
    limit.main(["--data", str(data), "--labels", "worst", "--out", str(out), "--cache",
                str(tmp_path / "cache"), "--epochs", "2", "--holdout", "200", "--only",
                "reference"])
    assert (out / "reference.json").read_text() == before
    # test-time views on the finished model: its centre view is the row's score
    tta_views.main([str(out / "webly"), "--views", "center,flip", "--out",
                    str(tmp_path / "t.json")])
    views = {r["views"]: r for r in json.loads((tmp_path / "t.json").read_text())["rows"]}
    assert views["center"]["test_top1"] == rows["webly"]["top1"]
    assert views["center"]["holdout_top1"] == rows["webly"]["holdout_top1"]
    assert 0 <= views["flip"]["test_top1"] <= 100


def test_reference_whitening_lookahead_and_schedule():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    net = ab.Net()
    net.init_whitening(ab.normalise(x), 5e-4)
    w = net.whiten.weight
    assert torch.equal(w[:12], -w[12:])  # each filter and its negative
    assert [round(ab.lr_factor(s, 100), 3) for s in (0, 23, 100)] == [0.2, 1.0, 0.07]
    assert ab.macs_per_image() == pytest.approx(118e6, rel=0.01)  # the paper's net at 32 px
    assert ab.tta_views(2) == 6
    g = torch.Generator().manual_seed(0)
    padded = torch.nn.functional.pad(ab.normalise(x[:4]), (2,) * 4, mode="reflect")
    shifted = ab.translate(padded, 2, g)
    assert shifted.shape == (4, 3, 32, 32)
    # every crop is the image moved by at most 2 px: its centre 28x28 is in the padded copy
    for i in range(4):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(shifted[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert hits


def test_a_variant_must_name_training_options():
    with pytest.raises(SystemExit, match="NAME:KEY=VALUE"):
        limit.parse_variant("ls")
    with pytest.raises(SystemExit, match="no training option label_smothing"):
        limit.webly_recipe(REPO / "nowhere", 0.1, {"label_smothing": 0.2})
