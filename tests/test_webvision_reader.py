"""Hand-made WebVision 1.0 and 2.0 trees, and every bad-input rule of the reader."""

import json
from pathlib import Path

import pytest

from webly.app.cli import main
from webly.core.errors import WeblyError
from webly.data.index import IndexConfig, index_dataset
from webly.data.manifest import Manifest
from webly.data.webvision import WebVisionReader


def make_tree(root: Path, version: int = 2, meta_under: bool = True) -> Path:
    q = "q%05d" if version == 2 else "q%04d"
    info = root / "info"
    info.mkdir(parents=True)
    (info / "synsets.txt").write_text("n02432511 mule deer, burro deer\n"
                                      "n02130308 cheetah, chetah\n")
    (info / "queries.txt").write_text("1 mule+deer\n2 cheetah\n")
    (info / "queries_synsets_map.txt").write_text("1 0\n2 1\n")
    files = [f"google/{q % 1}/000001.jpg 0", f"google/{q % 2}/000001.jpg 1",
             f"flickr/{q % 1}/000001.jpg 0", f"flickr/{q % 1}/000002.jpg 0"]
    metas = [f"google/{q % 1}.json 1", f"google/{q % 2}.json 1",
             f"flickr/{q % 1}.json 1", f"flickr/{q % 1}.json 2"]
    (info / "train_filelist_all.txt").write_text("\n".join(files) + "\n")
    (info / "train_meta_list_all.txt").write_text("\n".join(metas) + "\n")
    mroot = root / "meta" if meta_under else root
    docs = {
        f"google/{q % 1}.json": [{"id": "g1", "title": "Scatology 101 - Mountain lion",
                                  "description": "We saw Mule deer.", "site": "x",
                                  "page_url": "y"}],
        f"google/{q % 2}.json": [{"id": "g2", "title": None, "description": 42}],
        f"flickr/{q % 1}.json": [{"id": "f1", "title": "deer", "tags": ["mule deer", "arizona"]},
                                 {"id": "f2", "tags": "hiking,kaibab"}],
    }
    for rel, items in docs.items():
        (mroot / rel).parent.mkdir(parents=True, exist_ok=True)
        (mroot / rel).write_text(json.dumps(items))
    (info / "val_filelist.txt").write_text("val000001.jpg 1\n")
    (info / "test_filelist.txt").write_text("test000001.jpg\n")
    (root / "val_images_256").mkdir()
    (root / "val_images_256/val000001.jpg").write_bytes(b"")
    return root


@pytest.mark.parametrize("version,meta_under", [(1, False), (2, True), (2, False)])
def test_reads_handmade_trees(tmp_path, version, meta_under):
    root = make_tree(tmp_path / "wv", version, meta_under)
    r = WebVisionReader(root)
    assert r.classes == ["n02432511", "n02130308"] and r.class_names[1] == "cheetah, chetah"
    train = list(r.iter_records("train"))
    assert [t.label for t in train] == [0, 1, 0, 0]
    assert [t.query for t in train] == [1, 2, 1, 1]
    assert [t.source for t in train] == ["google", "google", "flickr", "flickr"]
    assert train[0].title == "Scatology 101 - Mountain lion" and train[0].query_text == "mule deer"
    assert train[1].title == "" and train[1].description == "42"
    assert train[2].tags == ["mule deer", "arizona"] and train[3].tags == ["hiking", "kaibab"]
    assert r.stats["description_not_string"] == 1 and r.stats["tags_as_string"] == 1
    val = list(r.iter_records("val"))
    assert val[0].path == "val_images_256/val000001.jpg" and val[0].label == 1
    test = list(r.iter_records("test"))
    assert test[0].label is None and test[0].id == "test000001.jpg"


def test_missing_root_and_info_files(tmp_path):
    with pytest.raises(WeblyError, match="dataset root not found"):
        WebVisionReader(tmp_path / "nope")
    (tmp_path / "info").mkdir()
    with pytest.raises(WeblyError,
                       match=r"missing .*synsets.txt: expected one WordNet id per line"):
        WebVisionReader(tmp_path)
    (tmp_path / "info/synsets.txt").write_text("n02432511 mule deer\n")
    with pytest.raises(WeblyError, match=r"missing .*train_filelist_all.txt"):
        list(WebVisionReader(tmp_path).iter_records("train"))


