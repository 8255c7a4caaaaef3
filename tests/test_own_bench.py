"""The own-data benchmark's accounting (benchmarks/datasets/own_data.py) and the label-issue
benchmark's audit reader (benchmarks/studies/label_issues.py), on generated folders and records:
no training."""

import json
from pathlib import Path

import pytest
from benchtools import load_bench
from ownfolders import make_folders

from webly.app import own, pipeline
from webly.app.runs import Run
from webly.inference import cost


def _plan(run: Path) -> dict:
    f = own.Facts({"train": 1000, "val": 100}, 10, 0.0, 32, "folder")
    plan = own.plan_for(f, Path("m"), 600, 0, measure_fn=lambda m, size, batch, bb="": own.Measured(
        "cifar_resnet9", size, 1e-3, 1e-4), clock=lambda: 0.0)
    run.mkdir(parents=True)
    (run / "own_plan.json").write_text(json.dumps({"facts": f.__dict__, "plan": plan.__dict__}))
    return plan.__dict__


def _ran(run: Path, step: str, skipped: bool = False) -> None:
    (run / step).mkdir(parents=True, exist_ok=True)
    (run / step / "step.json").write_text(json.dumps({"skipped": "a gate" if skipped else ""}))


def test_recipe_compute_counts_only_the_steps_that_ran(tmp_path):
    bench = load_bench("own_data")
    run = tmp_path / "run"
    plan = _plan(run)
    for sid in ("ce", "ce_more", "ce_rest", "train_preds"):
        _ran(run, sid)
    _ran(run, "final", skipped=True)
    total, parts = bench.recipe_macs(run)
    assert set(parts) == {"ce", "ce_more", "ce_rest", "train_preds"}
    s = plan["steps"]["ce_rest"]
    assert parts["ce_rest"] == cost.train_macs("cifar_resnet9", plan["size"],
                                               s["epochs"] * s["draws"], 10)
    assert total == pytest.approx(sum(parts.values()))


def test_plain_ce_options_are_the_recipes_own_settings():
    bench = load_bench("own_data")
    opts = bench.ce_options(48, 64, "balanced")
    cfg = own.train_config(48, 64)
    assert "--in-memory" in opts and cfg.in_memory
    opts = [o for o in opts if o != "--in-memory"]
    got = dict(zip(opts[::2], opts[1::2], strict=True))
    assert got["--backbone"] == cfg.backbone and got["--lr"] == str(cfg.lr)
    assert got["--sampler"] == "balanced" and got["--img-size"] == "48"
    assert bench.ce_options(128, 64, "shuffle", "resnet50")[1] == "resnet50"


def test_an_audit_marks_the_changed_labels_by_class_and_file(tmp_path):
    bench = load_bench("label_issues")
    data = make_folders(tmp_path / "photos", per_class=4, titles=False, classes=2)
    pipeline.run({"steps": [{"id": "manifest", "stage": "index", "root": str(data),
                             "holdout": 0.25}]}, tmp_path / "run")
    run = Run(tmp_path / "run")
    t = run.manifest.read(["path", "split"]).to_pydict()
    paths = t["path"]
    train = [p for p, s in zip(paths, t["split"], strict=True) if s == "train"][:3]
    kept, moved, dropped = ("/".join(Path(p).parts[-2:]) for p in train)
    audit = tmp_path / "audit.csv"
    audit.write_text("path,raw_label,curated_label,sender_id\n"
                     f"{kept},{kept.split('/')[0]},{kept.split('/')[0]},1\n"
                     f"{moved},{moved.split('/')[0]},other,2\n"
                     f"{dropped},{dropped.split('/')[0]},REMOVED_IN_CURATED_SUBSET,3\n")
    wrong = bench.audited(run, audit)
    by_path = dict(zip(paths, wrong.tolist(), strict=True))
    assert [by_path[p] for p in train] == [0, 1, 2]  # kept, moved, left out
    assert sum(w == -1 for w in wrong) == len(paths) - 3  # unlisted: not scored
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.jpg,1\n")
    with pytest.raises(SystemExit, match="path, raw_label and curated_label"):
        bench.audited(run, bad)
