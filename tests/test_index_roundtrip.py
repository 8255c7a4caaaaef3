"""`webly synth` + `webly index` round-trip: the manifest holds exactly what was generated."""

from collections import Counter

import pytest

from webly.app.cli import main
from webly.app.demo.synth import SynthConfig, generate
from webly.core.errors import WeblyError
from webly.data.index import IndexConfig, index_dataset, merge_index
from webly.data.manifest import Manifest


def _assert_same(manifest_path, records):
    m = Manifest(manifest_path)
    got = list(m.iter_records(batch_size=7))  # small batches: exercise the streaming read
    want = records["train"] + records["val"] + records["test"]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g == w
    return m


def test_synth_v2_roundtrip(synth_small, synth_manifest):
    root, records = synth_small
    m = _assert_same(synth_manifest, records)
    assert m.num_classes == 12 and m.classes[0] == "n01568892"  # yellow warbler
    assert (root / "meta/google/q00001.json").is_file()
    assert {r.source for r in records["train"]} == {"google", "flickr"}
    assert all(r.tags == [] for r in records["train"] if r.source == "google")


def test_synth_v1_roundtrip_with_small_chunks(tmp_path):
    cfg = SynthConfig(families=2, per_family=3, max_per_class=9, min_per_class=3,
                      val_per_class=1, test_per_class=1, images=False, version=1, seed=1)
    records = generate(tmp_path / "wv1", cfg)
    assert (tmp_path / "wv1/google/q0001.json").is_file()
    assert (tmp_path / "wv1/info/queries_flickr.txt").is_file()
    summary = index_dataset(tmp_path / "wv1", tmp_path / "m.parquet", IndexConfig(chunk_size=5))
    assert summary["records"] == {"train": len(records["train"]), "val": 6, "test": 6}
    _assert_same(tmp_path / "m.parquet", records)


def test_synth_is_long_tailed_noisy_and_reproducible(tmp_path):
    cfg = SynthConfig(families=2, per_family=4, max_per_class=80, min_per_class=8,
                      label_noise=0.3, images=False, seed=5)
    a = generate(tmp_path / "a", cfg)
    b = generate(tmp_path / "b", cfg)
    assert a == b
    per_class = Counter(r.label for r in a["train"])
    assert max(per_class.values()) == 80 and min(per_class.values()) == 8
    labels = {r.id: r.label for r in a["train"]}
    truth_lines = (tmp_path / "a/truth/train_true_labels.txt").read_text().splitlines()
    truth = dict(line.split() for line in truth_lines)
    wrong = sum(labels[k] != int(v) for k, v in truth.items()) / len(truth)
    assert wrong == pytest.approx(0.3, abs=0.06)


def test_index_cli_writes_config_and_summary(synth_small, tmp_path):
    out = tmp_path / "run" / "manifest.parquet"
    assert main(["index", str(synth_small[0]), "-o", str(out), "--splits", "train,val"]) == 0
    assert (tmp_path / "run/index.config.yaml").is_file()
    assert len(Manifest(out)) == len(synth_small[1]["train"]) + len(synth_small[1]["val"])


def test_wrongly_returned_images_have_text_about_what_they_show(tmp_path):
    """Search-engine noise: the query's name is in the text, the picture's colour is the truth's."""
    from webly.app.demo.synth import colour_word, pick_concepts

    cfg = SynthConfig(families=2, per_family=3, max_per_class=6, min_per_class=6, label_noise=1.0,
                      off_topic=0.0, text_missing=0.0, images=False, seed=5)
    recs = generate(tmp_path / "d", cfg)["train"]
    concepts = pick_concepts(cfg)
    truth_lines = (tmp_path / "d/truth/train_true_labels.txt").read_text().splitlines()
    truth = dict(line.split() for line in truth_lines)
    for r in recs:
        shown, query = concepts[int(truth[r.path])], concepts[r.label]
        text = f"{r.title} {r.description} {' '.join(r.tags)}".lower()
        assert shown is not query and any(lem.lower() in text for lem in query.lemmas[:2])
        if colour_word(shown.hue) != colour_word(query.hue):
            assert colour_word(query.hue) not in text.split()


@pytest.mark.parametrize("n", [1, 3, 7])
def test_sharded_index_then_merge_equals_one_run(synth_small, synth_manifest, tmp_path, n):
    """Each part reads its own range of every list (val/test too); the merge is the same rows,
    in the same order, with the same file metadata as an unsharded run."""
    root, records = synth_small
    out = tmp_path / "m.parquet"
    summaries = []
    for i in range(n):
        assert main(["index", str(root), "-o", str(out), "--shard", f"{i}/{n}",
                     "--chunk-size", "9"]) == 0
        summaries.append(index_dataset(root, out, IndexConfig(shard=f"{i}/{n}")))  # done: kept
        if n > 1 and i < n - 1:
            with pytest.raises(WeblyError, match="parts missing"):
                merge_index(out, IndexConfig())
    assert not out.exists() or n == 1
    if n > 1:
        assert main(["index", "merge", "-o", str(out)]) == 0
        assert (tmp_path / "index.shard0of3.config.yaml").is_file() or n != 3
    m = _assert_same(out, records)
    assert m.meta == Manifest(synth_manifest).meta
    got = sum((Counter(s["records"]) for s in summaries), Counter()) if n > 1 else None
    assert got is None or dict(got) == {k: len(v) for k, v in records.items()}


def test_sharded_folder_index_then_merge(tmp_path):
    from PIL import Image

    for c in ("ant", "bee", "cat", "dog", "eel"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / "data" / c / f"{k}.jpg")
    one = tmp_path / "one.parquet"
    index_dataset(tmp_path / "data", one, IndexConfig())
    for i in range(2):
        index_dataset(tmp_path / "data", tmp_path / "m.parquet", IndexConfig(shard=f"{i}/2"))
    merge_index(tmp_path / "m.parquet", IndexConfig())
    a, b = Manifest(one), Manifest(tmp_path / "m.parquet")
    assert list(a.iter_records()) == list(b.iter_records()) and len(b) == 15


def test_index_shard_bad_input(synth_small, tmp_path):
    with pytest.raises(WeblyError, match="index.shard"):
        index_dataset(synth_small[0], tmp_path / "m.parquet", IndexConfig(shard="3/3"))
    with pytest.raises(WeblyError, match="no index parts"):
        merge_index(tmp_path / "m.parquet", IndexConfig())
    for i, n in ((0, 2), (1, 3)):  # parts of two different runs
        index_dataset(synth_small[0], tmp_path / "m.parquet", IndexConfig(shard=f"{i}/{n}"))
    with pytest.raises(WeblyError, match="different runs"):
        merge_index(tmp_path / "m.parquet", IndexConfig())
