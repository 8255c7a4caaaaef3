"""Decisions on the holdout (issue 27): the gate's rules, a recipe's conditional steps, and the
ensemble's members fitted by holdout top-1 (a member that hurts is left out, one that helps
stays)."""

import json

import numpy as np
import pytest
from test_ensemble_pseudolabel import _write

from webly.app.pipeline import load_recipe, run
from webly.app.report import write_report
from webly.core import decisions
from webly.core.errors import WeblyError
from webly.data.predictions import load_predictions
from webly.inference.ensemble import (
    EnsembleConfig,
    ensemble,
    fit_top1,
    fitted_or_plain,
    simplex_grid,
)
from webly.inference.gate import GateConfig, memorised, run_gate


def _run_folder(path, curve):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": i + 1, "val_top1": v / 100}) + "\n" for i, v in enumerate(curve)))
    return str(path)


def test_memorised_is_a_drop_after_the_peak():
    assert memorised([40, 50, 55, 54.2], 0.5).changed  # fell 0.8 from its best
    still = memorised([40, 50, 55, 55.2], 0.5)
    assert not still.changed and still.detail["best_epoch"] == 4 and still.gain == 0
    small = memorised([40, 55, 54.7], 0.5)
    assert not small.changed and "a drop of 0.30 < 0.5" in small.why


def test_gate_rules_and_their_bad_inputs(tmp_path):
    run_gate(cfg=GateConfig(), out=tmp_path / "g", model=_run_folder(tmp_path / "r", [50, 49]))
    assert json.loads((tmp_path / "g/decision.json").read_text())["changed"]
    with pytest.raises(WeblyError, match="needs --model"):
        run_gate(cfg=GateConfig(), out=tmp_path / "g2")
    with pytest.raises(WeblyError, match="no metrics.jsonl"):
        run_gate(cfg=GateConfig(), out=tmp_path / "g2", model=str(tmp_path))
    (tmp_path / "nv").mkdir()
    (tmp_path / "nv/metrics.jsonl").write_text('{"epoch": 1, "loss": 2}\n')
    with pytest.raises(WeblyError, match="no holdout score"):
        run_gate(cfg=GateConfig(), out=tmp_path / "g2", model=str(tmp_path / "nv"))
    with pytest.raises(WeblyError, match="needs --preds BASELINE CANDIDATE"):
        run_gate(cfg=GateConfig(rule="beats"), out=tmp_path / "g2")
    with pytest.raises(WeblyError, match="must not be negative"):
        GateConfig(min_drop=-1).validate()
    with pytest.raises(WeblyError, match="rule 'guess' is not one of memorised, beats"):
        GateConfig(rule="guess").validate()


def test_beats_compares_holdout_top1(tmp_path):
    ids = [f"v{i}" for i in range(20)]
    y = np.arange(20) % 2
    labels = tmp_path / "val.txt"
    labels.write_text("".join(f"{i} {c}\n" for i, c in zip(ids, y, strict=True)))
    right = np.eye(2)[y] * 0.8 + 0.1
    half = right.copy()
    half[:10] = half[:10, ::-1]
    a, b = _write(tmp_path / "a", ids, half), _write(tmp_path / "b", ids, right)
    res = run_gate(cfg=GateConfig(rule="beats"), out=tmp_path / "g", preds=[a, b],
                   labels=str(labels))
    assert res["changed"] and res["scores"] == {"baseline": 50.0, "candidate": 100.0}
    assert res["detail"] == {"baseline": a, "candidate": b}
    assert not run_gate(cfg=GateConfig(rule="beats", margin=60), out=tmp_path / "g",
                        preds=[a, b], labels=str(labels))["changed"]


def test_beats_asks_a_gain_the_holdout_can_tell_from_noise(tmp_path):
    """On 400 images a candidate right on 12 more (+3 points) passes one paired standard error
    (~0.85) but not four; one right on 2 more and wrong on 1 more does not pass one."""
    n = 400
    ids = [f"v{i}" for i in range(n)]
    y = np.arange(n) % 2
    labels = tmp_path / "val.txt"
    labels.write_text("".join(f"{i} {c}\n" for i, c in zip(ids, y, strict=True)))

    def preds(name, wrong):
        p = np.eye(2)[y] * 0.8 + 0.1
        p[wrong] = p[wrong, ::-1]
        return _write(tmp_path / name, ids, p)

    base = preds("base", list(range(100)))
    better = preds("better", list(range(88)))
    flip = preds("flip", list(range(98)) + [300])

    def gate(cand, k):
        return run_gate(cfg=GateConfig(rule="beats", min_se=k), out=tmp_path / "g",
                        preds=[base, cand], labels=str(labels))

    res = gate(better, 1.0)
    assert res["changed"] and res["gain"] == 3.0 and 0.8 < res["se"] < 0.9
    assert not gate(better, 4.0)["changed"]
    small = gate(flip, 1.0)
    assert small["gain"] == 0.25 and not small["changed"] and "x paired SE" in small["why"]
    with pytest.raises(WeblyError, match="must not be negative"):
        GateConfig(rule="beats", min_se=-1).validate()


