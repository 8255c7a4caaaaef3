import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from webly.app.cli import main
from webly.core.errors import WeblyError
from webly.data.labels import label_effect, load_labels
from webly.data.manifest import Manifest, write_manifest
from webly.data.predictions import load_predictions, write_predictions
from webly.data.records import Record
from webly.inference.ensemble import ensemble, fit_weights
from webly.inference.pseudolabel import PseudoLabelConfig, pseudo_label


def _write(d, ids, probs, split="val", rows=None, k=None, **info):
    probs = np.asarray(probs, np.float32)
    C = probs.shape[1]
    top = np.argsort(-probs, 1, kind="stable")[:, :k or C].astype(np.int32)
    write_predictions(d, {"row": np.arange(len(ids)) if rows is None else rows, "ids": ids,
                          "status": ["ok"] * len(ids), "top_i": top,
                          "top_p": np.take_along_axis(probs, top, 1).astype(np.float16)},
                      {"classes": [str(c) for c in range(C)], "num_classes": C, "split": split,
                       **info})
    return str(d)


def _dense(p):
    out = np.zeros((len(p.ids), p.info["num_classes"]), np.float32)
    np.put_along_axis(out, p.top_i.astype(np.int64), p.top_p, axis=1)
    return out


def test_top_k_predictions_as_full_probabilities(tmp_path):
    """The classes a file left out share its leftover mass evenly; a label's probability is the
    same read from the top-k alone (label -1: that share)."""
    probs = [[0.5, 0.3, 0.1, 0.1], [0.05, 0.05, 0.1, 0.8]]
    p = load_predictions(_write(tmp_path / "p", ["x", "y"], probs, k=2))
    assert np.allclose(p.dense(), [[0.5, 0.3, 0.1, 0.1], [0.05, 0.05, 0.1, 0.8]], atol=1e-3)
    labels = np.array([2, 3])
    assert np.allclose(p.probability_of(labels), p.dense()[[0, 1], labels])
    assert np.allclose(p.probability_of(np.array([-1, -1])), [0.1, 0.05], atol=1e-3)


def test_ensemble_averages_and_weights(tmp_path):
    ids = ["x", "y"]
    a = _write(tmp_path / "a", ids, [[0.6, 0.4, 0], [0.1, 0.5, 0.4]])
    b = _write(tmp_path / "b", ids, [[0.2, 0.8, 0], [0.1, 0.1, 0.8]])
    ensemble([a, b], tmp_path / "e")
    e = load_predictions(tmp_path / "e")
    assert np.allclose(_dense(e), [[0.4, 0.6, 0], [0.1, 0.3, 0.6]], atol=1e-3)
    assert e.top_i[:, 0].tolist() == [1, 2] and e.info["weights"] == [0.5, 0.5]
    ensemble([a, b], tmp_path / "w", weights=[3, 1])
    assert load_predictions(tmp_path / "w").top_i[0, 0] == 0
    with pytest.raises(WeblyError, match="different images"):
        ensemble([a, _write(tmp_path / "c", ["x", "z"], [[1, 0, 0], [1, 0, 0]])], tmp_path / "f")


def test_topk_ensemble_is_the_dense_average_when_k_covers_the_classes_else_within_the_bound(
        tmp_path):
    rng = np.random.default_rng(0)
    n, C, M = 200, 7, 3
    members = [rng.dirichlet(np.full(C, 0.3), size=n) for _ in range(M)]
    ids = [f"i{j}" for j in range(n)]
    dense_avg = np.mean(members, axis=0)
    for k in (C, 3):
        dirs = [_write(tmp_path / f"m{m}k{k}", ids, members[m], k=k) for m in range(M)]
        s = ensemble(dirs, tmp_path / f"e{k}", top_k=C)
        e = load_predictions(tmp_path / f"e{k}")
        got = _dense(e)
        if k == C:  # exact (up to float16 storage)
            assert np.allclose(got, dense_avg, atol=2e-3) and s["dropped_mass"]["max"] < 2e-3
            assert (e.top_i[:, 0] == dense_avg.argmax(1)).mean() > 0.97
        else:  # every kept class within the stated bound, never above the dense average
            kept = np.take_along_axis(dense_avg, e.top_i.astype(np.int64), 1)
            bound = np.mean([1 - np.sort(m, 1)[:, -k:].sum(1) for m in members], axis=0)
            low = kept - e.top_p
            assert (low >= -2e-3).all() and (low <= bound[:, None] + 2e-3).all()
            assert s["dropped_mass"]["max"] == pytest.approx(bound.max(), abs=2e-3)


