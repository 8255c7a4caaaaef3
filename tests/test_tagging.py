"""`webly tag`: WT-Set outputs, sharded runs + merge, resumption, bad input."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from webly.cli import main
from webly.data.manifest import Manifest, write_manifest
from webly.data.records import Record
from webly.errors import WeblyError
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
