"""`webly run --data DIR --budget B` (webly.app.own): the plan's rules with a given training rate
(no
timing in the assertions), the recipe it writes, its bad inputs, and the README's lines run on
generated class folders."""

import json
import re
import shlex
from pathlib import Path

import pytest
from ownfolders import make_folders

from webly.app import own
from webly.app.cli import main
from webly.app.pipeline import load_recipe
from webly.core.errors import WeblyError

REPO = Path(__file__).resolve().parents[1]


def plan_for(*args, **kwargs) -> own.Plan:
    """`own.plan_for` on a clock that does not move: the plan's own time is then what the test
    gives it, not how fast this machine runs the test."""
    return own.plan_for(*args, clock=lambda: 0.0, **kwargs)


def facts(train=10_000, val=1_000, test=0, classes=10, text=0.0, side=32):
    images = {"train": train, "val": val, **({"test": test} if test else {})}
    return own.Facts(images, classes, text, side, "folder")


def fixed_rate(per_image_at_32: float):
    """A measure function with a given cost: a draw at 32 px costs `per_image_at_32` seconds
    (scaling with the pixels), a decode 0.1 ms. Records the sizes it was asked for."""
    asked = []

    def measure_fn(manifest, size, batch, backbone=""):
        asked.append(size)
        return own.Measured(backbone or own.backbone_for(size), size,
                            per_image_at_32 * (size / 32) ** 2, 1e-4)

    measure_fn.asked = asked
    return measure_fn


@pytest.mark.parametrize("text,want", [("30m", 1800), ("1h30m", 5400), ("90s", 90),
                                       ("2h", 7200), ("1.5m", 90)])
def test_parse_budget(text, want):
    assert own.parse_budget(text) == want


@pytest.mark.parametrize("text", ["", "30", "m", "-5m", "0s", "30 minutes", "1d"])
def test_parse_budget_rejects(text):
    with pytest.raises(WeblyError, match="--budget"):
        own.parse_budget(text)


def test_a_fast_machine_keeps_the_images_size_and_fills_the_budget():
    f = facts(side=32)
    m = fixed_rate(1e-3)
    plan = plan_for(f, Path("m.parquet"), 1800, 60, measure_fn=m)
    assert plan.size == 32 and plan.backbone == "cifar_resnet9" and not plan.text
    assert plan.passes >= own.MIN_PASSES and m.asked == [32]
    rate = own.Measured("cifar_resnet9", 32, 1e-3, 1e-4)
    used = own.seconds(plan.steps, rate, f, False)
    assert 0.95 * (1800 - 60) <= used <= 1.001 * (1800 - 60)  # fills what is left (rounding)
    assert set(plan.steps) == set(own.IMAGE_STEPS)  # CE, more CE, then one of two branches
    # the plan's own time (measuring, counting multiply-adds) is spent too: read, not assumed
    assert plan.spent_s >= 60 and plan.estimated_s == pytest.approx(plan.spent_s + used, abs=0.15)


def test_a_slow_machine_trades_size_for_passes_but_not_below_the_floor():
    slow = plan_for(facts(side=32), Path("m"), 2700, 0, measure_fn=fixed_rate(2e-2))
    assert slow.size < 32 and slow.size >= own.MIN_SCALE * 32 and slow.passes >= own.MIN_PASSES
    slower = plan_for(facts(side=32), Path("m"), 300, 0, measure_fn=fixed_rate(2e-2))
    assert slower.size == 20 and slower.passes < own.MIN_PASSES  # the floor: 0.6 x 32
    starved = plan_for(facts(side=32), Path("m"), 60, 0, measure_fn=fixed_rate(2e-2))
    assert starved.passes < 1 and any("expect a weak model" in n for n in starved.notes)


def test_large_images_get_the_larger_backbone_and_each_is_measured():
    m = fixed_rate(1e-6)
    plan = plan_for(facts(side=300), Path("m"), 3600, 0, measure_fn=m)
    assert plan.size == 224 and plan.backbone == "resnet18"
    assert m.asked == [64, 96, 224]  # each backbone small, then at the chosen size


