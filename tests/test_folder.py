import json

import pytest
from PIL import Image

from webly.core.errors import WeblyError
from webly.data.folder import FolderReader
from webly.data.index import IndexConfig, index_dataset
from webly.data.manifest import Manifest


def _tree(root):
    for cls in ("cat", "dog"):
        (root / cls / "sub").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8)).save(root / cls / f"{i}.jpg")
    Image.new("RGB", (8, 8)).save(root / "dog/sub/2.png")
    (root / "dog/notes.txt").write_text("not an image")
    return root


def test_folder_layout_with_jsonl_sidecar(tmp_path):
    root = _tree(tmp_path / "d")
    side = tmp_path / "text.jsonl"
    side.write_text(json.dumps({"path": "dog/1.jpg", "title": "good dog", "tags": "a|b"}) + "\n")
    summary = index_dataset(root, tmp_path / "m.parquet", IndexConfig(sidecar=str(side)))
    assert summary["layout"] == "folder" and summary["records"] == {"train": 5}
    recs = list(Manifest(tmp_path / "m.parquet").iter_records())
    assert [r.path for r in recs] == ["cat/0.jpg", "cat/1.jpg", "dog/0.jpg", "dog/1.jpg",
                                      "dog/sub/2.png"]
    assert [r.label for r in recs] == [0, 0, 1, 1, 1]
    assert recs[3].title == "good dog" and recs[3].tags == ["a", "b"]


def test_folder_layout_with_csv_sidecar(tmp_path):
    root = _tree(tmp_path / "d")
    side = tmp_path / "text.csv"
    side.write_text('path,title,description,tags\ncat/0.jpg,kitty,"a cat, sleeping","[""x"", '
                    '""y""]"\n')
    r = FolderReader(root, sidecar=side)
    rec = next(r.iter_records("train"))
    assert (rec.title, rec.description, rec.tags) == ("kitty", "a cat, sleeping", ["x", "y"])


def test_folder_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeblyError, match="no class folders"):
        FolderReader(tmp_path / "empty")
    root = _tree(tmp_path / "d")
    with pytest.raises(WeblyError, match="sidecar text file not found"):
        FolderReader(root, sidecar=tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "cat/0.jpg"}\n{nope\n')
    with pytest.raises(WeblyError, match="bad.jsonl:2: invalid JSON"):
        FolderReader(root, sidecar=bad)


def _classes(root, names, n, size=(8, 8)):
    for cls in names:
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", size).save(root / cls / f"{i}.png")


def test_holdout_is_stratified_fixed_and_disjoint(tmp_path):
    root = tmp_path / "d"
    _classes(root, ["a", "b"], 20)
    _classes(root, ["c"], 1)  # a one-image class keeps its image for training
    out = tmp_path / "m.parquet"
    summary = index_dataset(root, out, IndexConfig(holdout=0.25))
    assert summary["records"] == {"train": 31, "val": 10}
    recs = list(Manifest(out).iter_records())
    val = sorted(r.path for r in recs if r.split == "val")
    train = {r.path for r in recs if r.split == "train"}
    assert not train & set(val) and len(train | set(val)) == 41
    assert sum(p.startswith("a/") for p in val) == 5 and "c/0.png" in train
    index_dataset(root, tmp_path / "m2.parquet", IndexConfig(holdout=0.25))
    again = sorted(r.path for r in Manifest(tmp_path / "m2.parquet").iter_records()
                   if r.split == "val")
    assert again == val


def test_split_folders(tmp_path):
    root = tmp_path / "d"
    _classes(root / "train", ["a", "b"], 4)
    _classes(root / "test", ["b"], 2)
    out = tmp_path / "m.parquet"
    summary = index_dataset(root, out, IndexConfig(holdout=0.25))
    assert summary["records"] == {"train": 6, "val": 2, "test": 2}
    recs = list(Manifest(out).iter_records())
    assert {r.path for r in recs if r.split == "test"} == {"test/b/0.png", "test/b/1.png"}
    assert all(r.label == 1 for r in recs if r.split == "test")
    assert all(r.path.startswith("train/") for r in recs if r.split == "val")
    _classes(root / "val", ["a"], 1)  # a val folder is kept: nothing is held out
    summary = index_dataset(root, tmp_path / "m2.parquet", IndexConfig(holdout=0.25))
    assert summary["records"] == {"train": 8, "val": 1, "test": 2}


def test_split_folders_bad_inputs(tmp_path):
    root = tmp_path / "d"
    _classes(root / "train", ["a"], 2)
    _classes(root / "test", ["zebra"], 1)
    with pytest.raises(WeblyError, match=r"class folder\(s\) \['zebra'\] not in"):
        FolderReader(root)
    with pytest.raises(WeblyError, match="holdout must be within"):
        FolderReader(tmp_path / "d" / "train", holdout=1.0)
    with pytest.raises(WeblyError, match="index.holdout"):
        IndexConfig(holdout=-0.1).validate()
