"""Fault class 3b, dirty web text: lone surrogates (valid JSON, not encodable as UTF-8), NUL,
control characters, right-to-left marks, mojibake and 1 MB values, fed to every place metadata
text flows: the metadata reader, `webly index`, the tagger, weigh's keyword support and the demo
report. Property tests run in-process; the whole tree also goes through the real CLI."""

import json
import os
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from webly.app.cli import main
from webly.app.report import Run, examples_section
from webly.app.report import text as _text
from webly.data.folder import FolderReader
from webly.data.manifest import Manifest
from webly.data.records import MAX_TEXT_CHARS, text_from_meta
from webly.labels.text import KeywordRecogniser, text_segments
from webly.labels.weighing import WeighConfig, keyword_support
from webly.labels.wordnet import wordnet

MB = "x" * 1_000_000
NASTY = ["\udcff", "\ud83d", "a\udc80b", "\x00", "nul\x00in", "\x07\x1b[31mred\x1b[0m",
         "\u202eevil\u202c",
         "\u200f\u200e", "cafÃ© donâ€™t", "\ufeff\u00ad", "🦊 cheetah", MB]
ANY_CHAR = st.characters(exclude_categories=())  # surrogates included (hypothesis leaves them out)
WEB_TEXT = st.lists(st.sampled_from(NASTY) | st.text(ANY_CHAR, max_size=12),
                    max_size=4).map("".join)
FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.large_base_example, HealthCheck.data_too_large])


def valid(s: str) -> bool:
    s.encode("utf-8")  # raises on a lone surrogate
    return "\x00" not in s


@FUZZ
@given(WEB_TEXT, WEB_TEXT, st.lists(WEB_TEXT, max_size=3) | WEB_TEXT)
def test_metadata_text_is_always_valid_and_fixes_are_counted(title, desc, tags):
    counts = Counter()
    t, d, tg = text_from_meta({"title": title, "description": desc, "tags": tags}, counts)
    assert valid(t) and valid(d) and all(valid(x) for x in tg)
    assert len(t) <= MAX_TEXT_CHARS and len(d) <= MAX_TEXT_CHARS
    has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in title)
    assert bool(counts["title_surrogates_replaced"]) == has_surrogate
    assert bool(counts["title_nul_replaced"]) == ("\x00" in title)


@pytest.fixture(scope="module")
def recogniser():
    return KeywordRecogniser()


@FUZZ
@given(WEB_TEXT, WEB_TEXT, st.lists(WEB_TEXT, max_size=3))
def test_tagger_takes_dirty_text(recogniser, title, desc, tags):
    kws = recogniser.keywords(text_segments(title, desc, tags))
    assert all(k and k.isascii() and k == k.strip() for k in kws)


@FUZZ
@given(st.lists(WEB_TEXT, max_size=4))
def test_keyword_support_takes_any_vocabulary(vocab):
    cheetah = wordnet().synset_from_pos_and_offset("n", 2130308)
    s = keyword_support([*vocab, "cheetah"], [cheetah, None], WeighConfig())
    assert s.shape == (len(vocab) + 1, 2) and s[len(vocab), 0] == 1.0


@FUZZ
@given(WEB_TEXT)
def test_report_text_is_valid_isolated_and_bounded(s):
    out = _text(s)
    assert out.startswith("<bdi>") and out.endswith("</bdi>") and len(out) < 2000
    inner = out[5:-6]
    inner.encode("utf-8")
    assert not any(unicodedata.category(c) == "Cc" and c not in "\t\n" for c in inner)
    assert "<" not in inner and ">" not in inner