def test_photos_go_below_their_own_size_to_afford_the_passes():
    """512-px photos on a slow machine: the 0.6-of-the-images'-size floor (a thumbnail's rule)
    would leave no affordable size; the photo floor is MIN_SIZE."""
    m = fixed_rate(2e-3)
    plan = plan_for(facts(train=3000, side=512), Path("m"), 300, 15, measure_fn=m)
    assert own.MIN_SIZE <= plan.size <= 64 and plan.backbone == "cifar_resnet9"
    assert max(m.asked) <= 64  # ResNet-18 could not fit even at twice the rate: not measured
    assert plan.passes >= own.MIN_PASSES or plan.size == own.MIN_SIZE
    assert plan.estimated_s == pytest.approx(300, rel=0.01)  # fills the budget


def test_a_plan_never_trains_from_scratch_in_fewer_steps_than_the_engine_warns_of():
    """A short budget: the batch halves until the steps that start from random weights have
    MIN_STEPS optimizer steps; where even batch 16 cannot, the plan says so."""
    from webly.training.plan import MIN_STEPS

    f = facts(train=3000, side=32)
    plan = plan_for(f, Path("m"), 300, 0, measure_fn=fixed_rate(2e-2))
    assert plan.batch < own.batch_for(3000)
    assert own.optimizer_steps(plan.steps, plan.batch) >= MIN_STEPS
    assert any(f"at least {MIN_STEPS} optimizer steps" in n for n in plan.notes)
    starved = plan_for(f, Path("m"), 40, 0, measure_fn=fixed_rate(2e-2))
    assert starved.batch == 16 and own.optimizer_steps(starved.steps, 16) < MIN_STEPS
    assert any("rarely learns" in n and "expect a weak model" in n for n in starved.notes)


def test_the_branches_of_decision_1_are_counted_once():
    rate = own.Measured("cifar_resnet9", 32, 1e-3, 1e-4)
    f = facts()
    steps = own.step_sizes(own.IMAGE_STEPS, 5.0, 10_000, 128)
    both = own.seconds(steps, rate, f, False)
    one = own.seconds({k: v for k, v in steps.items() if k != "ce_rest"}, rate, f, False)
    assert both == pytest.approx(one)


def test_text_plans_ce_then_final_and_a_huge_budget_is_capped():
    plan = plan_for(facts(text=0.9), Path("m"), 10**7, 0, measure_fn=fixed_rate(1e-4))
    assert plan.text and set(plan.steps) == {"ce", "final"}
    assert plan.passes == own.MAX_PASSES and any("unspent" in n for n in plan.notes)
    assert plan.steps["final"]["units"] == 2.0


def test_no_budget_measures_nothing():
    m = fixed_rate(1.0)
    plan = plan_for(facts(side=60), Path("m"), None, 0, measure_fn=m)
    assert m.asked == [] and plan.size == 48 and plan.passes == own.NO_BUDGET_PASSES


def test_step_sizes_spend_fractions_of_an_epoch():
    steps = own.step_sizes({"a": 0.5, "b": 2.0}, 1.3, 10_000, 128)
    assert steps["a"] == {"units": 0.5, "epochs": 1, "draws": 6500}
    b = steps["b"]
    assert b["epochs"] == 3 and abs(b["epochs"] * b["draws"] - 26_000) < 3
    tiny = own.step_sizes({"a": 1.0}, 0.001, 1_000, 128)
    assert tiny["a"]["draws"] == 128  # never less than one optimizer step