def test_simplex_grid():
    g = simplex_grid(3, 10)
    assert len(g) == 66 and np.allclose(g.sum(1), 1) and (g >= 0).all()
    assert simplex_grid(1, 10).tolist() == [[1.0]]


def test_top1_fit_leaves_out_a_member_that_hurts_and_keeps_one_that_helps(tmp_path):
    rng = np.random.default_rng(0)
    n, C = 400, 4
    y = rng.integers(0, C, n)

    def model(acc, seed):
        r = np.random.default_rng(seed)
        p = r.dirichlet(np.ones(C), n) * 0.5
        right = r.random(n) < acc
        p[np.arange(n), np.where(right, y, (y + 1) % C)] += 0.5
        return p

    good, other_good, bad = model(0.8, 1), model(0.8, 2), model(0.3, 3)
    members = [_write(tmp_path / name, [f"i{i}" for i in range(n)], p)
               for name, p in (("good", good), ("bad", bad), ("other", other_good))]
    preds = [load_predictions(m) for m in members]
    w, top1 = fit_top1(preds, y)
    assert w[1] == 0 and w[0] > 0 and w[2] > 0  # the hurting member is out, the helping in
    single = max(float((p.argmax(1) == y).mean()) for p in (good, other_good))
    assert top1 >= single
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"i{i} {c}\n" for i, c in enumerate(y)))
    s = ensemble(members, tmp_path / "e", fit_dirs=members,
                 fit_labels={f"i{i}": int(c) for i, c in enumerate(y)}, fit_metric="top1")
    assert s["left_out"] == [members[1]]
    assert ensemble(members[:1], tmp_path / "one")["weights"] == [1.0]  # one member passes


def test_fitted_weights_must_beat_the_plain_average_by_min_se(tmp_path):
    """The grid's best weighting is kept only when it beats the plain average on the holdout by
    more than fit_min_se paired standard errors; otherwise the plain average is."""
    r = np.random.default_rng(0)
    n, C = 2000, 3
    y = r.integers(0, C, n)

    def model(acc, seed):
        p = np.random.default_rng(seed).dirichlet(np.ones(C), n) * 0.5
        right = np.random.default_rng(seed + 10).random(n) < acc
        p[np.arange(n), np.where(right, y, (y + 1) % C)] += 0.5
        return p

    ids = [f"i{i}" for i in range(n)]
    good, bad = (_write(tmp_path / name, ids, model(acc, s))
                 for name, acc, s in (("good", 0.8, 1), ("bad", 0.4, 2)))
    fit = {f"i{i}": int(c) for i, c in enumerate(y)}
    kw = dict(fit_dirs=[good, bad], fit_labels=fit, fit_metric="top1")
    clear = ensemble([good, bad], tmp_path / "e1", fit_min_se=2.0, **kw)
    assert clear["weights"][0] > clear["weights"][1] and clear["fitted"] == "beats"
    d = decisions.read(tmp_path / "e1")  # the one record, beside the predictions
    assert d.changed and d.choice == "fitted" and d.gain > d.need and d.detail["members"] == [
        "good", "bad"]
    # the same gain asked to clear an impossible bar: the plain average is kept, and said why
    plain = ensemble([good, bad], tmp_path / "e2", fit_min_se=1000.0, **kw)
    assert plain["weights"] == [0.5, 0.5] and "<= " in decisions.read(tmp_path / "e2").why
    assert plain["left_out"] == []
    # a fit that lands on the plain average says so (not "+0.00 > 2 x SE 0.00: fitted")
    w, d = fitted_or_plain([load_predictions(good), load_predictions(bad)], y,
                           np.array([0.5, 0.5]), 2.0)
    assert w.tolist() == [0.5, 0.5] and d.why.endswith("are the plain average's")
    assert ensemble([good, bad], tmp_path / "e3")["fitted"] is None  # nothing decided: no record
    assert decisions.read(tmp_path / "e3") is None
    with pytest.raises(WeblyError, match="fit_min_se must not be negative"):
        EnsembleConfig(fit_min_se=-1).validate()


def _recipe(tmp_path, curve, when="@decide"):
    """A gate on a hand-made training run; steps after it run (or not) on its decision."""
    data = tmp_path / "d"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True, exist_ok=True)
        from PIL import Image

        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(data / cls / f"{i}.png")
    return {"steps": [
        {"id": "decide", "stage": "gate", "model": _run_folder(tmp_path / "ce", curve)},
        {"id": "gated", "stage": "index", "root": str(data), "when": when},
        {"id": "needs_gated", "stage": "tag", "manifest": "@gated"},
        {"id": "other", "stage": "index", "root": str(data), "when": "not @decide"},
    ]}


