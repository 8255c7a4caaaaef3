"""Fault class 5b, a writer killed mid-file: every stage output goes through one atomic write
(`webly.core.files`), so a SIGKILL while writing leaves the previous file byte for byte."""

import os
import signal
import subprocess
import sys

from webly.core.files import atomic_path, write_atomic

WRITE = ("from webly.core.files import write_atomic; "
         "write_atomic({path!r}, 'new contents\\n' * 1000)")


def _killed(args: list[str], fault: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WEBLY_FAULT": fault, "WEBLY_PROGRESS": "0"}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, timeout=300)


def test_a_whole_file_writer_killed_before_the_rename_leaves_the_old_file(tmp_path):
    target = tmp_path / "stats.json"
    write_atomic(target, "old\n")
    r = _killed(["-c", WRITE.format(path=str(target))], "atomic.rename:1")
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-1000:]
    assert target.read_text() == "old\n"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "stats.json"]
    assert leftovers and all(n.startswith(".stats.tmp") for n in leftovers)  # hidden, never read


def test_the_manifest_killed_mid_file_leaves_the_previous_manifest(synth_small, tmp_path):
    root = synth_small[0]
    out = tmp_path / "manifest.parquet"
    base = ["index", str(root), "-o", str(out), "--chunk-size", "8"]
    assert subprocess.run([sys.executable, "-m", "webly.app.cli", *base, "--splits", "val"],
                          capture_output=True, timeout=300).returncode == 0
    before = out.read_bytes()
    r = _killed(["-m", "webly.app.cli", *base], "manifest.rowgroup:2")  # 2 row groups written
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-1000:]
    assert out.read_bytes() == before


def test_a_failing_writer_leaves_no_temp_file_and_the_old_file(tmp_path):
    target = tmp_path / "keywords.npz"
    write_atomic(target, b"old")
    try:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(28, "No space left on device")
    except OSError:
        pass
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keywords.npz"]