def test_fitted_weights_prefer_the_better_model(tmp_path):
    ids = [f"v{i}" for i in range(50)]
    y = np.arange(50) % 3
    good = np.full((50, 3), 0.1)
    good[np.arange(50), y] = 0.8
    bad = np.full((50, 3), 1 / 3)
    va, vb = _write(tmp_path / "va", ids, good), _write(tmp_path / "vb", ids, bad)
    w = fit_weights([load_predictions(va), load_predictions(vb)], y)
    assert w[0] > 0.9
    labels = tmp_path / "val.txt"
    labels.write_text("".join(f"{i} {c}\n" for i, c in zip(ids, y, strict=True)))
    assert main(["ensemble", va, vb, "-o", str(tmp_path / "e"), "--fit", f"{va},{vb}",
                 "--fit-labels", str(labels)]) == 0
    assert load_predictions(tmp_path / "e").info["weights"][0] > 0.9


def test_the_last_member_stands_unless_an_average_beats_it_on_the_holdout(tmp_path):
    """`fit_default: last`: a recipe's longest-trained model is the answer; the plain average of
    it with weaker members (worse on the holdout) does not replace it, and neither do weights
    that gain less than the SE bar; an average that clearly beats it does."""
    from webly.inference.ensemble import fitted_or_plain

    rng = np.random.default_rng(0)
    n, y = 400, np.arange(400) % 4

    def member(acc: float) -> np.ndarray:
        p = np.full((n, 4), 0.1)
        hit = rng.random(n) < acc
        p[np.arange(n), np.where(hit, y, (y + 1) % 4)] = 0.7
        return p

    ids = [f"v{i}" for i in range(n)]
    weak, strong = member(0.4), member(0.8)
    preds = [load_predictions(_write(tmp_path / name, ids, p))
             for name, p in (("w1", weak), ("w2", member(0.4)), ("s", strong))]
    w, d = fitted_or_plain(preds, y, np.full(3, 1 / 3), 2.0, default="last")
    assert d.default == "last" and d.choice == "last" and w.tolist() == [0, 0, 1]
    assert d.scores["plain"] < d.scores["last"] and set(d.detail) == {"last", "plain", "fitted"}
    # two weak members that err differently, and a last one as weak: their average wins clearly
    a, b = member(0.55), member(0.55)
    preds = [load_predictions(_write(tmp_path / name, ids, p))
             for name, p in (("a", a), ("b", b), ("c", member(0.3)))]
    w, d = fitted_or_plain(preds, y, np.array([0.5, 0.5, 0.0]), 2.0, default="last")
    assert d.choice in ("plain", "fitted") and d.changed
    _, old = fitted_or_plain(preds, y, np.array([0.5, 0.5, 0.0]), 2.0)  # the default: plain
    assert old.default == "plain" and set(old.detail) == {"plain", "fitted"}


