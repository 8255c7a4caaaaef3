"""Progress off a terminal: plain lines with done/total, rate and ETA, at an interval and at the
end."""

import re
import subprocess
import sys

import pytest

from webly.core.progress import duration, progress, progress_line

LINE = re.compile(r"^\[webly\] (.+): (\d+)/(\d+) (\w+) \([\d.]+%\), [\d.e+]+ \w+/s, ETA \S+$")


@pytest.fixture
def plain(monkeypatch):
    monkeypatch.setenv("WEBLY_PROGRESS", "auto")  # conftest silences progress for the other tests
    monkeypatch.setenv("WEBLY_PROGRESS_EVERY", "0")  # a line after every item
    monkeypatch.delenv("RANK", raising=False)


def test_non_tty_writes_plain_lines_with_rate_and_eta(plain, capsys):
    assert list(progress(range(4), desc="predict val", unit="batch")) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.splitlines()
    assert [LINE.match(x).group(2, 3) for x in lines[:-1]] == [("1", "4"), ("2", "4"), ("3", "4")]
    assert re.match(r"^\[webly\] predict val: 4/4 batch in \d+s", lines[-1])
    assert "\r" not in "".join(lines)  # no bar redraws in a log file


def test_interval_limits_the_lines(plain, monkeypatch, capsys):
    monkeypatch.setenv("WEBLY_PROGRESS_EVERY", "3600")
    list(progress(range(1000), desc="tag", unit="part"))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # after the first item (alive, a first ETA) and at the end
    assert LINE.match(lines[0]).group(2) == "1" and "1000/1000 part in" in lines[1]


def test_a_loop_left_early_says_how_far_it_got(plain, capsys):
    for i in progress(range(10), desc="epoch 1/2", total=10, unit="batch"):
        if i == 3:
            break
    assert "epoch 1/2: 3/10 batch in" in capsys.readouterr().err.splitlines()[-1]


def test_silenced_and_non_primary_ranks_print_nothing(plain, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    list(progress(range(3), desc="x"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WEBLY_PROGRESS", "0")
    list(progress(range(3), desc="x"))
    assert capsys.readouterr().err == ""


def test_line_and_duration_format():
    assert progress_line("tag", 50, 200, "part", 10.0) == \
        "[webly] tag: 50/200 part (25.0%), 5 part/s, ETA 30s"
    assert progress_line("index train", 300, None, "rec",
                         2.0) == "[webly] index train: 300 rec, 150 rec/s"
    assert [duration(s) for s in (7.4, 125, 3725)] == ["7s", "2m05s", "1h02m"]


@pytest.mark.slow  # subprocesses: in the whole suite, not the fast subset
def test_training_in_a_pipe_shows_progress(synth_manifest, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "WEBLY_PROGRESS": "auto", "WEBLY_PROGRESS_EVERY": "0",
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "webly.app.cli", "finetune", str(synth_manifest),
                        "-o",
                        str(tmp_path / "ft"), "--backbone", "test_resnet", "--img-size", "32",
                        "--batch-size", "16", "--accum-steps", "1", "--workers", "0", "--epochs",
                        "1",
                        "--no-tensorboard"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    epoch = [x for x in r.stderr.splitlines() if x.startswith("[webly] epoch 1/1:")]
    assert any(LINE.match(x) for x in epoch) and "batch in" in epoch[-1]
