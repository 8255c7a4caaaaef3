import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from webly.cli import main
from webly.data.labels import load_labels
from webly.data.manifest import Manifest, write_manifest
from webly.data.predictions import load_predictions, write_predictions
from webly.data.records import Record
from webly.errors import WeblyError
from webly.inference.ensemble import ensemble, fit_weights
from webly.inference.pseudolabel import PseudoLabelConfig, pseudo_label


def _write(d, ids, probs, split="val", rows=None):
    probs = np.asarray(probs, np.float32)
    top = np.argsort(-probs, 1)[:, :2].astype(np.int32)
    write_predictions(d, {"row": np.arange(len(ids)) if rows is None else rows, "ids": ids,
                          "status": ["ok"] * len(ids), "top_i": top,
                          "top_p": np.take_along_axis(probs, top, 1).astype(np.float16),
                          "probs": probs.astype(np.float16)},
                      {"classes": ["a", "b", "c"], "num_classes": 3, "split": split, "dense": True})
    return str(d)


def test_ensemble_averages_and_weights(tmp_path):
    ids = ["x", "y"]
    a = _write(tmp_path / "a", ids, [[0.6, 0.4, 0], [0.1, 0.5, 0.4]])
    b = _write(tmp_path / "b", ids, [[0.2, 0.8, 0], [0.1, 0.1, 0.8]])
    ensemble([a, b], tmp_path / "e")
    e = load_predictions(tmp_path / "e")
    assert np.allclose(e.probs.astype(np.float32), [[0.4, 0.6, 0], [0.1, 0.3, 0.6]], atol=1e-3)
    assert e.top_i[:, 0].tolist() == [1, 2] and e.info["weights"] == [0.5, 0.5]
    ensemble([a, b], tmp_path / "w", weights=[3, 1])
    assert load_predictions(tmp_path / "w").top_i[0, 0] == 0
    with pytest.raises(WeblyError, match="different images"):
        ensemble([a, _write(tmp_path / "c", ["x", "z"], [[1, 0, 0], [1, 0, 0]])], tmp_path / "f")


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