def test_pseudo_labels_threshold_fraction_and_drop(tmp_path):
    recs = [Record(id=f"t{i}", path=f"{i}.jpg", split="train", label=lab)
            for i, lab in enumerate([0, 0, 1, 1, 2])]
    m = tmp_path / "m.parquet"
    write_manifest(m, recs, {"root": str(tmp_path), "classes": ["n1", "n2", "n3"],
                             "class_names": ["a", "b", "c"]})
    probs = [[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.1, 0.45, 0.45], [0.95, 0.05, 0], [0.3, 0.3, 0.4]]
    p = _write(tmp_path / "p", [r.id for r in recs], probs, split="train")
    s = pseudo_label(m, p, tmp_path / "pl", PseudoLabelConfig(threshold=0.8))
    t = pq.read_table(tmp_path / "pl/labels.parquet").to_pydict()
    assert t["label"] == [0, 0, 1, 0,
                          2] and t["source"][3] == "pseudo"  # only the 0.95 disagreement
    assert s["relabelled"] == 1 and s["estimated_noise_rate"] == pytest.approx(2 / 5)
    assert (tmp_path / "pl/suspects.tsv").read_text().splitlines()[1].startswith("t3\tb\ta\t0.9")
    pseudo_label(m, p, tmp_path / "pd", PseudoLabelConfig(threshold=0.8, drop_inconsistent=True))
    assert pq.read_table(tmp_path / "pd/labels.parquet")["label"].to_pylist() == [0, -1, 1, 0, 2]
    # what it did against clean labels (-1: unknown, not counted): row 1's wrong label dropped,
    # row 3's wrong label relabelled to the truth
    e = label_effect(tmp_path / "pd/labels.parquet", np.array([0, 1, 1, 0, -1]))
    assert (e["relabelled"], e["dropped"], e["kept"], e["images_without_truth"]) == (1, 1, 4, 1)
    assert (e["wrong_labels_before"], e["noise_before"], e["wrong_labels_after"]) == (2, 0.5, 0)
    assert (e["relabelled_to_true"], e["relabelled_away_from_true"]) == (1, 0)
    assert e["dropped_that_were_wrong"] == 1 and e["wrong_labels_removed"] == 1.0
    e = label_effect(tmp_path / "pd/labels.parquet", np.array([0, 0, 1, 1, 2]))  # all were right
    assert (e["relabelled_away_from_true"], e["wrong_labels_after"]) == (1, 1)
    assert e["noise_after"] == 0.25
    assert "wrong_labels_before" not in label_effect(tmp_path / "pd/labels.parquet")
    pseudo_label(m, p, tmp_path / "pf", PseudoLabelConfig(top_fraction=0.5))
    assert pq.read_table(tmp_path / "pf/labels.parquet")["source"].to_pylist().count("pseudo") == 2
    assert load_labels(tmp_path / "pd", 5).tolist() == [0, -1, 1, 0, 2]
    report = json.loads((tmp_path / "pl/report.json").read_text())
    assert report["most_changed"][0]["class"] == "b"
    with pytest.raises(WeblyError, match="need train"):
        pseudo_label(m, _write(tmp_path / "v", ["t0"], [[1, 0, 0]]), tmp_path / "x",
                     PseudoLabelConfig())


def test_finetune_reads_pseudo_labels(synth_manifest, tmp_path):
    from webly.training.trainsets import finetune_data

    man = Manifest(synth_manifest)
    labels = np.full(len(man), -1)
    labels[:5] = 3
    data = finetune_data(man, labels)
    assert len(data.rows) == 5 and set(data.targets.indices.tolist()) == {3}


