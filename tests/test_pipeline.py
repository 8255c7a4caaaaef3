"""`webly run`: validation before running, skipping by hash, reruns, resumption, --from/--until."""

import json

import pytest

import webly.app.pipeline as pipeline
from webly.app.cli import main
from webly.core.errors import WeblyError

TRAIN = dict(backbone="test_resnet", img_size=32, epochs=2, batch_size=16, accum_steps=1, workers=0,
             tensorboard=False, ckpt_every_steps=1)


def recipe(**synth):
    return {"steps": [
        {"id": "data", "stage": "synth", "families": 2, "per_family": 2, "max_per_class": 12,
         "min_per_class": 8, "val_per_class": 2, "test_per_class": 2, "image_width": 32,
         "image_height": 32, **synth},
        {"id": "manifest", "stage": "index", "root": "@data"},
        {"id": "tags", "stage": "tag", "manifest": "@manifest", "min_count": 1, "max_df": 0.9},
        {"id": "ft", "stage": "finetune", "manifest": "@manifest", **TRAIN},
        {"id": "val", "stage": "predict", "model": "@ft", "manifest": "@manifest", "split": "val",
         "workers": 0},
        {"id": "score", "stage": "evaluate", "preds": "@val", "manifest": "@manifest"},
    ]}


def test_runs_then_skips_then_reruns_what_changed(tmp_path):
    first = pipeline.run(recipe(), tmp_path)
    assert first["ran"] == ["data", "manifest", "tags", "ft", "val", "score"]
    assert json.loads((tmp_path / "score/metrics.json").read_text())["images"] == 8
    assert pipeline.run(recipe(), tmp_path)["ran"] == []
    changed = recipe()
    changed["steps"][2]["min_count"] = 2  # tags changed; nothing reads them downstream
    assert pipeline.run(changed, tmp_path)["ran"] == ["tags"]
    assert pipeline.run(recipe(seed=1), tmp_path)["ran"] == ["data", "manifest", "tags", "ft",
                                                             "val", "score"]


@pytest.mark.parametrize("mutate,msg", [
    (lambda s: s.append({"id": "x", "stage": "train"}),
     "unknown stage 'train'; valid: synth, index"),
    (lambda s: s[2].update(min_cnt=1),
     "unknown option 'min_cnt' \\(did you mean 'min_count'\\?\\)"),
    (lambda s: s[1].update(root="@nothing"), "refers to @nothing, not an earlier step"),
    (lambda s: s.append({"id": "tags", "stage": "tag", "manifest": "@manifest"}),
     "duplicate id 'tags'"),
    (lambda s: s[5].update(top_k=3), "evaluate: unknown option .top_k.; valid: most_confused"),
    (lambda s: s[3].pop("manifest"), "stage finetune needs manifest"),
])
def test_whole_recipe_validated_before_anything_runs(tmp_path, mutate, msg):
    r = recipe()
    mutate(r["steps"])
    with pytest.raises(WeblyError, match=msg):
        pipeline.run(r, tmp_path)
    assert not list(tmp_path.iterdir())


def test_interrupted_step_resumes(tmp_path, monkeypatch):
    import webly.training.engine as train_mod

    real = train_mod.checkpoints.save_training
    calls = {"n": 0}

    def interrupt_after_two(*a, **k):
        out = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of training
        return out

    monkeypatch.setattr(train_mod.checkpoints, "save_training", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(recipe(), tmp_path)
    monkeypatch.undo()
    assert not (tmp_path / "ft/step.json").is_file()
    statuses = {s.id: st for s, st in pipeline.plan(pipeline.load_recipe(recipe())[1], tmp_path)}
    assert statuses["tags"] == "done" and statuses["ft"] == "resume"
    assert pipeline.run(recipe(), tmp_path)["ran"] == ["ft", "val", "score"]


def test_until_from_and_dry_run(tmp_path, capsys):
    assert pipeline.run(recipe(), tmp_path, until="tags")["ran"] == ["data", "manifest", "tags"]
    with pytest.raises(WeblyError, match="earlier step ft is not done"):
        pipeline.run(recipe(), tmp_path, start="val")
    assert pipeline.run(recipe(), tmp_path, start="tags", until="tags")["ran"] == ["tags"]
    with pytest.raises(WeblyError, match="--until 'nope' is not a step"):
        pipeline.run(recipe(), tmp_path, until="nope")
    f = tmp_path / "r.yaml"
    import yaml

    f.write_text(yaml.safe_dump(recipe()))
    assert main(["run", str(f), "-o", str(tmp_path), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "tags (tag): done" in err and "ft (finetune): run" in err
    assert not (tmp_path / "ft").exists()


def test_renamed_recipe_key_still_works_with_a_warning(capsys):
    steps = pipeline.validate([{"id": "m", "stage": "index", "root": "data"},
                      {"id": "w", "stage": "weigh", "manifest": "@m"},
                      {"id": "lw", "stage": "pretrain", "set": "lw", "manifest": "@m",
                       "weights": "@w"},
                      {"id": "e", "stage": "ensemble", "preds": ["a", "b"], "weights": [2, 1]}])
    assert steps[2].inputs["label_weights"] == "@w" and "weights" not in steps[2].inputs
    assert steps[3].options["model_weights"] == [2, 1]
    err = capsys.readouterr().err
    assert "'weights' is now 'label_weights'" in err and "'weights' is now 'model_weights'" in err