def test_a_round_runs_when_the_gate_passes_and_is_skipped_when_not(tmp_path):
    ran = run(_recipe(tmp_path / "a", [50, 55, 53]), tmp_path / "a/run", log=lambda m: None)
    assert ran["ran"] == ["decide", "gated", "needs_gated"]
    assert ran["skipped"] == {"other": "gate decide passed (when: not @decide)"}
    said = []
    ran = run(_recipe(tmp_path / "b", [50, 55, 55.1]), tmp_path / "b/run", log=said.append)
    assert ran["ran"] == ["decide", "other"]
    assert set(ran["skipped"]) == {"gated", "needs_gated"}
    assert "needs @gated, which was skipped" in ran["skipped"]["needs_gated"]
    step = json.loads((tmp_path / "b/run/gated/step.json").read_text())
    assert step["skipped"].startswith("gate decide did not pass")
    again = run(_recipe(tmp_path / "b", [50, 55, 55.1]), tmp_path / "b/run", log=said.append)
    assert again["ran"] == [] and set(again["skipped"]) == {"gated", "needs_gated"}
    shown = write_report(tmp_path / "b/run")["decisions"]  # the report shows each decision
    assert shown[0][:2] == ["decide", "gate: learning (the default)"]
    assert "a drop of 0.00" in shown[0][2]
    assert [r[0] for r in shown[1:]] == ["gated", "needs_gated"]
    assert all(r[1] == "skipped" for r in shown[1:])
    assert "Decision (gated): skipped" in (tmp_path / "b/run/report.md").read_text()


def test_when_names_an_earlier_gate(tmp_path):
    rec = _recipe(tmp_path, [1, 2])
    rec["steps"][1]["when"] = "@other"
    with pytest.raises(WeblyError, match="is not an earlier gate step"):
        load_recipe(rec)
    rec["steps"][1]["when"] = "maybe"
    with pytest.raises(WeblyError, match="when takes '@GATE' or 'not @GATE'"):
        load_recipe(rec)


def test_a_new_decision_is_one_function_and_its_name_in_a_recipe(tmp_path, monkeypatch):
    """A rule is a function returning a Decision, named in RULES; a recipe names it in `rule:`,
    the pipeline runs the steps it allows and the report shows it, with nothing else to add."""
    from webly.inference import gate

    def coin(cfg, model, preds, labels):
        holdout = {"tails": np.array([1, 0, 0, 0]), "heads": np.array([1, 1, 1, 1])}
        return decisions.beats(holdout, "tails", name="coin", margin=cfg.margin)

    monkeypatch.setitem(gate.RULES, "coin", coin)
    recipe = _recipe(tmp_path, [1, 2])
    recipe["steps"][0] = {"id": "decide", "stage": "gate", "rule": "coin", "margin": 10.0}
    ran = run(recipe, tmp_path / "run", log=lambda m: None)
    assert ran["ran"] == ["decide", "gated", "needs_gated"]  # heads won by 75 > 10 points
    d = decisions.read(tmp_path / "run/decide")
    assert (d.name, d.choice, d.scores) == ("coin", "heads", {"tails": 25.0, "heads": 100.0})
    shown = write_report(tmp_path / "run")["decisions"]
    assert shown[0][:2] == ["decide", "coin: heads"]


def test_the_rule_prefers_the_default_then_the_earlier_challenger():
    right = {"a": np.array([1, 1, 0, 0]), "b": np.array([1, 1, 1, 0]),
             "c": np.array([0, 1, 1, 1])}
    d = decisions.beats(right, "a", name="t")
    assert d.choice == "b" and d.gain == 25.0 and d.need == 0  # b and c tie: the earlier wins
    assert decisions.beats(right, "b", name="t").choice == "b"  # c only ties the default
    assert "scored best" in decisions.beats(right, "b", name="t").why
    with pytest.raises(WeblyError, match="needs the default"):
        decisions.beats({"a": right["a"]}, "a", name="t")


def test_balanced_weights_score_each_class_alike():
    """With `class_weights` the score is balanced top-1 (the mean of the classes' top-1s) and its
    paired SE the weighted one: equal to the plain SE where the classes are equal in size."""
    from webly.core import decisions

    y = np.array([0] * 8 + [1] * 2)
    w = decisions.class_weights(y)
    assert w.sum() == pytest.approx(1) and w[0] == pytest.approx(1 / 16) and w[-1] == 0.25
    big = np.array([True] * 8 + [False] * 2)  # right on the large class only: 80% top-1
    small = np.array([False] * 6 + [True] * 4)  # 40% top-1, but 100% of the small class
    plain = decisions.beats({"big": big, "small": small}, "big", name="t")
    assert plain.choice == "big" and plain.scores == {"big": 80.0, "small": 40.0}
    bal = decisions.beats({"big": big, "small": small}, "big", name="t", weights=w)
    assert bal.scores == {"big": 50.0, "small": 62.5} and bal.choice == "small"
    even = np.array([0, 1] * 5)
    a, b = np.arange(10) % 3 == 0, np.arange(10) % 2 == 0
    assert decisions.paired_se(a, b, decisions.class_weights(even)) == pytest.approx(
        decisions.paired_se(a, b))