def test_soft_pseudo_labels_carry_the_top_classes(tmp_path):
    from webly.data.labels import load_soft_labels

    recs = [Record(id=f"t{i}", path=f"{i}.jpg", split="train", label=0) for i in range(4)]
    m = tmp_path / "m.parquet"
    write_manifest(m, recs, {"root": str(tmp_path), "classes": ["n1", "n2", "n3"],
                             "class_names": ["a", "b", "c"]})
    probs = [[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.25, 0.25]]
    p = _write(tmp_path / "p", [r.id for r in recs], probs, split="train")
    pseudo_label(m, p, tmp_path / "pl", PseudoLabelConfig(threshold=0.65, soft_k=2))
    rows, idx, prob = load_soft_labels(tmp_path / "pl")
    assert rows.tolist() == [0, 1, 2, 3] and idx.tolist() == [[0, 1], [1, 0], [2, 1], [0, 1]]
    assert np.allclose(prob, [[0.9, 0.1], [0.7, 0.2], [0.6, 0.3], [0.5, 0.25]], atol=1e-3)
    assert load_labels(tmp_path / "pl", 4).tolist() == [0, 1, 0, 0]  # hard labels as before
    with pytest.raises(WeblyError, match="soft_k 4 > the 3 classes"):
        pseudo_label(m, p, tmp_path / "x", PseudoLabelConfig(soft_k=4))
    # finetuning on them: (1 - w) x the hard label + w x the renormalised soft distribution
    from webly.training.config import TrainConfig
    from webly.training.tasks import criterion_for
    from webly.training.trainsets import finetune_data

    soft = load_soft_labels(tmp_path / "pl")
    data = finetune_data(Manifest(m), load_labels(tmp_path / "pl", 4), soft, 0.5)
    dense = data.targets.toarray()
    assert np.allclose(dense.sum(1), 1.0, atol=1e-3)
    assert np.allclose(dense[1], [0.5 * 0.2 / 0.9, 0.5 + 0.5 * 0.7 / 0.9, 0], atol=1e-3)
    assert np.allclose(dense[2], [0.5, 0.5 * 0.3 / 0.9, 0.5 * 0.6 / 0.9], atol=1e-3)  # kept 0
    import torch

    ce = criterion_for(TrainConfig(soft_labels=0.5), "finetune")
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    got = ce(logits, torch.tensor([[1, 0]]), torch.tensor([[0.75, 0.25]]))
    want = -(torch.log_softmax(logits, 1)[0] * torch.tensor([0.25, 0.75, 0])).sum()
    assert torch.allclose(got, want)  # soft CE, not the first target's hard CE
    pseudo_label(m, p, tmp_path / "hard", PseudoLabelConfig(threshold=0.65))
    with pytest.raises(WeblyError, match="no soft targets"):
        load_soft_labels(tmp_path / "hard")


def test_out_of_fold_ensemble_takes_the_model_that_left_each_image_out(tmp_path):
    from webly.data.folds import fold_of

    rng = np.random.default_rng(0)
    n, C = 40, 5
    ids = [f"i{r}" for r in range(n)]
    members = [rng.dirichlet(np.ones(C), n) for _ in range(3)]
    dirs = [_write(tmp_path / f"m{i}", ids, p, split="train", k=4) for i, p in enumerate(members)]
    ensemble(dirs, tmp_path / "oof", oof=True)
    got = load_predictions(tmp_path / "oof")
    fold = fold_of(np.arange(n), 3)
    assert got.info["out_of_fold"] and len(set(fold.tolist())) == 3
    for r in range(n):
        want = load_predictions(dirs[fold[r]])
        assert np.array_equal(got.top_i[r], want.top_i[r])
        assert np.allclose(got.top_p[r], want.top_p[r], atol=1e-3)
    with pytest.raises(WeblyError, match="one member per image"):
        ensemble(dirs, tmp_path / "bad", weights=[1, 1, 1], oof=True)


def test_leave_out_fold_trains_on_the_other_folds(synth_manifest):
    from webly.data.folds import fold_of
    from webly.training.config import TrainConfig
    from webly.training.trainsets import finetune_data, leave_out_fold

    data = finetune_data(Manifest(synth_manifest))
    parts = [leave_out_fold(data, f"{i}/2") for i in range(2)]
    assert sorted(np.concatenate([p.rows for p in parts]).tolist()) == sorted(
        data.rows.tolist())  # each row left out by exactly one of the two
    for i, p in enumerate(parts):
        assert (fold_of(p.rows, 2) != i).all() and p.targets.shape[0] == len(p.rows)
        assert p.membership.shape[0] == len(p.rows) and len(p.val_rows) == len(data.val_rows)
    with pytest.raises(WeblyError, match="at least 2 folds"):
        TrainConfig(leave_out_fold="0/1").validate()


def _three_classes(tmp_path, given, vtruth):
    """A manifest of three classes: training images labelled `given`, val images `vtruth`."""
    recs = [Record(id=f"t{i}", path=f"{i}.jpg", split="train", label=int(y))
            for i, y in enumerate(given)]
    recs += [Record(id=f"v{i}", path=f"v{i}.jpg", split="val", label=int(y))
             for i, y in enumerate(vtruth)]
    m = tmp_path / "m.parquet"
    write_manifest(m, recs, {"root": str(tmp_path), "classes": ["n1", "n2", "n3"],
                             "class_names": ["a", "b", "c"]})
    return m, recs


