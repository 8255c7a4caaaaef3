"""Every stage's every path input, handed a file of the wrong kind (a text file, an empty folder,
a path that does not exist, another stage's output) while its other inputs are right, is a
one-line error naming it, never a traceback."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from smallrun import first_steps

import webly.app.pipeline as pipeline
from webly.app.cli import main
from webly.app.stages import STAGES

TRAIN = dict(backbone="test_resnet", img_size=32, epochs=1, batch_size=16, workers=0,
             tensorboard=False)
FAST = ["--backbone", "test_resnet", "--img-size", "32", "--batch-size", "8", "--workers", "0",
        "--max-steps", "1", "--no-tensorboard"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    pipeline.run({"steps": [
        *first_steps(per_family=3, max_per_class=10, min_per_class=6),
        {"id": "lw", "stage": "weigh", "manifest": "@manifest", "tags": "@tags"},
        {"id": "ft", "stage": "finetune", "manifest": "@manifest", **TRAIN},
        {"id": "train", "stage": "predict", "model": "@ft", "manifest": "@manifest",
         "split": "train", "workers": 0, "features": True},
        {"id": "val", "stage": "predict", "model": "@ft", "manifest": "@manifest",
         "split": "val", "workers": 0, "features": True},
        {"id": "test", "stage": "predict", "model": "@ft", "manifest": "@manifest",
         "split": "test", "workers": 0},
        {"id": "pl", "stage": "pseudo-label", "manifest": "@manifest", "preds": "@train"},
    ]}, out)
    return out


def _valid(run: Path) -> dict[str, dict[str, object]]:
    """Right inputs for each stage (and the options that make it read each of them)."""
    m, val_list = run / "manifest/manifest.parquet", run / "data/info/val_filelist.txt"
    return {
        "index": {"root": run / "data"},
        "shard": {"manifest": m},
        "tag": {"manifest": m},
        "weigh": {"manifest": m, "tags": run / "tags", "labels": run / "pl"},
        "pretrain wt": {"manifest": m, "set": "wt", "tags": run / "tags"},
        "pretrain lw": {"manifest": m, "set": "lw", "label_weights": run / "lw"},
        "finetune": {"manifest": m, "labels": run / "pl"},
        "predict": {"model": run / "ft", "manifest": m},
        "evaluate": {"preds": run / "val", "manifest": m, "labels": val_list},
        "ensemble": {"preds": [run / "val", run / "val"], "fit": [run / "val", run / "val"],
                     "fit_labels": val_list},
        "pseudo-label": {"manifest": m, "preds": run / "train", "text": run / "tags"},
        "pseudo-label probe": {"manifest": m, "preds": run / "train",
                               "probe": [run / "train", run / "val"], "thresholds": "0.5,0.9"},
        "submit": {"preds": run / "test"},
        "gate memorised": {"model": run / "ft"},
        "gate beats": {"rule": "beats", "preds": [run / "val", run / "val"], "labels": m},
    }


def _argv(stage: str, inputs: dict[str, object], out: Path) -> list[str]:
    st = next(s for s in STAGES if s.name == stage)
    argv = [stage]
    for i in st.inputs:
        if i.name not in inputs:
            continue
        value = inputs[i.name]
        vals = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        argv += vals if i.positional else [f"--{i.name.replace('_', '-')}", *vals]
    extra = FAST if st.training else ["--workers", "0"] if stage in ("predict", "shard") else []
    extra += ["--rule", str(inputs["rule"])] if "rule" in inputs else []
    extra += ["--thresholds", str(inputs["thresholds"])] if "thresholds" in inputs else []
    return argv + extra + ["-o", str(out)]


def _cases() -> list[tuple[str, str]]:
    names = {"index": ["root"], "shard": ["manifest"], "tag": ["manifest"],
             "weigh": ["manifest", "tags", "labels"], "pretrain wt": ["manifest", "tags"],
             "pretrain lw": ["label_weights"], "finetune": ["manifest", "labels"],
             "predict": ["model", "manifest"], "evaluate": ["preds", "manifest", "labels"],
             "ensemble": ["preds", "fit", "fit_labels"],
             "pseudo-label": ["manifest", "preds", "text"], "pseudo-label probe": ["probe"],
             "submit": ["preds"], "gate memorised": ["model"], "gate beats": ["preds", "labels"]}
    return [(stage, name) for stage, inputs in names.items() for name in inputs]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"{c[0]}-{c[1]}")
def test_a_wrong_kind_of_input_is_a_one_line_error(run, tmp_path, case):
    stage_case, name = case
    stage = stage_case.split()[0]
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty").mkdir()
    # another stage's output: the manifest, or the tags where a manifest is a right input (labels
    # of a fit or a gate may be a manifest)
    manifest_ok = name == "manifest" or (stage, name) in (("ensemble", "fit_labels"),
                                                          ("gate", "labels"))
    wrongs = [tmp_path / "notes.txt", tmp_path / "empty", tmp_path / "nothing.parquet",
              run / ("tags" if manifest_ok else "manifest/manifest.parquet")]
    for wrong in wrongs:
        inputs = dict(_valid(run)[stage_case])
        inputs[name] = [wrong, wrong] if isinstance(inputs[name], list) else wrong
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(_argv(stage, inputs, tmp_path / f"out-{wrong.name}"))
        text = err.getvalue()
        last = text.strip().splitlines()[-1] if text.strip() else ""
        assert rc == 2 and last.startswith(f"webly {stage}: error: "), (wrong, rc, text[-500:])
        assert "Traceback" not in text, text


def test_the_right_inputs_work(run, tmp_path):
    """The cases above fail for their wrong input, not for the others: each stage runs with the
    right ones."""
    for stage_case, inputs in _valid(run).items():
        if stage_case.split()[0] in ("index", "shard"):
            continue
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            rc = main(_argv(stage_case.split()[0], inputs, tmp_path / stage_case.replace(" ", "_")))
        assert rc == 0, stage_case
