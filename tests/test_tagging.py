"""`webly tag`: WT-Set outputs, sharded runs + merge, resumption, bad input."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from webly.app.cli import main
from webly.core.errors import WeblyError
from webly.data.manifest import Manifest, write_manifest
from webly.data.records import Record
from webly.labels.tagging import TagConfig, load_tags, merge, tag, tag_parts


@pytest.fixture(scope="module")
def tagged(synth_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("tags")
    stats = tag(synth_manifest, out, TagConfig(min_count=2, max_df=0.3, chunk_rows=50, workers=2))
    return out, stats


def test_outputs_and_stats(tagged, synth_manifest):
    out, stats = tagged
    mat, vocab = load_tags(out)
    assert mat.shape == (len(Manifest(synth_manifest)), len(vocab)) and sp.isspmatrix_csr(mat)
    assert stats["images"] == mat.shape[0] and stats["vocabulary"] == len(vocab) > 10
    assert stats["recogniser"] == "wordnet-sense-frequency"
    assert sum(stats["keywords_per_image_histogram"].values()) == stats["images"]
    assert stats["images_without_keywords"] >= stats["text"]["no_text"] > 0  # val/test have no text
    for plot in ("keyword_distribution.png", "keywords_per_image.png"):
        assert (out / plot).stat().st_size > 1000
    header, *rows = (out / "vocab.tsv").read_text().splitlines()
    assert header == "keyword\tdoc_frequency\tsynset\tsense_fit"
    dfs = [int(r.split("\t")[1]) for r in rows]
    assert dfs == sorted(dfs, reverse=True) and min(dfs) >= 2
    assert np.array_equal(np.asarray(mat.sum(0)).ravel(), dfs)  # df = column sums of the matrix


def test_rows_follow_manifest_order_and_name_the_concepts(tagged, synth_manifest):
    out, _ = tagged
    mat, vocab = load_tags(out)
    recs = list(Manifest(synth_manifest).iter_records())
    first = recs[0]
    kws = {vocab[j] for j in mat[0].indices}
    text = f"{first.title} {first.description} {first.query_text}".lower()
    assert kws and all(k in text for k in kws)
    assert mat[len(recs) - 1].nnz == 0  # a test image: no text, no keywords


def test_vocab_filters(tmp_path):
    recs = [Record(id=str(i), path=f"{i}.jpg", split="train", label=0,
                   title="photo of a lion" + (" cheetah" if i < 3 else "")
                   + (" zebra" if i == 0 else ""))
            for i in range(10)]
    m = tmp_path / "m.parquet"
    write_manifest(m, recs, {"root": str(tmp_path), "classes": ["n02129165"]})
    stats = tag(m, tmp_path / "t", TagConfig(max_df=0.5, min_count=2, use_query=False))
    _, vocab = load_tags(tmp_path / "t")
    assert vocab == ["cheetah"]  # photo/lion in every image (> max_df), zebra once (< min_count)
    assert stats["distinct_keywords_before_filtering"] == 4
    tag(m, tmp_path / "t2", TagConfig(max_df=1.0, min_count=1, drop_top=1, max_vocab=2,
                                      use_query=False))
    assert load_tags(tmp_path / "t2")[1] == ["photo", "cheetah"]  # 'lion' ties 'photo'; sorted


def test_max_df_counts_only_images_with_text(tmp_path):
    """Val/test images carry no text; they must not dilute document frequencies."""
    recs = [Record(id=str(i), path=f"{i}.jpg", split="train", label=0,
                   title="lion" + (" cheetah" if i < 6 else "")) for i in range(10)]
    recs += [Record(id=f"v{i}", path=f"v{i}.jpg", split="val", label=0) for i in range(30)]
    m = tmp_path / "m.parquet"
    write_manifest(m, recs, {"root": str(tmp_path), "classes": ["n02129165"]})
    stats = tag(m, tmp_path / "t", TagConfig(max_df=0.5, min_count=1, use_query=False))
    assert load_tags(tmp_path / "t")[1] == []  # lion in 10/10, cheetah in 6/10 texts: both > 0.5
    assert stats["images"] == 40 and stats["images_with_text_keywords"] == 10


def test_sharded_run_then_merge_equals_single_run(tagged, synth_manifest, tmp_path):
    out, _ = tagged
    cfg = TagConfig(min_count=2, max_df=0.3, chunk_rows=50)
    for i in range(3):
        assert main(["tag", str(synth_manifest), "-o", str(tmp_path), "--min-count", "2",
                     "--max-df", "0.3", "--chunk-rows", "50", "--shard", f"{i}/3"]) == 0
        if i < 2:
            with pytest.raises(WeblyError, match="parts missing"):
                merge(tmp_path, cfg)
    assert main(["tag", "merge", "-o", str(tmp_path), "--min-count", "2", "--max-df", "0.3"]) == 0
    a, va = load_tags(out)
    b, vb = load_tags(tmp_path)
    assert va == vb and (a != b).nnz == 0
    assert (tmp_path / "tag.shard0of3.config.yaml").is_file()


def test_resume_skips_finished_parts(synth_manifest, tmp_path):
    cfg = TagConfig(chunk_rows=100)
    first = tag_parts(synth_manifest, tmp_path, cfg)
    (tmp_path / "parts/part-000001.parquet").unlink()
    (tmp_path / "parts/.part-000002.parquet.tmp123").write_bytes(b"half-written")
    again = tag_parts(synth_manifest, tmp_path, cfg)
    assert first["tagged_now"] == first["tasks"] and again["tagged_now"] == 1


def test_merge_before_tagging_is_a_clear_error(tmp_path):
    with pytest.raises(WeblyError, match="no tagging plan"):
        merge(tmp_path, TagConfig())
    with pytest.raises(WeblyError, match="no finished tag set"):
        load_tags(tmp_path)


def test_empty_and_malformed_text_counts_not_errors(tmp_path):
    recs = [Record(id="a", path="a.jpg", split="train", label=0, title="", description="", tags=[]),
            Record(id="b", path="b.jpg", split="train", label=0, title="ünïcödé 🐆 ✓",
                   description="x" * 50_000, tags=["#BigCat", ""])]
    m = tmp_path / "m.parquet"
    write_manifest(m, recs, {"root": str(tmp_path), "classes": ["n02129165"]})
    stats = tag(m, tmp_path / "t", TagConfig(min_count=1, max_df=1.0))
    assert stats["text"]["no_text"] == 1 and stats["text"]["text_truncated"] == 1
    assert stats["images_without_keywords"] == 1
    # a word WordNet does not know is a token ("unicode"); a 10,000-letter run is not
    assert load_tags(tmp_path / "t")[1] == ["big cat", "unicode"]


def test_bad_tag_options():
    for bad in ({"max_df": 0}, {"shard": "3/3"}, {"tagger": "spacy"}, {"min_count": -1}):
        with pytest.raises(WeblyError):
            TagConfig(**bad).validate()
    assert json.loads(json.dumps(TagConfig().__dict__))["max_vocab"] == 35000


def test_common_words_kept_only_when_they_say_something_about_the_labels(tmp_path):
    """The seed's cut of the most common words, on a many-class set: a word in every image
    ("photo") or spread evenly over the classes ("stock") goes; a common word that names a group
    of classes ("bird": 20% of the images, all in a fifth of the classes) stays."""
    import itertools

    names = ["q" + "".join(p) for p in itertools.product("abcdefghij", repeat=3)][:200]
    recs = []
    for i in range(4000):
        y = i % 200
        words = [names[y], "photo"] + (["stock"] if (i // 200) % 2 else []) + \
            (["bird"] if y < 40 else [])
        recs.append(Record(id=str(i), path=f"{i}.jpg", split="train", label=y,
                           title=" ".join(words)))
    m = tmp_path / "m.parquet"
    write_manifest(m, recs, {"root": str(tmp_path),
                             "classes": [f"n{9000000 + c:08d}" for c in range(200)]})
    stats = tag(m, tmp_path / "t", TagConfig(min_count=5, workers=1))
    vocab = set(load_tags(tmp_path / "t")[1])
    assert "bird" in vocab and "photo" not in vocab and "stock" not in vocab
    common = stats["filters"]["above_max_df"]
    assert common["bird"]["bits"] > 2 > 0.01 > common["photo"]["bits"]
    assert common["stock"]["bits"] < 0.1 and not common["stock"]["kept"]
    off = tag(m, tmp_path / "t0", TagConfig(min_count=5, workers=1, keep_informative=0))
    assert "bird" not in set(load_tags(tmp_path / "t0")[1]) and off["vocabulary"] == 200


def test_senses_chosen_in_the_context_of_the_images_classes(tmp_path):
    """'puma' on shoes is no cat and 'nike' (in WordNet only the goddess, an instance) no
    goddess: no sense, plain tokens; 'cheetah' among big cats takes its sense; 'tie' (a verb
    first) is a keyword where the necktie fits its images, and not where nothing fits."""
    from webly.labels.wordnet import wordnet

    recs = []
    for i in range(40):
        shoe = i % 2 == 0
        title = "nike puma running shoe" if shoe else "cheetah lion tie"
        recs.append(Record(id=str(i), path=f"{i}.jpg", split="train", label=0 if shoe else 1,
                           title=title))
    m = tmp_path / "m.parquet"
    write_manifest(m, recs, {"root": str(tmp_path), "classes": ["n04120489", "n02129165"]})
    tag(m, tmp_path / "t", TagConfig(min_count=2, max_df=1.0))
    rows = [line.split("\t") for line in (tmp_path / "t/vocab.tsv").read_text().splitlines()[1:]]
    sense = {r[0]: r[2] for r in rows}
    wn = wordnet()
    cheetah = wn.synset("cheetah.n.01")
    assert sense["puma"] == "" and sense["nike"] == ""
    assert sense["cheetah"] == f"n{cheetah.offset():08d}"
    assert "tie" not in sense  # among lions no sense of "tie" fits: the verb is no keyword
    necktie = [Record(id=str(i), path=f"{i}.jpg", split="train", label=0, title="silk tie")
               for i in range(10)]
    write_manifest(tmp_path / "n.parquet", necktie, {"root": str(tmp_path),
                                                     "classes": ["n03815615"]})  # necktie
    tag(tmp_path / "n.parquet", tmp_path / "n", TagConfig(min_count=2, max_df=1.0))
    assert "tie" in load_tags(tmp_path / "n")[1]