def _probe_case(tmp_path, wrong_pred: bool):
    """Three classes as three clusters of features. Forty of class 0's sixty training images are
    predicted class 1 at p 0.6: `wrong_pred` with their right label 0 (relabelling them at 0.5
    teaches the probe that the cluster is class 1), else labelled 1, a wrong label the
    relabelling fixes. The holdout: 20 images a class, labelled right."""
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8, dtype=np.float32) * 4
    truth = np.repeat([0, 1, 2], 60)
    given, probs = truth.copy(), np.eye(3, dtype=np.float32)[truth] * 0.95 + 0.025
    odd = np.arange(40)
    probs[odd] = [0.6, 0.38, 0.02] if not wrong_pred else [0.38, 0.6, 0.02]
    if not wrong_pred:
        given[odd] = 1
    vtruth = np.repeat([0, 1, 2], 20)
    m, recs = _three_classes(tmp_path, given, vtruth)
    n = len(truth)
    train = _write(tmp_path / "train", [r.id for r in recs[:n]], probs, split="train")
    val = _write(tmp_path / "val", [r.id for r in recs[n:]], np.eye(3)[vtruth], split="val",
                 rows=np.arange(n, n + len(vtruth)))
    for d, y in ((train, truth), (val, vtruth)):
        feats = centres[y] + rng.normal(0, 1, (len(y), 8))
        np.save(f"{d}/features.npy", feats.astype(np.float16))
    return m, train, val


@pytest.mark.parametrize("wrong_pred", [True, False])
def test_the_holdout_chooses_the_threshold(tmp_path, wrong_pred):
    """Where relabelling at the default 0.5 hurts (the labeller is confidently wrong), a higher
    candidate is taken (the closest to the default among the best); where it helps, the default
    stays against higher candidates, and is taken as a candidate against a higher default."""
    m, train, val = _probe_case(tmp_path, wrong_pred)
    cfg = PseudoLabelConfig(threshold=0.5, thresholds=[0.7, 0.9], drop_inconsistent=False)
    s = pseudo_label(m, train, tmp_path / "pl", cfg, probe=[train, val])
    d = s["decision"]
    assert set(d["scores"]) == {"0.5", "0.7", "0.9"} and d["detail"]["holdout_images"] == 60
    assert d["macs"] > 3 * 3 * 120 * 8 * 3  # three probes, each at least 3 evaluations
    labels = pq.read_table(tmp_path / "pl/labels.parquet")["label"].to_numpy()
    if wrong_pred:  # 0.5 relabels 40 right labels away: its probe misses class 0 on the holdout
        assert d["choice"] == "0.7" and s["threshold"] == 0.7 and s["relabelled"] == 0
        assert d["scores"]["0.7"] - d["scores"]["0.5"] >= 5
        assert (labels[:40] == 0).all()
    else:
        assert d["choice"] == "0.5" and s["relabelled"] == 40 and (labels[:40] == 0).all()
        s = pseudo_label(m, train, tmp_path / "pl9", PseudoLabelConfig(
            threshold=0.9, thresholds=[0.5], drop_inconsistent=False), probe=[train, val])
        assert s["threshold"] == 0.5 and s["decision"]["choice"] == "0.5"
    recorded = json.loads((tmp_path / "pl/decision.json").read_text())  # the one record
    assert recorded == json.loads(json.dumps(d))