@pytest.mark.parametrize("text,test", [(False, 0), (True, 500)])
def test_recipe_validates_and_reads_the_holdout(text, test, tmp_path):
    f = facts(text=0.9 if text else 0.0, test=test)
    plan = plan_for(f, Path("m"), 1800, 0, measure_fn=fixed_rate(1e-4))
    recipe = own.recipe_for(plan, f, tmp_path, tmp_path / "text.jsonl" if text else None)
    _, steps = load_recipe(recipe)  # every stage, option and reference is valid
    by_id = {s.id: s for s in steps}
    assert ("tags" in by_id) == text and ("val_probe" in by_id) == text
    assert by_id["manifest"].inputs["root"] == str(tmp_path.resolve())
    assert by_id["manifest"].options["holdout"] == own.HOLDOUT
    assert (by_id["pl"].inputs.get("text") == "@tags") == text
    scored = "test" if test else "val"
    assert by_id["score_ensemble"].inputs["preds"] == f"@{scored}_ensemble"
    assert by_id[f"{scored}_ensemble"].inputs["fit_labels"] == "@manifest"
    assert by_id[f"{scored}_ensemble"].options["fit_metric"] == "top1"  # a noisy holdout
    assert by_id[f"{scored}_ensemble"].options["fit_min_se"] == 2.0  # fitted only when clearly
    assert by_id[f"{scored}_ensemble"].options["fit_default"] == "last"  # ... better than it
    first = "ce"
    for sid in plan.steps:
        opts = by_id[sid].options  # budgeted: the loop ends on the step's planned time
        assert opts["epochs"] == own.EPOCH_CAP * plan.steps[sid]["epochs"]
        assert opts["time_budget_s"] == plan.steps[sid]["seconds"] > 0
        per_epoch = opts["samples_per_epoch"] // opts["batch_size"]  # warmup: >= 100 steps
        assert opts["warmup_epochs"] == max(0.5, round(100 / per_epoch, 3))
        assert opts["export"] == "best"
        assert opts["samples_per_epoch"] == plan.steps[sid]["draws"]
    assert by_id["train_preds"].inputs["model"] == f"@{first}"
    if text:  # the holdout chooses the labels final continues CE on: given unless beaten
        pl = by_id["pl"].options
        assert pl["against_given"] and 0 in pl["text_weights"]
        assert by_id["pl"].inputs["probe"] == ["@train_preds", "@val_probe"]
        assert by_id["final"].options["continue_from"] == "@ce"
        assert by_id["final"].inputs["labels"] == "@pl"
    if not text:  # decision 1: more CE against CE on the holdout; one branch runs
        gate = by_id["decide_longer"]
        assert gate.inputs["preds"] == ["@val_ce", "@val_ce_more"]
        assert gate.options["rule"] == "beats"
        assert by_id["ce_more"].options["continue_from"] == "@ce"
        assert by_id["ce_rest"].when == "@decide_longer"
        assert by_id["final"].when == by_id["train_preds"].when == "not @decide_longer"
        assert by_id["final"].options["seed"] == 1  # its own initial weights
        assert by_id[f"{scored}_ensemble"].inputs["preds"] == [
            f"@{scored}_{m}" for m in ("ce", "ce_more", "ce_rest", "final")]


def test_bad_inputs(tmp_path):
    with pytest.raises(WeblyError, match="not a folder"):
        own.prepare(tmp_path / "nothing", tmp_path / "run")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(WeblyError, match="not a folder"):
        own.prepare(tmp_path / "file.txt", tmp_path / "run")
    run = tmp_path / "run"
    run.mkdir()
    (run / "own_plan.json").write_text(json.dumps({"data": "/elsewhere", "plan": {}}))
    (run / "recipe.yaml").write_text("steps: []\n")
    (tmp_path / "d").mkdir()
    with pytest.raises(WeblyError, match="holds a run of /elsewhere"):
        own.prepare(tmp_path / "d", run)


@pytest.mark.parametrize("argv,match", [
    (["run"], "a recipe or --data"),
    (["run", "configs/tiny/pipeline.yaml", "--data", "x"], "a recipe or --data"),
    (["run", "configs/tiny/pipeline.yaml", "--budget", "5m"], "--budget, .* plan your own data"),
    (["plan"], "a recipe or --data"),
    (["run", "--data", "x", "--budget", "soon"], "not a folder|--budget"),
    (["run", "configs/tiny/pipeline.yaml", "--pretrained", "w.pt"], "plan your own data"),
])
def test_cli_rules(argv, match, capsys):
    assert main(argv) != 0
    assert re.search(match, capsys.readouterr().err)


