"""Fault class 5, disk full / read-only output during a checkpoint or a tag write: a one-line
error, and the previous good outputs intact (see also test_train's checkpoint case)."""

import errno
import json

import pytest

from webly.app.cli import main
from webly.app.demo.synth import SynthConfig, generate
from webly.data.index import IndexConfig, index_dataset


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    generate(d / "wv", SynthConfig(families=2, per_family=2, max_per_class=20, min_per_class=10,
                                   images=False))
    index_dataset(d / "wv", d / "m.parquet", IndexConfig())
    return d / "m.parquet"


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("code,where", [(errno.ENOSPC, "scipy.sparse.save_npz"), (errno.EROFS,
                                                                                  "os.replace"),
                                        (errno.ENOSPC, "webly.labels.tagging.write_atomic")])
def test_tag_write_fails_cleanly_and_keeps_the_previous_tags(manifest, tmp_path, monkeypatch,
                                                             capsys, code, where):
    out = tmp_path / "tags"
    assert main(["tag", str(manifest), "-o", str(out), "--min-count", "1", "--workers", "1"]) == 0
    before = _snapshot(out)
    capsys.readouterr()

    def fail(*a, **k):
        raise OSError(code, errno.errorcode[code], str(out / "keywords.npz"))

    monkeypatch.setattr(where, fail)
    assert main(["tag", "merge", "-o", str(out), "--min-count", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outputs written before this are intact" in err[0]
    monkeypatch.undo()
    after = _snapshot(out)
    for name in ("vocab.tsv", "keywords.npz", "stats.json"):
        assert after[name] == before[name]  # never a half-written or mixed file
    assert json.loads(after["stats.json"])["filters"]["min_count"] == 1
