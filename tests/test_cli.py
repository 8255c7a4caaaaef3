import json
import subprocess
import sys

import pytest

from webly.cli import STAGE_CONFIGS, build_parser, main


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for stage in ("demo", "synth", "index", "shard", "wordnet", "config"):
        assert stage in out


@pytest.mark.parametrize("stage", ["synth", "index", "shard", "demo", "wordnet"])
def test_each_stage_help_shows_defaults(stage, capsys):
    with pytest.raises(SystemExit) as e:
        main([stage, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    if stage in STAGE_CONFIGS:
        assert "(default:" in out


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "webly.cli", "wordnet", "--offline", "n02432511"],
                       capture_output=True, text=True, check=True)
    assert "mule deer" in json.loads(r.stdout)["n02432511"]


def test_demo_runs_data_stages_and_is_resumable(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    first = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert first["index"]["records"]["train"] == first["synth"]["train"]
    assert first["shard"]["images"] == first["synth"]["train"]
    assert main(["demo", "--out", str(out)]) == 0  # second run reuses every output
    second = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert "index" not in second and "shard" not in second


def test_parser_builds():
    assert build_parser().prog == "webly"