@pytest.mark.slow
def test_readme_own_data_lines_run(tmp_path, monkeypatch):
    """The README's section, line by line, on generated class folders with titles (its budget
    cut to one minute); then the plan, the report and the classified photos are there."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- own-data -->\n```bash\n(.*?)```", text, re.S).group(1)
    lines = [ln.split("#")[0].strip() for ln in block.splitlines()]
    lines = [ln for ln in lines if ln]
    assert len(block.strip().splitlines()) == 5 and len(lines) == 3
    make_folders(tmp_path / "my_photos", per_class=30)
    make_folders(tmp_path / "new_photos", per_class=2, titles=False)
    monkeypatch.chdir(tmp_path)
    for line in lines:
        argv = shlex.split(line.replace("30m", "1m"))
        assert argv[0] == ".venv/bin/webly"
        assert main(argv[1:]) == 0, line
    plan = json.loads((tmp_path / "runs/my_photos/own_plan.json").read_text())
    assert plan["plan"]["text"] and plan["facts"]["images"]["val"] > 0
    # with text the holdout chose the labels final continued CE on, and said why
    chose = json.loads((tmp_path / "runs/my_photos/pl/decision.json").read_text())
    assert chose["default"] == "given" and chose["why"] and "given" in chose["scores"]
    assert "continued_from" in json.loads(
        (tmp_path / "runs/my_photos/final/train.summary.json").read_text()).get("transfer", {})
    assert (tmp_path / "runs/my_photos/report.html").is_file()
    rows = (tmp_path / "new_photos.csv").read_text().splitlines()
    assert len(rows) == 1 + 12  # a header, then one row an image


def test_a_webvision_tree_keeps_its_val_and_a_rerun_reads_the_plan_back(synth_small, tmp_path):
    root, _ = synth_small
    out = tmp_path / "run"
    plan, recipe = own.prepare(root, out)  # no budget: nothing is measured
    saved = json.loads((out / "own_plan.json").read_text())
    assert saved["facts"]["layout"] == "webvision" and saved["facts"]["images"]["val"] > 0
    assert plan.text and (out / "tags").is_dir() and plan.passes == own.NO_BUDGET_PASSES
    assert {s["id"] for s in recipe["steps"]} >= {"manifest", "tags", "ce", "pl", "final"}
    said = []
    again, recipe2 = own.prepare(root, out, "5m", log=said.append)
    assert again == plan and recipe2 == recipe
    assert any("planned for another budget: kept" in s for s in said)


def test_the_plan_says_what_it_chose():
    plan = plan_for(facts(text=0.9), Path("m"), 1800, 30, measure_fn=fixed_rate(1e-3))
    text = "\n".join(plan.lines())
    assert "with text (the holdout decides what it is worth)" in text
    assert "cifar_resnet9 at 32 px" in text
    assert "final: " in text and "of a 30m00s budget" in text
    none = plan_for(facts(), Path("m"), None, 0, measure_fn=fixed_rate(1e-3))
    assert "time not estimated" in "\n".join(none.lines())


@pytest.mark.slow
def test_images_only_run_decides_on_the_holdout_and_reports_it(tmp_path):
    """Class folders without text, a short budget: measured in seconds, decision 1 recorded, one
    of its branches ran and the other is skipped with why, and the report names both."""
    from webly.app.runs import Run, decided

    data = make_folders(tmp_path / "photos", per_class=30, titles=False)
    out = tmp_path / "run"
    result = own.run_own(data, out, "1m")
    plan = json.loads((out / "own_plan.json").read_text())["plan"]
    assert not plan["text"] and plan["rates"]  # measured: a few steps, no training run
    assert not list(out.glob("measure_*px.log"))
    found = decided(Run(out))
    changed = found["decisions"]["decide_longer"]["changed"]
    branch = "ce_rest" if changed else "final"
    assert [b for b in own.BRANCHES if b not in found["skipped"]] == [branch]
    assert (out / "model").resolve() == (out / branch).resolve()  # what `classify` takes
    assert result["model"] == str(out / "model")
    page = (out / "report.html").read_text()
    assert "decide_longer" in page and "CE continued (+0.5 unit)" in page
    assert result["scores"]


def test_pretrained_weights_plan_a_finetune_of_their_backbone(tmp_path):
    """`--pretrained FILE --backbone B`: sizes the features were made at (from 64 px), a few
    passes suffice (no MIN_STEPS from scratch), the seed's finetune lr, every step that starts
    anew loads the weights; the plan says so."""
    f = facts(train=3000, side=400)
    plan = plan_for(f, Path("m"), 600, 0, measure_fn=fixed_rate(1e-4),
                    pretrained=("/w/pretrained.safetensors", "test_resnet"))
    assert plan.backbone == "test_resnet" and plan.size >= 64
    assert plan.passes >= own.MIN_PASSES_PRETRAINED and plan.pretrained.endswith(".safetensors")
    assert "test_resnet at" in plan.lines()[0] and "from /w/pretrained" in plan.lines()[0]
    recipe = own.recipe_for(plan, f, tmp_path, None)
    by_id = {s["id"]: s for s in recipe["steps"]}
    assert by_id["ce"]["pretrained"] == by_id["final"]["pretrained"] == plan.pretrained
    assert "pretrained" not in by_id["ce_more"]  # continues CE's own weights
    assert by_id["ce"]["lr"] == pytest.approx(0.01 * plan.batch / 128)
    assert {s["backbone"] for s in recipe["steps"] if "backbone" in s} == {"test_resnet"}


def test_starting_weights_resolve_once_and_say_what_is_missing(tmp_path):
    import torch

    from webly.training.models import create_backbone

    with pytest.raises(WeblyError, match="needs --backbone"):
        own.starting_weights(str(tmp_path / "w.pt"), None, tmp_path / "run")
    with pytest.raises(WeblyError, match="--backbone with --data needs --pretrained"):
        own.starting_weights(None, "resnet18", tmp_path / "run")
    torch.save(create_backbone("test_resnet", 1000).state_dict(), tmp_path / "w.pt")
    with pytest.raises(WeblyError, match="does not fit this backbone"):
        own.starting_weights(str(tmp_path / "w.pt"), "resnet18", tmp_path / "bad")
    said = []
    (path, bb), source = own.starting_weights(str(tmp_path / "w.pt"), "test_resnet",
                                              tmp_path / "run", log=said.append)
    assert bb == "test_resnet" and Path(path).is_file() and source.startswith("file ")
    assert len(said) == 1
    (tmp_path / "w.pt").unlink()  # a rerun reads RUN/pretrained.safetensors, not the source
    again = own.starting_weights(str(tmp_path / "w.pt"), "test_resnet", tmp_path / "run")
    assert again == ((path, bb), source)


@pytest.mark.slow
def test_run_data_pretrained_runs_from_a_weights_file(tmp_path):
    """The CLI end to end from a weights file made here (no test downloads): the run records
    where the weights came from, and the first model's transfer loaded them."""
    import torch

    from webly.training.models import create_backbone

    data = make_folders(tmp_path / "photos", per_class=12, titles=False)
    torch.save(create_backbone("test_resnet", 1000).state_dict(), tmp_path / "w.pt")
    out = tmp_path / "run"
    assert main(["run", "--data", str(data), "--budget", "40s", "-o", str(out), "--pretrained",
                 str(tmp_path / "w.pt"), "--backbone", "test_resnet"]) == 0
    saved = json.loads((out / "own_plan.json").read_text())
    assert saved["pretrained_from"] == f"file {(tmp_path / 'w.pt').resolve()}"
    t = json.loads((out / "ce/train.summary.json").read_text())["transfer"]
    assert t["pretrained_from"] == f"file {(out / 'pretrained.safetensors').resolve()}"