def test_the_probe_learns_from_its_sample_only(tmp_path):
    """Past `probe_images` the probes learn from a fixed sample, and each candidate's labels are
    made for the sample's rows only (their training images' labels at that threshold)."""
    from webly.inference.probe import sample

    m, train, val = _probe_case(tmp_path, wrong_pred=True)
    pick = sample(180, 100)
    assert np.array_equal(pick, sample(180, 100)) and len(np.unique(pick)) == 100
    assert np.all(np.diff(pick) > 0) and np.array_equal(sample(50, 100), np.arange(50))
    cfg = PseudoLabelConfig(threshold=0.5, thresholds=[0.7], probe_images=100,
                            drop_inconsistent=True)
    d = pseudo_label(m, train, tmp_path / "pl", cfg, probe=[train, val])["decision"]
    odd = int((pick < 40).sum())  # the sample's images the labeller doubts (p 0.6)
    # at 0.5 they are relabelled (kept); at 0.7 dropped: the kept counts are the sample's
    assert d["detail"]["probe_images"] == {"0.5": 100, "0.7": 100 - odd}
    assert d["choice"] == "0.7"


def test_the_default_threshold_stays_when_the_holdout_cannot_tell(tmp_path):
    """Candidates whose labels are the default's (nothing between their thresholds) score alike:
    the default is kept; so is it when a candidate's gain is inside `probe_min_se` SEs."""
    m, train, val = _probe_case(tmp_path, wrong_pred=True)
    s = pseudo_label(m, train, tmp_path / "a", PseudoLabelConfig(
        threshold=0.7, thresholds=[0.8, 0.9]), probe=[train, val])
    assert s["threshold"] == 0.7 and "scored best" in s["decision"]["why"]
    s = pseudo_label(m, train, tmp_path / "b", PseudoLabelConfig(
        threshold=0.5, thresholds=[0.7], probe_min_se=1000), probe=[train, val])
    assert s["threshold"] == 0.5 and "<=" in s["decision"]["why"]


def test_threshold_choice_bad_inputs(tmp_path):
    m, train, val = _probe_case(tmp_path, wrong_pred=True)
    cases = [(dict(thresholds=[0.7]), None, "go together"),
             ({}, [train, val], "go together"),
             (dict(thresholds=[0.7]), [train], "two predictions folders"),
             (dict(thresholds=[0.7]), [train, train], "holds 'train' predictions"),
             (dict(thresholds=[0.7]), [val, val], "other images than"),
             (dict(thresholds=[]), [train, val], "one or more"),
             (dict(thresholds=[1.5]), [train, val], "within"),
             (dict(thresholds=[0.7], top_fraction=0.5), [train, val], "top-fraction"),
             (dict(thresholds=[0.7], probe_images=10), [train, val], "probe_images")]
    for kw, probe, match in cases:
        with pytest.raises(WeblyError, match=match):
            pseudo_label(m, train, tmp_path / "x", PseudoLabelConfig(**kw), probe=probe)
    (Path(val) / "features.npy").unlink()
    with pytest.raises(WeblyError, match="predict --features"):
        pseudo_label(m, train, tmp_path / "x", PseudoLabelConfig(thresholds=[0.7]),
                     probe=[train, val])
    np.save(Path(val) / "features.npy", np.zeros((60, 5), np.float16))
    with pytest.raises(WeblyError, match="different models"):
        pseudo_label(m, train, tmp_path / "x", PseudoLabelConfig(thresholds=[0.7]),
                     probe=[train, val])
    flipped = _write(tmp_path / "vf", [f"v{i}" for i in range(60)], np.eye(3)[[0] * 60],
                     rows=np.arange(180, 240), tta="flip")
    with pytest.raises(WeblyError, match="tta must match"):
        pseudo_label(m, train, tmp_path / "x", PseudoLabelConfig(thresholds=[0.7]),
                     probe=[train, flipped])


