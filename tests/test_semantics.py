"""WordNet concept similarity, keyword support and LW-Set weights."""

import random

import numpy as np
import pytest

from webly.app.cli import main
from webly.core.errors import WeblyError
from webly.labels.tagging import TagConfig, load_tags, tag
from webly.labels.weighing import (
    WeighConfig,
    concept_similarity,
    concept_synsets,
    keyword_support,
    label_weights,
    nearest,
    neighbours,
    weigh,
)
from webly.labels.wordnet import wordnet

YELLOW = "n01568892"


def _pool():
    wn = wordnet()
    warblers = wn.synset("new_world_warbler.n.01")
    inside = {s for s in warblers.closure(lambda x: x.hyponyms())} | {warblers}
    others = ["mule_deer.n.01", "cheetah.n.01", "robin.n.01", "goldfinch.n.02", "ovenbird.n.02",
              "flycatcher.n.01", "airedale.n.01", "lemon.n.01", "sports_car.n.01", "wren.n.02",
              "thrush.n.03", "old_world_warbler.n.01", "tanager.n.01", "vireo.n.01", "sparrow.n.01"]
    return inside, [wn.synset(n) for n in others]


@pytest.mark.parametrize("measure", ["wup", "path", "lch"])
def test_seed_warbler_example(measure):
    wn = wordnet()
    inside, outside = _pool()
    concepts = [wn.synset_from_pos_and_offset("n", int(YELLOW[1:])),
                wn.synset("parula_warbler.n.01"),
                wn.synset("cape_may_warbler.n.01"), wn.synset("blackburn.n.01"), *outside]
    sim = concept_similarity(concepts, measure)
    out_max = max(sim[0, j] for j, c in enumerate(concepts) if c not in inside)
    for j in (1, 2, 3):
        assert sim[0, j] >= out_max
        assert sim[0, j] > sim[0, concepts.index(wn.synset("mule_deer.n.01"))]
        assert sim[0, j] > sim[0, concepts.index(wn.synset("cheetah.n.01"))]


def test_wup_agrees_with_nltk_mostly():
    wn = wordnet()
    pool = sorted(wn.synset("animal.n.01").closure(lambda x: x.hyponyms()), key=lambda s: s.name())
    random.Random(0).shuffle(pool)
    syns = pool[:300]
    sim = concept_similarity(syns, "wup")
    rng = random.Random(1)
    pairs = [(rng.randrange(300), rng.randrange(300)) for _ in range(200)]
    close = [abs(sim[i, j] - syns[i].wup_similarity(syns[j])) < 0.05 for i, j in pairs]
    assert np.mean(close) >= 0.9  # differs where NLTK measures to the subsumer across branches
    assert np.allclose(sim, sim.T)


def test_neighbours_topk_threshold():
    sim = np.array([[1, .9, .2, .8], [.9, 1, .1, .3], [.2, .1, 1, .1], [.8, .3, .1, 1]], np.float32)
    idx, val = neighbours(sim, 2, 0.5)
    assert idx.tolist() == [[1, 3], [0, -1], [-1, -1], [0, -1]]
    assert val[0].tolist() == pytest.approx([0.9, 0.8])


def test_keyword_support_names_or_below_only():
    wn = wordnet()
    concepts = [wn.synset("big_cat.n.01"), wn.synset("cheetah.n.01"), wn.synset("lion.n.01")]
    vocab = ["cheetah", "big cat", "feline", "lion", "savannah"]
    a = keyword_support(vocab, concepts, WeighConfig()).toarray()
    assert a[0, 1] == 1 and a[0, 0] >= 0.8  # cheetah names cheetah and lies below big cat
    assert a[1, 0] == 1 and a[1, 1] == 0  # the broader 'big cat' does not single out cheetah
    assert a[2].sum() == 0 and a[4].sum() == 0  # too general / unrelated
    assert a[0, 2] == 0  # a sibling's name does not support lion


