"""Property-based fuzzing (hypothesis, derandomised so runs repeat): the text cleaner and tagger,
the WebVision list and metadata parsers, and the config loader take anything and either work or
raise WeblyError, never anything else."""

import contextlib
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webly.core.config import resolve_config
from webly.core.errors import WeblyError
from webly.data.paths import check_relative
from webly.data.records import clean_field, clean_tags, text_from_meta
from webly.data.textio import parse_label
from webly.data.webvision import WebVisionReader
from webly.labels.tagging import TagConfig
from webly.labels.text import KeywordRecogniser, clean_text, text_segments
from webly.labels.weighing import WeighConfig
from webly.training.config import TrainConfig

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SCALAR = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
JSON = st.recursive(SCALAR,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                inner, max_size=4),
                    max_leaves=12)


@FUZZ
@given(st.text())
def test_clean_text_is_total_and_idempotent(s):
    once = clean_text(s)
    assert clean_text(once) == once
    assert once == once.strip() and "  " not in once and once == once.lower()


@pytest.fixture(scope="module")
def recogniser():
    return KeywordRecogniser()


@FUZZ
@given(st.text(), st.text(), st.lists(st.text(), max_size=5))
def test_tagger_takes_any_unicode(recogniser, title, desc, tags):
    kws = recogniser.keywords(text_segments(title, desc, tags))
    assert all(isinstance(k, str) and k and k == k.strip() for k in kws)
    assert len(kws) == len(set(kws))


@FUZZ
@given(JSON)
def test_metadata_item_of_any_shape(item):
    title, desc, tags = text_from_meta(item, Counter())
    assert isinstance(title, str) and isinstance(desc, str) and all(isinstance(t,
                                                                               str) for t in tags)
    assert clean_field(title) == title  # cleaning a cleaned field changes nothing
    assert all(isinstance(t, str) for t in clean_tags(item))


@FUZZ
@given(st.text(max_size=20))
def test_label_token(token):
    try:
        label = parse_label(token, Path("info/x.txt"), 3, 10)
    except WeblyError as e:
        assert "info/x.txt:3" in str(e)
    else:
        assert 0 <= label < 10


@FUZZ
@given(st.text(max_size=40))
def test_relative_path_check(rel):
    try:
        check_relative(rel, "list:1")
    except WeblyError:
        return
    assert not rel.startswith("/") and ".." not in rel.replace("\\", "/").split("/")


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=30), max_size=6), st.binary(max_size=200))
def test_webvision_lists_and_metadata_of_any_content(tmp_path_factory, lines, meta_bytes):
    root = tmp_path_factory.mktemp("fz")
    (root / "info").mkdir()
    (root / "info/synsets.txt").write_text("n02130308 cheetah\nn02432511 mule deer\n")
    (root / "info/train_filelist_all.txt").write_bytes(b"\n".join(lines) + b"\n")
    listed = (root / "info/train_filelist_all.txt").read_text(errors="replace").splitlines()
    n = sum(1 for ln in listed if ln.strip())
    (root / "info/train_meta_list_all.txt").write_text("q.json 1\n" * n)
    (root / "q.json").write_bytes(meta_bytes)
    with contextlib.suppress(WeblyError):  # anything else (a crash) fails the test
        list(WebVisionReader(root, skip_bad=True).iter_records("train"))


CONFIG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6),
                          st.floats(allow_nan=True),
                          st.text(max_size=10), st.lists(st.integers(), max_size=3),
                          st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@FUZZ
@given(st.sampled_from([TrainConfig, TagConfig, WeighConfig]),
       st.dictionaries(st.sampled_from(["epochs", "lr", "backbone", "img_size", "max_df",
                                        "min_count", "top_k",
                                        "measure", "amp", "nonsense", "tagger", "seed"]),
                                        CONFIG_VALUES, max_size=4))
def test_config_loader_takes_any_values(cls, layer):
    try:
        cfg = resolve_config(cls, layer, where="fuzz")
        if hasattr(cfg, "validate"):
            cfg.validate()
    except WeblyError as e:
        assert str(e)  # a message, never a crash
    json.dumps({k: str(v) for k, v in layer.items()})