def dirty_tree(root: Path, items: list[dict]) -> Path:
    """A two-concept WebVision tree, one query file per concept, one image per metadata item."""
    (root / "info").mkdir(parents=True)
    (root / "info/synsets.txt").write_text("n02130308 cheetah\nn02432511 mule deer\n")
    files, metas, per_query = [], [], {1: [], 2: []}
    rng = np.random.default_rng(0)
    for i, item in enumerate(items):
        q = 1 + i % 2
        per_query[q].append(item)
        rel = f"google/q{q:05d}/{i:06d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / rel)
        files.append(f"{rel} {q - 1}")
        metas.append(f"google/q{q:05d}.json {len(per_query[q])}")
    (root / "info/train_filelist_all.txt").write_text("\n".join(files) + "\n")
    (root / "info/train_meta_list_all.txt").write_text("\n".join(metas) + "\n")
    # ensure_ascii: surrogates travel as "\udcff" escapes, as on the web
    for q, its in per_query.items():
        (root / f"google/q{q:05d}.json").write_text(json.dumps(its, ensure_ascii=True))
    return root


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.large_base_example, HealthCheck.data_too_large])
@given(st.lists(st.fixed_dictionaries({"title": WEB_TEXT, "description": WEB_TEXT,
                                       "tags": st.lists(WEB_TEXT,
                                                        max_size=2)}), min_size=1, max_size=4))
def test_index_keeps_every_dirty_record(tmp_path_factory, items):
    d = tmp_path_factory.mktemp("ix")
    root = dirty_tree(d / "wv", items)
    assert main(["index", str(root), "-o", str(d / "m.parquet"), "--splits", "train"]) == 0
    recs = list(Manifest(d / "m.parquet").iter_records())
    assert len(recs) == len(items)  # kept, text made valid; nothing skipped, nothing crashed
    assert all(valid(r.title) and valid(r.description) and all(map(valid, r.tags)) for r in recs)


@pytest.mark.slow  # subprocesses: in the whole suite, not the fast subset
def test_dirty_tree_through_the_cli_indexes_tags_weighs_and_reports(tmp_path):
    clean = ["cheetah on the savanna", "a mule deer in the forest", "spotted cheetah running",
             "mule deer grazing", "cheetah cub", "deer herd"]
    items = []
    for i, words in enumerate(clean):
        items.append({"title": f"{words} {NASTY[i]}",
                      "description": f"{NASTY[(i + 6) % len(NASTY)]} {words}",
                      "tags": [words.split()[-1], NASTY[(i + 3) % len(NASTY)]]})
    root = dirty_tree(tmp_path / "wv", items)
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "webly.app.cli"]
    for args in (["index", str(root), "-o", str(run / "manifest/manifest.parquet")],
                 ["tag", str(run / "manifest/manifest.parquet"), "-o", str(run / "tags"),
                  "--min-count", "1", "--max-df", "1.0"],
                 ["weigh", str(run / "manifest/manifest.parquet"), "--tags", str(run / "tags"),
                  "-o", str(run / "weights")]):
        r = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((run / "manifest/index.summary.json").read_text())
    assert summary["records"]["train"] == len(items)  # every record kept...
    fixed = summary["fixed_or_skipped"]  # ...and every fix counted
    sur = sum(any(0xD800 <= ord(c) <= 0xDFFF for c in it["title"]) for it in items)
    assert fixed["title_surrogates_replaced"] == sur > 0
    assert fixed["title_nul_replaced"] == sum("\x00" in it["title"] for it in items) > 0
    long = sum(len(it["description"]) > MAX_TEXT_CHARS for it in items)
    assert fixed["description_truncated"] == long > 0
    stats = json.loads((run / "tags/stats.json").read_text())
    assert stats["images"] == len(items)
    vocab = (run / "tags/vocab.tsv").read_text()
    assert "cheetah" in vocab and "cafe" in vocab  # mojibake "cafÃ©" repaired, not "cafa"
    w = json.loads((run / "weights/stats.json").read_text())
    assert w["concepts"] == 2
    page = examples_section(Run(run), {"truth": None})  # stages run by hand: found by summary
    page.encode("utf-8")
    assert page.count("<tr>") == len(items) + 1 and "\x00" not in page and "\x1b" not in page


def test_folder_names_that_are_not_utf8_are_skipped_and_counted(tmp_path):
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat/ok.jpg")
    with open(os.fsencode(tmp_path / "cat") + b"/caf\xe9.jpg", "wb") as f:  # Latin-1 name
        Image.new("RGB", (8, 8)).save(f, "JPEG")
    reader = FolderReader(tmp_path)
    recs = list(reader.iter_records("train"))
    assert [r.path for r in recs] == ["cat/ok.jpg"] and reader.stats["skipped_path_not_utf8"] == 1