def test_label_weight_formula():
    import scipy.sparse as sp

    cfg = WeighConfig(absent=0.5, boost=1.0, min_weight=0.05, label_share=0)
    labels = np.array([0, 0, -1])
    keywords = sp.csr_matrix(np.array([[0, 1], [0, 0], [1, 1]], np.uint8))
    support = sp.csr_matrix(np.array([[1.0, 0, 0], [0, 1.0, 0]], np.float32))  # kw1 supports c1
    nb_idx = np.array([[1, 2], [0, -1], [0, -1]])
    nb_sim = np.array([[0.8, 0.06], [0.8, 0], [0.5, 0]], np.float32)
    w, stats = label_weights(labels, keywords, support, nb_idx, nb_sim, cfg)
    w = w.toarray()
    assert w[0].tolist() == pytest.approx([1.0, 1.0,
                                           0.0])  # supported: min(1, .8 * 1.5); .06*.5 < .05
    assert w[1].tolist() == pytest.approx([1.0, 0.4, 0.0])  # unsupported: .8 * .5
    assert w[2].tolist() == [0, 0, 0]  # no label, no weights
    assert stats["labelled_images"] == 2
    # label_share: the neighbours are scaled down together so the label keeps that share
    cfg.label_share = 0.75
    w, stats = label_weights(labels, keywords, support, nb_idx, nb_sim, cfg)
    w = w.toarray()
    assert w[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])  # 1.0 capped at (1 - .75) / .75
    assert w[1].tolist() == pytest.approx([1.0, 1 / 3, 0.0])  # 0.4 likewise
    assert stats["label_share_of_mass"] == pytest.approx(0.75, abs=1e-4)
    cfg.label_share = 0.5
    w = label_weights(labels, keywords, support, nb_idx, nb_sim, cfg)[0].toarray()
    assert w[1].tolist() == pytest.approx([1.0, 0.4, 0.0])  # under the cap: untouched


@pytest.fixture(scope="module")
def weighed(synth_manifest, tmp_path_factory):
    d = tmp_path_factory.mktemp("lw")
    tag(synth_manifest, d / "tags", TagConfig(min_count=1, max_df=0.5))
    stats = weigh(synth_manifest, d / "tags", d / "weights", WeighConfig())
    return d, stats


def test_siblings_weigh_more_than_unrelated(weighed, synth_manifest, synth_small):
    import scipy.sparse as sp

    from webly.app.demo.synth import SynthConfig, pick_concepts
    from webly.data.manifest import Manifest

    d, stats = weighed
    w = sp.load_npz(d / "weights/label_weights.npz").toarray()
    m = Manifest(synth_manifest)
    concepts = pick_concepts(SynthConfig(families=3, per_family=4))
    labels = [r.label for r in m.iter_records()]
    sib, other = [], []
    for i, y in enumerate(labels):
        if y is None:
            continue
        assert w[i, y] == 1.0
        for c in range(len(concepts)):
            if c != y:
                (sib if concepts[c].family == concepts[y].family else other).append(w[i, c])
    assert np.mean(sib) > 0.1 and np.mean(other) < np.mean(sib) / 4
    assert stats["label_share_of_mass"] >= 0.75 - 1e-4  # the label keeps most of the mass
    assert stats["concepts"] == 12 and (d / "weights/neighbours.tsv").is_file()
    assert w.shape == (len(labels), 12)


def test_unknown_concept_errors_or_identity(tmp_path):
    with pytest.raises(WeblyError, match="n99999999 .* not in WordNet 3.0"):
        concept_synsets([YELLOW, "n99999999"], allow_unknown=False)
    with pytest.warns(UserWarning, match="identity-only"):
        syns, unknown = concept_synsets([YELLOW, "n99999999"], allow_unknown=True)
    assert syns[1] is None and unknown == ["n99999999"]
    sim = concept_similarity(syns)
    assert sim.tolist() == [[1, 0], [0, 1]]


def test_neighbours_command(synth_manifest, capsys):
    assert main(["neighbours", "yellow warbler", "--concepts", str(synth_manifest), "--top-k",
                 "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("yellow warbler -> n01568892")
    assert len(out) == 4 and all("warbler" in line or "Blackburn" in line for line in out[1:])
    top = nearest("n02130308", ["n02128925", "n02129165", YELLOW], ["jaguar", "lion", "yw"], "wup",
                  3)
    assert [t[1] for t in top][:2] == ["jaguar", "lion"] or [t[1] for t in top][:2] == ["lion",
                                                                                        "jaguar"]


def test_weigh_rejects_mismatched_tags(synth_manifest, tmp_path):
    from webly.data.manifest import write_manifest
    from webly.data.records import Record

    m = tmp_path / "small.parquet"
    write_manifest(m, [Record(id="a", path="a", split="train", label=0)],
                   {"root": str(tmp_path), "classes": [YELLOW]})
    tag(m, tmp_path / "tags", TagConfig(min_count=1))
    with pytest.raises(WeblyError, match="has 1 rows but"):
        weigh(synth_manifest, tmp_path / "tags", tmp_path / "w", WeighConfig())
    assert load_tags(tmp_path / "tags")[0].shape == (1, 0)
