"""`webly report RUN` on a small run folder: every section that the run has data for is there,
the clean labels (a generated set's truth) feed the measurements, and a folder that is no run is
a one-line error."""

import json

import pytest

import webly.pipeline as pipeline
from webly.cli import main
from webly.report import write_report

TRAIN = dict(backbone="test_resnet", img_size=32, epochs=1, batch_size=16, accum_steps=1, workers=0,
             tensorboard=False)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    pipeline.run({"steps": [
        {"id": "data", "stage": "synth", "families": 2, "per_family": 2, "max_per_class": 12,
         "min_per_class": 8, "val_per_class": 2, "test_per_class": 2, "image_width": 32,
         "image_height": 32},
        {"id": "manifest", "stage": "index", "root": "@data"},
        {"id": "tags", "stage": "tag", "manifest": "@manifest", "min_count": 1, "max_df": 0.9},
        {"id": "ft", "stage": "finetune", "manifest": "@manifest", **TRAIN},
        {"id": "train_ft", "stage": "predict", "model": "@ft", "manifest": "@manifest",
         "split": "train", "workers": 0},
        {"id": "pl", "stage": "pseudo-label", "manifest": "@manifest", "preds": "@train_ft",
         "text": "@tags", "text_folds": 2},
        {"id": "val", "stage": "predict", "model": "@ft", "manifest": "@manifest", "split": "val",
         "workers": 0},
        {"id": "score", "stage": "evaluate", "preds": "@val", "manifest": "@manifest"},
    ]}, out)
    return out


@pytest.mark.slow
def test_report_shows_what_the_run_has(small_run, capsys):
    assert main(["report", str(small_run)]) == 0
    page = (small_run / "report.html").read_text()
    for section in ("Ablation", "Pseudo-labels", "Keyword audit", "Examples", "given label",
                    "true label", "data:image/jpeg;base64,"):
        assert section in page, section
    md = (small_run / "report.md").read_text()
    assert "| score |" in md and "Keyword audit" in md
    result = write_report(small_run)
    assert result["ablation"][0]["model"] == "score"
    pl = result["pseudo_labels"]
    assert pl["step"] == "pl" and "wrong_labels_before" in pl  # truth/ of the generated set
    assert 0 <= result["keyword_audit"]["balanced_top1"] <= 100
    scores = small_run / "pl/scores.parquet"
    import pyarrow.parquet as pq

    t = pq.read_table(scores).to_pydict()
    assert set(t) == {"row", "id", "label", "p_image", "p_text", "p_label"}
    assert json.loads((small_run / "pl/step.json").read_text())["summary"]["text"]["folds"] == 2


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no finished steps" in err and "Traceback" not in err