def _text_case(tmp_path, says: bool):
    """The holdout decides what the text is worth. Three classes; class 0 has two looks: 40
    images of one (features at e0) labelled right, 20 of another (e3) labelled 1, wrong (the
    labeller half believes it: 0.4 / 0.5). Every image's one keyword names its true class
    (`says`) or is drawn at random. The holdout: 10 images of each look of class 0, 20 of each
    other class, labelled right."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 60)
    look_b = np.zeros(180, bool)
    look_b[40:60] = True
    given = np.where(look_b, 1, truth)
    probs = np.eye(3, dtype=np.float32)[given] * 0.75 + 0.125
    probs[look_b] = [0.4, 0.5, 0.1]
    vtruth = np.repeat([0, 1, 2], 20)
    vlook_b = np.zeros(60, bool)
    vlook_b[10:20] = True
    m, recs = _three_classes(tmp_path, given, vtruth)
    train = _write(tmp_path / "train", [r.id for r in recs[:180]], probs, split="train")
    val = _write(tmp_path / "val", [r.id for r in recs[180:]], np.eye(3)[vtruth], split="val",
                 rows=np.arange(180, 240))
    centres = np.eye(4, 8, dtype=np.float32) * 4
    for d, y, b in ((train, truth, look_b), (val, vtruth, vlook_b)):
        feats = centres[np.where(b, 3, y)] + rng.normal(0, 0.5, (len(y), 8))
        np.save(f"{d}/features.npy", feats.astype(np.float16))
    word = truth if says else rng.integers(0, 3, 180)
    tags = tmp_path / "tags"
    tags.mkdir()
    x = sp.csr_matrix((np.ones(180, np.uint8), (np.arange(180), word)), shape=(240, 3))
    sp.save_npz(tags / "keywords.npz", x)
    (tags / "vocab.tsv").write_text("keyword\tdoc_frequency\n" + "".join(
        f"w{c}\t60\n" for c in range(3)))
    (tags / "stats.json").write_text("{}")
    return m, train, val, tags, given


@pytest.mark.parametrize("says", [True, False])
def test_the_holdout_decides_what_the_text_is_worth(tmp_path, says):
    """Text that names the class fixes the wrong look's labels and its pseudo-labels beat the
    given ones on the holdout; random text changes nothing worth it, and labels.parquet keeps
    every given label (the round then trains on what CE trains on)."""
    m, train, val, tags, given = _text_case(tmp_path, says)
    cfg = PseudoLabelConfig(threshold=0.5, thresholds=[0.3], text_weight=1.0,
                            text_weights=[0, 0.5], against_given=True, drop_inconsistent=True,
                            probe_metric="balanced_top1")
    s = pseudo_label(m, train, tmp_path / "pl", cfg, text=str(tags), probe=[train, val])
    d = s["decision"]
    assert d["default"] == "given" and d["name"] == "pseudo-labels"
    assert set(d["scores"]) == {"given"} | {f"w{w:g} t{t:g}" for w in (0, 0.5, 1)
                                            for t in (0.3, 0.5)}
    assert d["detail"]["metric"] == "balanced_top1"
    labels = pq.read_table(tmp_path / "pl/labels.parquet")["label"].to_numpy()
    if says:
        assert d["choice"] != "given" and not d["choice"].startswith("w0 ")
        assert s["text"]["weight"] > 0 and s["labels"] == "pseudo"
        saved = json.loads((tmp_path / "pl/report.json").read_text())  # the file says it too
        assert saved["text"]["weight"] == s["text"]["weight"] and saved["labels"] == "pseudo"
        assert (labels[40:60] == 0).all() and d["gain"] > 2 * d["se"]
    else:
        assert d["choice"] == "given" and s["labels"] == "given"
        assert (labels == given).all() and s["relabelled"] == s["dropped"] == 0


def test_text_candidates_bad_inputs(tmp_path):
    m, train, val, tags, _ = _text_case(tmp_path, True)
    cases = [(dict(text_weights=[0.5]), None, tags, "need --thresholds"),
             (dict(against_given=True), None, tags, "need --thresholds"),
             (dict(thresholds=[0.3], text_weights=[]), [train, val], tags, "one or more"),
             (dict(thresholds=[0.3], text_weights=[11]), [train, val], tags, "within"),
             (dict(thresholds=[0.3], text_weights=[0.5]), [train, val], None, "need --text"),
             (dict(thresholds=[0.3], probe_metric="f1"), [train, val], tags, "probe_metric")]
    for kw, probe, text, match in cases:
        with pytest.raises(WeblyError, match=match):
            pseudo_label(m, train, tmp_path / "x", PseudoLabelConfig(**kw),
                         text=str(text) if text else None, probe=probe)