def test_cli_prints_one_line_error(tmp_path, capsys):
    assert main(["index", str(tmp_path / "nope"), "-o", str(tmp_path / "m.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dataset root not found" in err


@pytest.mark.parametrize("label,msg", [("x", "label 'x' is not an integer"),
                                       ("7", "label 7 out of range \\[0, 2\\)"),
                                       ("-1", "label -1 out of range")])
def test_bad_label_names_file_and_line(tmp_path, label, msg):
    root = make_tree(tmp_path / "wv")
    flist = root / "info/train_filelist_all.txt"
    lines = flist.read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0] + " " + label
    flist.write_text("\n".join(lines) + "\n")
    with pytest.raises(WeblyError, match=f"train_filelist_all.txt:3: {msg}"):
        list(WebVisionReader(root).iter_records("train"))


def test_meta_row_past_end_errors_or_is_skipped_and_counted(tmp_path):
    root = make_tree(tmp_path / "wv")
    mlist = root / "info/train_meta_list_all.txt"
    mlist.write_text(mlist.read_text().replace("q00001.json 2", "q00001.json 9"))
    with pytest.raises(WeblyError, match=r"q00001.json: row 9 is past the end \(2 items"):
        list(WebVisionReader(root).iter_records("train"))
    r = WebVisionReader(root, skip_bad=True)
    assert len(list(r.iter_records("train"))) == 3 and r.stats["skipped_bad_meta"] == 1
    s = index_dataset(root, tmp_path / "m.parquet", IndexConfig(skip_bad=True))
    assert s["fixed_or_skipped"]["skipped_bad_meta"] == 1 and s["records"]["train"] == 3


@pytest.mark.parametrize("content,msg", [(b"[{]", "invalid JSON"),
                                         (b'{"a": 1}', "expected a JSON list of items, got dict")])
def test_bad_json_names_file(tmp_path, content, msg):
    root = make_tree(tmp_path / "wv")
    (root / "meta/flickr/q00001.json").write_bytes(content)
    with pytest.raises(WeblyError, match=f"q00001.json: {msg}"):
        list(WebVisionReader(root).iter_records("train"))
    r = WebVisionReader(root, skip_bad=True)
    assert len(list(r.iter_records("train"))) == 2 and r.stats["skipped_bad_meta"] == 2


def test_missing_meta_file_and_misaligned_lists(tmp_path):
    root = make_tree(tmp_path / "wv")
    (root / "meta/google/q00002.json").unlink()
    with pytest.raises(WeblyError, match="metadata file google/q00002.json not found"):
        list(WebVisionReader(root).iter_records("train"))
    mlist = root / "info/train_meta_list_all.txt"
    mlist.write_text("\n".join(mlist.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(WeblyError, match="differ in length"):
        list(WebVisionReader(root, skip_bad=True).iter_records("train"))


def test_non_utf8_text_is_replaced_not_fatal(tmp_path):
    root = make_tree(tmp_path / "wv")
    (root / "meta/google/q00002.json").write_bytes(b'[{"title": "caf\xe9 \xff cheetah"}]')
    flist = root / "info/train_filelist_all.txt"
    flist.write_bytes(flist.read_bytes() + b"")
    recs = list(WebVisionReader(root).iter_records("train"))
    assert recs[1].title == "caf\ufffd \ufffd cheetah"


def test_huge_description_is_capped(tmp_path):
    from webly.data.records import MAX_TEXT_CHARS

    root = make_tree(tmp_path / "wv")
    (root / "meta/google/q00002.json").write_text(json.dumps([{"description": "x" * 3_000_000}]))
    r = WebVisionReader(root)
    recs = list(r.iter_records("train"))
    assert len(recs[1].description) == MAX_TEXT_CHARS and r.stats["description_truncated"] == 1


def test_cifar10n_style_single_train_list(tmp_path):
    """The CIFAR-10N benchmark layout: info/train_filelist.txt, val paths with their folder."""
    info = tmp_path / "info"
    info.mkdir()
    (info / "synsets.txt").write_text("n02691156 airplane\nn02958343 automobile\n")
    (info / "train_filelist.txt").write_text("train/00000.jpg 1\ntrain/00001.jpg 0\n")
    (info / "val_filelist.txt").write_text("val/00000.jpg 0\n")
    (tmp_path / "val").mkdir()
    (tmp_path / "val/00000.jpg").write_bytes(b"")
    s = index_dataset(tmp_path, tmp_path / "m.parquet", IndexConfig())
    assert s["records"] == {"train": 2, "val": 1} and s["absent_splits"] == ["test"]
    recs = list(Manifest(tmp_path / "m.parquet").iter_records())
    assert recs[0].path == "train/00000.jpg" and recs[0].source == "other"
    assert recs[2].path == "val/00000.jpg"


@pytest.mark.parametrize("run_rows,workers", [(262_144, 1), (7, 1), (7, 2)])  # memory, disk, procs
def test_each_metadata_file_is_parsed_once_whatever_the_list_order(tmp_path, monkeypatch,
                                                                   run_rows, workers):
    import webly.data.webvision as wv

    monkeypatch.setattr(wv, "RUN_ROWS", run_rows)
    info = tmp_path / "info"
    info.mkdir()
    (info / "synsets.txt").write_text("n02432511 mule deer\nn02130308 cheetah\n")
    files, metas = [], []
    for k in range(20):  # round-robin over 6 query files: the worst order for a small cache
        for q in range(1, 7):
            files.append(f"google/q{q:05d}/{k + 1:06d}.jpg {q % 2}")
            metas.append(f"google/q{q:05d}.json {k + 1}")
    (info / "train_filelist_all.txt").write_text("\n".join(files) + "\n")
    (info / "train_meta_list_all.txt").write_text("\n".join(metas) + "\n")
    for q in range(1, 7):
        (tmp_path / "google").mkdir(exist_ok=True)
        (tmp_path / f"google/q{q:05d}.json").write_text(json.dumps(
            [{"title": f"q{q} row {k + 1}", "tags": [f"t{k}"]} for k in range(20)]))
    items = [{"title": f"q3 row {k + 1}", "tags": [f"t{k}"]} for k in range(20)]
    items[0]["title"] = 12345  # a fix to count, also when a worker process parsed the file
    (tmp_path / "google/q00003.json").write_text(json.dumps(items))
    reader = WebVisionReader(tmp_path, workers=workers)
    recs = list(reader.iter_records("train"))
    assert reader.meta_files_parsed == 6 and reader.stats["title_not_string"] == 1
    assert [r.id for r in recs] == [f.split()[0] for f in files]  # list order kept
    want = [f"q{int(m[8:13])} row {m.split()[1]}" for m in metas]
    want[2] = "12345"
    assert [r.title for r in recs] == want
    assert recs[7].tags == ["t1"]
