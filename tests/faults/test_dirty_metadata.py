"""Fault class 3, dirty metadata: every oddity is fixed and counted, or skipped and counted (with
--skip-bad) or a one-line error naming the file; never a crash, never a silent skip."""

import json
from pathlib import Path

import pytest

from webly.app.cli import main
from webly.core.errors import WeblyError
from webly.data.index import IndexConfig, index_dataset
from webly.data.manifest import Manifest
from webly.data.records import MAX_TEXT_CHARS
from webly.data.webvision import WebVisionReader

ITEMS = [  # google/q00001.json: one row per oddity
    {"title": None, "description": "ok"},
    {"title": 12345, "description": 6.5},
    {"title": "tags as a string", "tags": "cheetah,savanna"},
    {"title": "big", "description": "x" * 10_000_000},
    "not a dict",
    {"title": ["a", "list"], "tags": 7},
]


def dirty_tree(root: Path) -> Path:
    info = root / "info"
    info.mkdir(parents=True)
    (info / "synsets.txt").write_text("n02130308 cheetah\n")
    files, metas = [], []
    for i in range(len(ITEMS)):
        files.append(f"google/q00001/{i + 1:06d}.jpg 0")
        metas.append(f"google/q00001.json {i + 1}")
    files += ["google/q00002/000001.jpg 0", "google/q00003/000001.jpg 0",
              "google/q00004/000001.jpg 0"]
    metas += ["google/q00002.json 1", "google/q00003.json 1", "google/q00004.json 1"]
    (info / "train_filelist_all.txt").write_text("\n".join(files) + "\n")
    (info / "train_meta_list_all.txt").write_text("\n".join(metas) + "\n")
    meta = root / "meta/google"
    meta.mkdir(parents=True)
    (meta / "q00001.json").write_text(json.dumps(ITEMS))
    # latin-1 + utf-8
    (meta / "q00002.json").write_bytes(b'[{"title": "caf\xe9 \xc3\xa9t\xc3\xa9 cheetah"}]')
    (meta / "q00003.json").write_text("[{\"title\": ")  # invalid JSON
    (meta / "q00004.json").write_text(json.dumps({"title": "a dict, not a list"}))
    return root


def test_everything_fixed_or_skipped_is_counted(tmp_path):
    root = dirty_tree(tmp_path / "wv")
    s = index_dataset(root, tmp_path / "m.parquet", IndexConfig(skip_bad=True))
    fixed = s["fixed_or_skipped"]
    assert s["records"]["train"] == len(ITEMS) + 1  # the two unreadable files' rows are skipped...
    assert fixed["skipped_bad_meta"] == 2  # ...and counted
    assert fixed["title_not_string"] == 2 and fixed["description_not_string"] == 1
    assert fixed["tags_as_string"] == 1 and fixed["tags_not_list"] == 1
    assert fixed["description_truncated"] == 1 and fixed["meta_item_not_dict"] == 1
    recs = list(Manifest(tmp_path / "m.parquet").iter_records())
    by_id = {r.id: r for r in recs}
    assert by_id["google/q00001/000003.jpg"].tags == ["cheetah", "savanna"]
    assert len(by_id["google/q00001/000004.jpg"].description) == MAX_TEXT_CHARS
    assert by_id["google/q00001/000002.jpg"].title == "12345"
    assert "cheetah" in by_id["google/q00002/000001.jpg"].title  # undecodable bytes replaced


def test_without_skip_bad_the_first_bad_file_is_a_one_line_error(tmp_path, capsys):
    root = dirty_tree(tmp_path / "wv")
    with pytest.raises(WeblyError, match="q00003.json: invalid JSON"):
        list(WebVisionReader(root).iter_records("train"))
    assert main(["index", str(root), "-o", str(tmp_path / "m.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid JSON" in err[0] and "--skip-bad" in err[0]


def test_worker_processes_fix_skip_and_fail_exactly_as_one_process(tmp_path):
    root = dirty_tree(tmp_path / "wv")
    one = index_dataset(root, tmp_path / "a.parquet", IndexConfig(skip_bad=True))
    two = index_dataset(root, tmp_path / "b.parquet", IndexConfig(skip_bad=True, workers=2))
    assert one["fixed_or_skipped"] == two["fixed_or_skipped"] and one["records"] == two["records"]
    assert Manifest(tmp_path / "a.parquet").read().equals(Manifest(tmp_path / "b.parquet").read())
    with pytest.raises(WeblyError, match="q00003.json: invalid JSON"):  # the first bad file
        index_dataset(root, tmp_path / "c.parquet", IndexConfig(workers=2))
