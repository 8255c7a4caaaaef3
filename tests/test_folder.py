import json

import pytest
from PIL import Image

from webly.data.folder import FolderReader
from webly.data.index import IndexConfig, index_dataset
from webly.data.manifest import Manifest
from webly.errors import WeblyError


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
