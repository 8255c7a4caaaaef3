"""benchmarks/datasets/fashion53.py and the shared harness on a small generated tree in fashion53's
layout
(WebVision 2.0: info/, train/, val/, test/, meta/ with a title per training image).

The end-to-end run checks that every row is scored and measured (not a score), and, with the same
audit hook as the CIFAR-10N test, that no step opens `train_clean_filelist`; the recipe test checks
that only the ceiling's steps reach the clean copy. The cache tests check that two sources with the
same name never share a cache. Tests that read the real data skip when ../shared/data is absent.
"""

import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from benchtools import GUARD, load_bench, run_guarded
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared/data/fashion53.tar.gz"
# real WordNet synsets of fashion53's classes, a few of them
CLASSES = [("n04197391", "Shirts", "shirt"), ("n03595614", "Tshirts", "t-shirt"),
           ("n04199027", "Casual Shoes", "shoe"), ("n04548362", "Wallets", "wallet"),
           ("n03262349", "Earrings", "earring"), ("n02774152", "Handbags", "handbag")]
BRANDS = ["nike", "puma", "zorbo", "lavie", "fastrack", "wildcraft"]
COLOURS = ["black", "blue", "red", "green", "white", "grey"]


def _bench():
    return load_bench("fashion53")



def make_fashion_like(root: Path, n_train: int, n_eval: int, seed: int = 0,
                      noise: float = 0.3) -> Path:
    """60x80 JPEGs whose class sets the colour; titles "Brand Men Colour Classword"; `noise` of
    the training labels wrong (to the next class)."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    C = len(CLASSES)
    (root / "info").mkdir(parents=True)
    (root / "meta").mkdir()
    (root / "info/synsets.txt").write_text("".join(f"{w} {n}\n" for w, n, _ in CLASSES))
    lists: dict[str, list[str]] = {"train": [], "clean": [], "meta": [], "val": [], "test": []}
    titles = []
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        (root / split).mkdir()
        for i in range(n):
            y = i % C
            hue = np.array([y / C, 1 - y / C, (y % 3) / 3]) * 255
            img = np.clip(hue + nrng.normal(0, 40, (80, 60, 3)), 0, 255).astype(np.uint8)
            name = f"{split[:2]}{i:05d}.jpg"
            Image.fromarray(img).save(root / split / name, quality=90)
            if split == "train":
                noisy = (y + 1) % C if rng.random() < noise else y
                lists["train"].append(f"train/{name} {noisy}")
                lists["clean"].append(f"train/{name} {y}")
                lists["meta"].append(f"train-000.json {i + 1}")
                titles.append({"id": name, "title": f"{rng.choice(BRANDS).title()} Men "
                                                    f"{rng.choice(COLOURS).title()} "
                                                    f"{CLASSES[y][2].title()}"})
            else:
                lists[split].append(f"{name} {y}")
    (root / "meta/train-000.json").write_text(json.dumps(titles))
    for name, key in (("train_filelist", "train"), ("train_clean_filelist", "clean"),
                      ("train_meta_list", "meta"), ("val_filelist", "val"),
                      ("test_filelist", "test")):
        (root / f"info/{name}.txt").write_text("\n".join(lists[key]) + "\n")
    return root


def test_noises_are_made_from_the_clean_labels_as_named(tmp_path):
    bench = _bench()
    root = make_fashion_like(tmp_path / "fashion53", 300, 6)
    _, clean = bench.common.read_list(root / "info/train_clean_filelist.txt")
    _, given = bench.common.read_list(root / "info/train_filelist.txt")
    assert np.array_equal(bench.make_noise(root, "shipped"), given)
    for noise in ("symmetric40", "wordnet40", "title40"):
        a = bench.make_noise(root, noise)
        assert np.array_equal(a, bench.make_noise(root, noise))  # a fixed seed
        assert (a != clean).mean() == pytest.approx(0.4, abs=1e-9), noise
    # wordnet40: a wrong label is one of the three classes nearest the true one in WordNet
    a = bench.make_noise(root, "wordnet40")
    shoe, earring = 2, 4
    assert not ((clean == shoe) & (a == earring)).any()
    # title40: the class the title's words point to after the true one; here the titles differ
    # only in the class word, brand and colour (shared by all), so it is never the true class
    a = bench.make_noise(root, "title40")
    assert ((a != clean) | (a == clean)).all() and (a[a != clean] != clean[a != clean]).all()


def test_title_variants_fail_the_way_web_text_does(tmp_path):
    """Each `--titles` variant, made from the shipped titles with a fixed seed: class words gone
    (brand and colour stay), titles swapped within a noisy label, another product's title, a
    tag list; prepared copies of two variants never share a cache and val/test stay as given."""
    bench = _bench()
    root = make_fashion_like(tmp_path / "fashion53", 300, 6)
    labels = bench.make_noise(root, "shipped")
    given = bench._titles(root)
    words = bench.class_words(root)
    assert {"shirt", "shoe", "wallet", "earring", "handbag"} <= words
    assert not words & {"nike", "black", "men"}
    nameless = bench.make_titles(root, "nameless", labels)
    for before, after in zip(given, nameless, strict=True):
        brand, _, colour, _ = before.split()
        assert after == f"{brand} Men {colour}"  # "T-shirt" goes whole
    swapped = bench.make_titles(root, "swapped", labels)
    assert swapped != given and sorted(swapped) == sorted(given)
    for y in np.unique(labels):  # a permutation within each noisy label
        idx = np.flatnonzero(labels == y)
        assert sorted(swapped[i] for i in idx) == sorted(given[i] for i in idx)
    other = bench.make_titles(root, "other", labels)
    assert sorted(other) == sorted(given) and np.mean([a == b for a, b in zip(
        other, given, strict=True)]) < 0.5
    tags = bench.make_titles(root, "tags", labels)
    assert all(", " in t and t == t.lower() for t in tags)
    assert all(len(t.split(", ")) >= 3 for t in tags)
    assert tags == bench.make_titles(root, "tags", labels)  # a fixed seed
    with pytest.raises(SystemExit, match="unknown --titles"):
        bench.make_titles(root, "poetry", labels)
    cache = tmp_path / "cache"
    a = bench.prepare(root, cache, "shipped", titles="nameless")
    b = bench.prepare(root, cache, "shipped", titles="other")
    assert a != b and a != bench.prepare(root, cache, "shipped")
    assert bench._titles(a) == nameless and bench._titles(b) == other
    assert json.loads((a / "info/noise.json").read_text())["titles"] == "nameless"
    assert (a / "info/val_filelist.txt").read_text() == (
        root / "info/val_filelist.txt").read_text()


def test_rows_cut_the_recipe_to_what_they_need(tmp_path):
    bench = _bench()
    data = make_fashion_like(tmp_path / "fashion53", 60, 6)
    roots = bench._prepare(data, tmp_path / "cache", "shipped", None)
    recipe = bench.harness.recipe_for(bench.SPEC, roots, epochs=2, batch_size=60)
    cut = bench.harness.only_rows(bench.SPEC, recipe, ["1", "5", "6"])
    ids = [s["id"] for s in cut["steps"]]
    assert {"ce", "pl", "final", "ce_long", "score_system", "tags", "manifest"} <= set(ids)
    assert not {"pre_wt", "ft_wt", "pre_lw", "ce_clean", "manifest_clean"} & set(ids)
    assert ids == [s["id"] for s in recipe["steps"] if s["id"] in ids]  # the order kept
    with pytest.raises(SystemExit, match="no row 9"):
        bench.harness.only_rows(bench.SPEC, recipe, ["1", "9"])


def test_prepare_keeps_val_and_test_clean_and_is_keyed_by_content(tmp_path):
    bench = _bench()
    root = make_fashion_like(tmp_path / "a" / "fashion53", 60, 6)
    other = make_fashion_like(tmp_path / "b" / "fashion53", 60, 6, seed=1)  # same name
    cache = tmp_path / "cache"
    p1, p2 = bench.prepare(root, cache, "shipped"), bench.prepare(other, cache, "shipped")
    assert p1 != p2  # the same folder name, other labels: never the same cache
    assert bench.prepare(root, cache, "shipped") == p1  # the same content: reused
    for f in ("val_filelist.txt", "test_filelist.txt", "train_meta_list.txt"):
        assert (p1 / "info" / f).read_text() == (root / "info" / f).read_text()
    assert (p1 / "info/train_filelist.txt").read_text() == \
        (root / "info/train_filelist.txt").read_text()
    clean = bench.prepare(root, cache, "clean")
    assert (clean / "info/train_filelist.txt").read_text() == \
        (root / "info/train_clean_filelist.txt").read_text()
    assert json.loads((clean / "info/noise.json").read_text())["wrong"] == 0
    assert (p1 / "meta/train-000.json").is_file() and (p1 / "test").is_dir()


def test_two_tarballs_of_one_name_never_share_an_extraction(tmp_path):
    bench = _bench()
    tars = []
    for seed in (0, 1):
        src = make_fashion_like(tmp_path / f"src{seed}" / "fashion53", 12, 6, seed=seed)
        tar = tmp_path / f"t{seed}" / "fashion53.tar.gz"
        tar.parent.mkdir()
        with tarfile.open(tar, "w:gz") as t:
            t.add(src, arcname="fashion53")
        tars.append(tar)
    cache = tmp_path / "cache"
    a, b = (bench.common.find_root(t, cache, "fashion53") for t in tars)
    assert a != b
    assert (a / "info/train_filelist.txt").read_text() != \
        (b / "info/train_filelist.txt").read_text()
    assert bench.common.find_root(tars[0], cache, "fashion53") == a


def test_only_the_ceiling_reads_the_clean_copy():
    bench = _bench()
    from webly.core.config import load_yaml

    steps = load_yaml(bench.RECIPE)["steps"]
    # a step names the clean copy as DATA_CLEAN or a path in it (DATA_CLEAN/info/...)
    clean = {s["id"] for s in steps
             if any(str(v).split("/")[0] == "DATA_CLEAN" for v in s.values())}
    # a step reaches the clean copy through the clean manifest or a step that read it
    reached = set(clean)
    for s in steps:
        refs = json.dumps({k: v for k, v in s.items() if k != "id"})
        if any(f'"@{r}"' in refs for r in reached):
            reached.add(s["id"])
    assert reached == set(bench.CLEAN_STEPS)
    assert all(r.steps for r in bench.ROWS)


def test_detection_metrics():
    bench = _bench()
    wrong = np.array([True, False, True, False])
    p = np.array([0.1, 0.9, 0.2, 0.8])  # the wrong ones have the lowest p(label)
    d = bench.detection({"x": p, "flat": np.full(4, 0.5)}, wrong)
    assert d["x"] == {"ap": 1.0, "precision_at_k": 1.0}
    assert d["flat"]["precision_at_k"] == 0.5
    assert bench.average_precision(np.array([0.0, 1.0]), np.array([True, False])) == 0.5


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    bench = _bench()
    tmp = tmp_path_factory.mktemp("f53")
    data = make_fashion_like(tmp / "fashion53", 360, 60)
    roots = bench._prepare(data, tmp / "cache", "shipped", None)
    out = tmp / "run"
    recipe = bench.harness.recipe_for(bench.SPEC, roots, epochs=2, batch_size=60)
    for step in recipe["steps"]:
        if step["stage"] == "tag":
            step["min_count"] = 2
    run_guarded(bench, recipe, out)
    return bench, roots, out


@pytest.mark.slow
def test_every_row_is_scored_and_measured(bench_run):
    bench, roots, out = bench_run
    assert GUARD["opened"] == []
    res = bench.harness.collect(bench.SPEC, out, roots["DATA"], "test", "shipped", 0.0)
    units = {r["row"]: r["compute_units"] for r in res["rows"]}
    assert list(units) == ["1", "2", "3", "4", "5", "6", "7"]
    for r in res["rows"]:
        assert 0 <= r["balanced_top1"] <= r["balanced_top5"] <= 100
    for row in ("1", "2", "3", "4", "7"):
        assert units[row] == pytest.approx(1, abs=0.15), units
    # the system: 3 units of training and one labelling pass of two views (2 / (3 x 2 epochs)
    # of a unit); CE for its compute matches both
    assert units["5"] == pytest.approx(3 + 2 / 6, abs=0.3), units
    # whole batches: each of ce_long's 7 epochs draws 343 images, 5 batches of 60 (a unit here is
    # 720 draws, so up to 7 x 59 / 720 = 0.57 units short; at 31k images and 128 a batch, 0.004)
    assert units["6"] == pytest.approx(units["5"], abs=0.6), units
    # damage recovered: 0 at row 1, 1 at the ceiling; undefined (None) where both score alike
    assert res["rows"][6]["damage_recovered"] in (1.0, None)
    assert res["rows"][0]["damage_recovered"] in (0.0, None)
    assert res["metric"] == "balanced_top1"
    assert 0 < res["keyword_audit"]["balanced_top1"] <= 100
    d = res["wrong_label_detection"]
    assert set(d) == {"images", "text", "images_and_text"}
    assert all(0 <= v["ap"] <= 1 for v in d.values())
    pl = res["pseudo_labels"]["pl"]
    assert pl["train_images"] == 360 and pl["kept"] == 360 - pl["dropped"]
    md = bench.harness.to_markdown(bench.SPEC, res)
    assert "| 7 |" in md and "Keyword audit" in md and "damage recovered" in md
    # the clean copy fed only the ceiling: its manifest's labels are the clean ones
    summary = json.loads((out / "manifest_clean/step.json").read_text())["summary"]
    assert summary["records"]["train"] == 360
    # the system's ensemble weights were fitted on the val split (DATA/info/val_filelist.txt)
    recipe = bench.harness.recipe_for(bench.SPEC, roots, epochs=2, batch_size=60)
    fit = next(s for s in recipe["steps"] if s["id"] == "test_system")["fit_labels"]
    assert fit == str(roots["DATA"] / "info/val_filelist.txt")
    system = json.loads((out / "test_system/step.json").read_text())["summary"]
    assert len(system["weights"]) == 2 and sum(system["weights"]) == pytest.approx(1, abs=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} is not here (the shared data)")
def test_real_titles_keep_brands_out_of_wordnet(tmp_path):
    """On fashion53's real titles: brands get no unrelated WordNet sense (nike is no goddess,
    puma no cat), words WordNet does not know stay as tokens, the words that name classes stay."""
    from webly.data.index import IndexConfig, run_index
    from webly.labels.tagging import TagConfig, tag

    bench = _bench()
    root = bench.common.find_root(REAL, tmp_path / "cache", "fashion53")
    run_index(root=str(root), cfg=IndexConfig(), out=tmp_path / "manifest.parquet")
    tag(tmp_path / "manifest.parquet", tmp_path / "tags", TagConfig(workers=2))
    rows = [line.split("\t") for line in (tmp_path / "tags/vocab.tsv").read_text().splitlines()[1:]]
    sense = {r[0]: r[2] for r in rows}
    for brand in ("nike", "puma", "adidas", "lotto", "catwalk"):
        assert sense.get(brand, "") == "", (brand, sense.get(brand))
    for word, wnid in (("t-shirt", "n03595614"), ("kurta", "n03629231"), ("shirt", "n04197391")):
        assert sense[word] == wnid
    for common in ("man", "woman", "black", "t-shirt"):  # above max_df, informative: kept
        assert common in sense
