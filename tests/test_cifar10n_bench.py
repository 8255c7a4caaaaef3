"""benchmarks/datasets/cifar10n.py end to end on a small generated tree in the CIFAR-10N layout.

Asserts that every stage ran and produced metrics (not a score), and that no training step opens
`info/train_clean_filelist.txt`: an audit hook fails any open of it while the recipe runs (forked
DataLoader workers inherit the hook).
"""

import json
import random
from pathlib import Path

import numpy as np
import pytest
from benchtools import GUARD, load_bench, run_guarded
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR = [("n02691156", "airplane"), ("n02958343", "automobile"), ("n01503061", "bird"),
         ("n02121620", "cat"), ("n02430045", "deer"), ("n02084071", "dog"), ("n01639765", "frog"),
         ("n02374451", "horse"), ("n04194289", "ship"), ("n04490091", "truck")]


def _bench():
    return load_bench("cifar10n")



def make_cifar10n_like(root: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """32x32 JPEGs whose class sets the mean colour; 40% of training labels wrong."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    (root / "info").mkdir(parents=True)
    (root / "info/synsets.txt").write_text("".join(f"{w} {n}\n" for w, n in CIFAR))
    lists = {"train": [], "val": [], "clean": []}
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir()
        for i in range(n):
            y = i % 10
            hue = np.array([y / 10, 1 - y / 10, (y % 3) / 3]) * 255
            img = np.clip(hue + nrng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            rel = f"{split}/{i:05d}.jpg"
            Image.fromarray(img).save(root / rel, quality=90)
            noisy = y if split == "val" or rng.random() > 0.4 else rng.randrange(10)
            lists[split].append(f"{rel} {noisy}")
            if split == "train":
                lists["clean"].append(f"{rel} {y}")
    for name, key in (("train_filelist", "train"), ("val_filelist", "val"), ("train_clean_filelist",
                                                                             "clean")):
        (root / f"info/{name}.txt").write_text("\n".join(lists[key]) + "\n")
    return root


def _run(tmp, longer: bool):
    """The recipe on a small tree, its first gate forced: `longer` (the gate asks only that more
    CE did not lose) sends the rest of the budget to CE; otherwise (more CE must gain 100 points)
    the rounds run."""
    bench = _bench()
    data = make_cifar10n_like(tmp / "cifar10n", 1200, 300)
    root = bench.prepare(bench.common.find_root(data, tmp / "cache", "cifar10n"), tmp / "cache",
                         "worst", 0, 0, holdout=200)
    recipe = bench.recipe_for(root, epochs=2, batch_size=64)
    gate = next(s for s in recipe["steps"] if s["id"] == "decide_longer")
    gate.update({"margin": 100.0} if not longer else
                {"rule": "memorised", "model": "@ce_more", "min_drop": 0.0})
    out = tmp / "run"
    run_guarded(bench, recipe, out)
    return bench, root, out


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("c10n"), longer=False)


@pytest.mark.slow
def test_every_stage_ran_and_scored(bench_run):
    bench, root, out = bench_run
    res = bench.harness.collect(bench.SPEC, out, root, "test", "worst", 0.0)
    decided = res["decisions"]["decisions"]  # every step's decision.json, one record shape
    assert not decided["decide_longer"]["changed"]
    assert "x paired SE" in decided["decide_longer"]["why"]
    round2 = decided["decide_round2"]["changed"]  # round 1 against CE on the holdout: either way
    assert [r["row"] for r in res["rows"]] == ["1", "2"] + ["3"] * round2 + ["4", "5"]
    for r in res["rows"]:
        assert 0 <= r["top1"] <= r["top5"] <= 100
    units = {r["row"]: r["compute_units"] for r in res["rows"]}
    flops = bench.harness.compute(bench.SPEC, out)
    cheaper = bench.harness.macs_per_image("cifar_resnet9", 20, 10) / \
        bench.harness.macs_per_image("cifar_resnet9", 32, 10)
    # up to whole batches; each round adds a forward pass over the training images, two views
    # (flip): 2/(2 epochs x 3) of a unit, at 20 px instead of 32, one over the holdout (200
    # images: a fifth of it) and its threshold probes (~0.015 here); the decision's half unit of
    # more CE counts in every row after it
    a_round = 1 + 2 * cheaper / 6 * 1.2 + 0.015
    assert units["1"] == pytest.approx(1, abs=0.1)
    assert units["2"] == pytest.approx(1.5 + a_round, abs=0.1), units
    assert units["5"] == pytest.approx(1.5 + (1 + round2) * a_round, abs=0.1), units
    # CE for what it spent, up to whole batches (here 14 of 958 draws an epoch: 6% short)
    assert units["4"] == pytest.approx(units["5"], rel=0.06), units
    assert "ce_rest" in res["decisions"]["skipped"]
    for labeller in ("train_ce", "train_final")[:1 + round2]:
        assert flops[labeller] / flops["ce"] == pytest.approx(2 * cheaper / 6, rel=0.15)
    # decision 4: each round's threshold chosen by probes on the holdout, their compute counted
    chosen = {s: d for s, d in decided.items() if d["name"] == "threshold"}
    assert list(chosen) == ["pl"] + ["pl2"] * round2
    for pl, d in chosen.items():
        assert set(d["scores"]) == {"0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"}
        assert d["detail"]["holdout_images"] == 200 and 0 < flops[pl] < 0.05 * flops["ce"]
        assert flops[pl] == pytest.approx(d["macs"] / 1e15)  # the decision's own compute
    from webly.app.report import Run, decisions
    shown = {r[0]: r[1] for r in decisions(Run(out))}  # webly report's decisions table
    assert all(shown[pl].startswith(f"threshold: {d['choice']}") for pl, d in chosen.items())
    for probe in ("val_ce_probe", "val_final_probe")[:1 + round2]:  # 200 holdout images, 2 views
        assert flops[probe] / flops["ce"] == pytest.approx(2 * cheaper / 6 / 5, rel=0.15)
    assert res["ce_same_total_compute"] == res["rows"][-2]["top1"]
    assert res["gain_over_ce"] == pytest.approx(res["rows"][-1]["top1"] - res["rows"][0]["top1"])
    ens = decided["test_recipe"]
    assert ens["name"] == "ensemble weights" and ens["rule"] == "beats"
    members = ["test_ce", "test_ce_more", "test_final"] + ["test_final2"] * round2
    assert ens["detail"]["members"] == members
    assert sum(ens["detail"][ens["choice"]]) == pytest.approx(1, abs=1e-3)  # rounded to 4
    if round2:  # round 2 labels the original noisy labels from both models' averaged predictions
        labellers = json.loads((out / "train_ens/step.json").read_text())["summary"]["members"]
        assert [Path(m).name for m in labellers] == ["train_ce", "train_final"], labellers
    for step in (s for s in bench.SHARE if bench.harness.ran(out, s)):
        assert (out / step / "model.safetensors").is_file()
        # export: best: the holdout score reported is the exported epoch's
        best, (epoch, of) = res["holdout_top1"][step], res["exported_epoch"][step]
        summary = json.loads((out / step / "train.summary.json").read_text())
        assert 1 <= epoch <= of and summary["best"] == {"val_top1": best, "epoch": epoch}
    md = bench.harness.to_markdown(bench.SPEC, res)
    assert "| 5 |" in md and "Pseudo-labels (pl):" in md
    assert list(res["pseudo_labels"]) == ["pl"] + ["pl2"] * round2
    for p in res["pseudo_labels"].values():  # measured against the clean labels, after training
        assert p["train_images"] == 1000 and p["kept"] == 1000 - p["dropped"]
        assert p["relabelled_to_true"] + p["relabelled_away_from_true"] <= p["relabelled"]
        assert 0 <= p["noise_after"] <= 1


@pytest.mark.slow
def test_when_more_ce_pays_the_budget_goes_to_ce(tmp_path):
    bench, root, out = _run(tmp_path, longer=True)
    res = bench.harness.collect(bench.SPEC, out, root, "test", "worst", 0.0)
    assert res["decisions"]["decisions"]["decide_longer"]["changed"]
    assert [r["row"] for r in res["rows"]] == ["1", "4", "5"]  # no round ran
    assert {"train_ce", "pl", "final", "final2"} <= set(res["decisions"]["skipped"])
    assert res["decisions"]["decisions"]["test_recipe"]["detail"]["members"] == [
        "test_ce", "test_ce_more", "test_ce_rest"]
    units = {r["row"]: r["compute_units"] for r in res["rows"]}
    assert units["5"] == pytest.approx(3, abs=0.1) and units["4"] == pytest.approx(3, abs=0.15)
    # each continued from the one before's weights, drawing the data epochs after its
    summary = {s: json.loads((out / s / "train.summary.json").read_text())
               for s in ("ce", "ce_more", "ce_rest")}
    assert summary["ce_more"]["transfer"]["stream_start"] == summary["ce"]["epochs_done"]
    assert summary["ce_rest"]["transfer"]["stream_start"] == (
        summary["ce"]["epochs_done"] + summary["ce_more"]["epochs_done"])


@pytest.mark.slow
def test_training_never_opened_the_clean_labels(bench_run):
    _, root, _ = bench_run
    assert GUARD["opened"] == []
    GUARD["on"] = True  # the guard itself works: an open would have failed the run
    try:
        with pytest.raises(PermissionError):
            (root / "info/train_clean_filelist.txt").read_text()
    finally:
        GUARD["on"] = False


@pytest.mark.slow
def test_recipe_reads_the_data_through_the_webvision_reader(bench_run):
    _, root, out = bench_run
    summary = json.loads((out / "manifest/step.json").read_text())["summary"]
    assert summary["layout"] == "webvision"
    assert summary["records"] == {"train": 1000, "val": 200, "test": 300}


def test_prepare_holds_out_noisy_labels_and_scores_on_clean_test(tmp_path):
    bench = _bench()
    data = make_cifar10n_like(tmp_path / "cifar10n", 60, 20)
    a = bench.prepare(data, tmp_path / "c1", "worst", 30, 10, holdout=15)
    b = bench.prepare(data, tmp_path / "c2", "worst", 30, 10, holdout=15)
    lists = {}
    for f in ("train_filelist", "val_filelist", "test_filelist", "train_clean_filelist"):
        assert (a / "info" / f"{f}.txt").read_text() == (b / "info" / f"{f}.txt").read_text()
        lists[f] = [line.split() for line in (a / "info" / f"{f}.txt").read_text().splitlines()]
    given = dict(line.split() for line in (data / "info/train_filelist.txt").read_text()
                 .splitlines())
    train, held = {p for p, _ in lists["train_filelist"]}, {p for p, _ in lists["val_filelist"]}
    assert len(train) == 30 and len(held) == 15 and not train & held
    assert all(given[p] == y for p, y in lists["val_filelist"])  # the holdout keeps noisy labels
    assert len(lists["test_filelist"]) == 10 and all(p.startswith("val/") for p, _ in
                                                     lists["test_filelist"])
    assert all((a / p).is_file() for p in train | held)


def test_seed_reaches_every_training_step_and_only_them(tmp_path):
    """--seed shifts every training step's own seed: the rounds' new models keep seeds of their
    own (v15: CE 0, round 1 1, round 2 2), so the members the recipe averages never share one."""
    bench = _bench()
    data = make_cifar10n_like(tmp_path / "cifar10n", 60, 20)
    root = bench.prepare(data, tmp_path / "cache", "worst", 30, 10, holdout=15)
    own = {"final": 1, "final2": 2}
    recipe = bench.recipe_for(root, epochs=2, seed=7)
    seeds = {s["id"]: s.get("seed") for s in recipe["steps"]}
    assert {k: v for k, v in seeds.items() if v is not None} == {
        k: 7 + own.get(k, 0) for k in bench.SHARE}
    default = bench.recipe_for(root, epochs=2)
    trained = {s["id"]: s.get("seed") for s in default["steps"] if s["id"] in bench.SHARE}
    assert trained == {k: own.get(k, 0) for k in bench.SHARE}


def test_a_smaller_training_size_draws_more_images_for_the_same_compute(tmp_path, monkeypatch):
    bench = _bench()
    data = make_cifar10n_like(tmp_path / "cifar10n", 60, 20)
    root = bench.prepare(data, tmp_path / "cache", "worst", 40, 10, holdout=15)
    macs = {32: 1000, 20: 250}  # a model whose cost is exactly 4x less at 20 px
    monkeypatch.setattr(bench.harness, "macs_per_image",
                        lambda backbone, size, classes: macs[size])
    text = bench.RECIPE.read_text()
    # consistency training: each labelled draw brings half an unlabelled image, a training pass
    # and a forward pass each: 1 + 0.5 x 4/3 = 5/3 the cost of a draw
    unlabeled = text.replace("    in_memory: true\n", "    in_memory: true\n"
                             "    unlabeled_weight: 1.0\n    unlabeled_ratio: 0.5\n")
    assert unlabeled != text
    for size, ratio, recipe in ((32, 1, text.replace("img_size: 20", "img_size: 32")),
                                (20, 4, text), (20, 4 * 3 / 5, unlabeled)):
        monkeypatch.setattr(bench, "RECIPE", tmp_path / f"r{size}.yaml")
        bench.RECIPE.write_text(recipe)
        steps = {s["id"]: s for s in bench.recipe_for(root, epochs=3)["steps"]}
        for sid, share in bench.SHARE.items():
            if sid in bench.SPEC.match:  # sized after the decisions, from what they spent
                continue
            draws = steps[sid]["epochs"] * steps[sid]["samples_per_epoch"]
            assert steps[sid]["img_size"] == size
            assert draws == pytest.approx(share * 3 * 40 * ratio, abs=steps[sid]["epochs"])


@pytest.mark.parametrize("noise", ["symmetric40", "asym40"])
def test_generated_noise_rates_and_directions(noise):
    bench = _bench()
    names = [n for _, n in CIFAR]
    clean = np.repeat(np.arange(10), 1000)
    a = bench.make_noise(clean, clean, noise, names, seed=0)
    assert np.array_equal(a, bench.make_noise(clean, clean, noise, names, seed=0))  # fixed seed
    wrong = a != clean
    if noise == "symmetric40":
        assert wrong.mean() == pytest.approx(0.4, abs=1e-9)
        assert np.bincount(a[wrong], minlength=10).min() > 300  # spread over the other classes
    else:
        idx = {n: i for i, n in enumerate(names)}
        for src, dst in bench.ASYM.items():
            hit = clean == idx[src]
            assert 0.35 < wrong[hit].mean() < 0.45 and (a[hit & wrong] == idx[dst]).all()
        untouched = ~np.isin(clean, [idx[s] for s in bench.ASYM])
        assert not wrong[untouched].any()


def test_a_recipe_variant_must_exist(tmp_path, capsys):
    bench = _bench()
    with pytest.raises(SystemExit):
        bench.harness.main(bench.SPEC, argv=["--data", str(tmp_path), "--recipe",
                                             str(tmp_path / "missing.yaml")])
    assert "--recipe" in capsys.readouterr().err and bench.SPEC.recipe == bench.RECIPE


@pytest.mark.slow
def test_holdout_noise_reads_a_run_folder(bench_run, capsys, monkeypatch):
    """benchmarks/studies/holdout_noise.py on a benchmark run: every model scored four ways, CE for
    the
    recipe's compute predicted on the holdout here (its recipe has no val step)."""
    _, _, out = bench_run
    monkeypatch.setattr("sys.argv", ["holdout_noise.py", str(out)])
    assert load_bench("holdout_noise").main() == 0
    res = json.loads((out / "holdout_noise.json").read_text())
    assert {"ce", "ce_more", "ce_long"} <= set(res["models"])
    assert (out / "holdout_noise/val_ce_long/predictions.parquet").is_file()
    for s in res["models"].values():
        assert {"noisy", "anchors", "oracle", "oracle_paired_se", "test"} <= set(s)
        assert 0 <= s["test"] <= 100
    assert "oracle" in capsys.readouterr().out


@pytest.mark.slow
def test_ensemble_rules_recomputes_the_recipes_answer(bench_run, capsys):
    """benchmarks/studies/ensemble_rules.py on a benchmark run: its recomputed rule is the run's
    row 5; "best" is the member the holdout ranks first; "plain" the plain average."""
    _, _, out = bench_run
    er = load_bench("ensemble_rules")
    assert er.main([str(out), "--json", str(out / "rules.json")]) == 0
    (s,) = json.loads((out / "rules.json").read_text())["runs"]
    row5 = json.loads((out / "score_recipe/metrics.json").read_text())["top1"]
    assert s["rules"]["rule"] == pytest.approx(100 * row5, abs=0.005)
    assert s["rules"]["best"] == s["test"][int(np.argmax(s["holdout"]))]
    if s["recorded_choice"] == "plain":
        assert s["rules"]["plain"] == s["rules"]["rule"]
    assert s["members"][:2] == ["ce", "ce_more"] and "mean difference" in capsys.readouterr().out


def test_a_variant_without_the_probe_passes_plans_its_shares():
    """A `--recipe` variant may lack steps the benchmark knows (v13's recipe has no threshold
    probes): the planned shares count the passes it has."""
    from webly.core.config import load_yaml

    bench = _bench()
    recipe = load_yaml(bench.RECIPE)
    full = bench.harness.shares(bench.SPEC, recipe, 3)
    recipe["steps"] = [s for s in recipe["steps"] if not s["id"].endswith("_probe")]
    assert bench.harness.shares(bench.SPEC, recipe, 3)["ce_long"] < full["ce_long"]
