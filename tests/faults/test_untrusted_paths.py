"""Fault class 7, untrusted files: list, metadata and shard paths never escape the dataset root;
pickled checkpoints that would run code are refused (see also test_train)."""

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from webly.core.errors import WeblyError
from webly.data.folder import FolderReader
from webly.data.shards import read_shard_records, shard_pipeline
from webly.data.webvision import WebVisionReader


def _tree(root: Path, train_line: str, meta_line: str = "google/q00001.json 1") -> Path:
    info = root / "info"
    info.mkdir(parents=True)
    (info / "synsets.txt").write_text("n02130308 cheetah\n")
    (info / "train_filelist_all.txt").write_text(f"{train_line}\n")
    (info / "train_meta_list_all.txt").write_text(f"{meta_line}\n")
    (root / "meta/google").mkdir(parents=True)
    (root / "meta/google/q00001.json").write_text(json.dumps([{"title": "cheetah"}]))
    return root


@pytest.mark.parametrize("line", ["../../etc/passwd 0", "/etc/passwd 0", "google/../../x.jpg 0",
                                  "C:/windows/x.jpg 0"])
def test_list_paths_outside_the_root_are_errors_naming_the_line(tmp_path, line):
    root = _tree(tmp_path / "wv", line)
    with pytest.raises(WeblyError,
                       match=r"train_filelist_all.txt:1: path .* escapes the dataset root"):
        list(WebVisionReader(root, skip_bad=True).iter_records("train"))


def test_metadata_path_outside_the_root_is_an_error(tmp_path):
    root = _tree(tmp_path / "wv", "google/q00001/000001.jpg 0", "../../secret.json 1")
    with pytest.raises(WeblyError, match=r"train_meta_list_all.txt:1: .* escapes the dataset root"):
        list(WebVisionReader(root, skip_bad=True).iter_records("train"))


def test_symlink_out_of_the_root_is_an_error(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x")
    root = _tree(tmp_path / "wv", "google/q00001/000001.jpg 0")
    (root / "google/q00001").mkdir(parents=True)
    os.symlink(outside / "secret.jpg", root / "google/q00001/000001.jpg")
    with pytest.raises(WeblyError,
                       match=r"train_filelist_all.txt:1: .* symlink .* outside the dataset root"):
        list(WebVisionReader(root).iter_records("train"))
    # a symlinked folder, too
    (root / "info/train_filelist_all.txt").write_text("google/q00002/secret.jpg 0\n")
    os.symlink(outside, root / "google/q00002")
    with pytest.raises(WeblyError, match="outside the dataset root"):
        list(WebVisionReader(root).iter_records("train"))
    # inside the root, a symlink is fine
    os.symlink(root / "meta", root / "google/q00003")
    (root / "info/train_filelist_all.txt").write_text("google/q00003/google/q00001.json 0\n")
    assert len(list(WebVisionReader(root).iter_records("train"))) == 1


def test_folder_reader_refuses_symlinked_files_leaving_the_root(tmp_path):
    (tmp_path / "outside.jpg").write_bytes(b"x")
    (tmp_path / "ds/n02130308").mkdir(parents=True)
    os.symlink(tmp_path / "outside.jpg", tmp_path / "ds/n02130308/a.jpg")
    with pytest.raises(WeblyError, match="outside the dataset root"):
        list(FolderReader(tmp_path / "ds").iter_records("train"))


def _evil_shard(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in (("../../evil.json", b'{"row": 0}'), ("../../evil.jpg", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_shard_member_names_cannot_escape(tmp_path):
    shard = _evil_shard(tmp_path / "train-000000.tar")
    with pytest.raises(WeblyError, match="escapes the dataset root"):
        list(read_shard_records(shard))
    with pytest.raises(WeblyError, match="escapes the dataset root"):
        list(shard_pipeline([str(shard)], shuffle_buffer=0))
