import argparse
import json
import subprocess
import sys

import pytest

from webly.app.cli import build_parser, main
from webly.app.stages import BY_NAME, STAGES


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
    if stage in BY_NAME:
        assert "(default:" in out


@pytest.mark.slow  # subprocesses: in the whole suite, not the fast subset
def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "webly.app.cli", "wordnet", "--offline", "n02432511"],
                       capture_output=True, text=True, check=True)
    assert "mule deer" in json.loads(r.stdout)["n02432511"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["demo", "--out", str(out)]) == 0
    printed = buf.getvalue()
    assert printed.startswith("webly demo: ") and "report: " in printed and "{" not in printed
    assert "WT-Set + pseudo-labels" in printed and "pseudo-labels: " in printed
    return out, json.loads((out / "demo.json").read_text())


@pytest.mark.slow
def test_demo_runs_every_stage_and_reports(demo_run):
    out, result = demo_run
    models = [r["model"] for r in result["ablation"]]
    assert models == ["no pretraining", "LW-Set pretraining", "WT-Set pretraining",
                      "WT-Set + pseudo-labels", "+ ensemble of the above"]
    assert all(r["top1"] > 0.3 for r in result["ablation"])  # chance is 1/24
    assert result["pseudo_labels"]["relabelled"] >= 1
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "Ablation" in page and (out / "report.md").is_file()
    assert (out / "submission/predictions.txt").read_text().count("\n") == 240
    import contextlib
    import io

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/step.json")}
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(["demo", "--out", str(out)]) == 0  # every step is reused
    steps = [line for line in err.getvalue().splitlines() if line.startswith("[")]
    assert steps and all(line.endswith(": done") for line in steps), steps
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/step.json")} == stamps


@pytest.mark.slow
def test_report_renders_in_chromium(demo_run, tmp_path):
    shot = _screenshot(demo_run[0] / "report.html", tmp_path / "shot.png")
    assert shot.stat().st_size > 20_000


def _screenshot(page, png):
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (CI installs Debian's chromium; .ci/run)")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync", f"--user-data-dir={png.parent / 'chrome'}",
                    f"--screenshot={png}", "--window-size=1100,2400", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    return png


def test_every_stage_is_a_subcommand_with_its_inputs_and_options():
    parser = build_parser("predict")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert [st.name for st in STAGES] == [n for n in sub.choices if n in BY_NAME]
    assert set(sub.choices) - set(BY_NAME) == {"demo", "run", "plan", "neighbours", "wordnet",
                                               "config", "report", "classify", "export"}
    for st in STAGES:
        dests = {a.dest for a in sub.choices[st.name]._actions}
        assert {i.name for i in st.inputs} | {"output", "config"} <= dests, st.name
    predict = {a.dest for a in sub.choices["predict"]._actions}
    assert {"batch_size", "tta", "top_k"} <= predict  # the selected stage's config flags


def test_renamed_flag_still_works_with_a_warning(capsys):
    args = build_parser("ensemble").parse_args(["ensemble", "a", "b", "-o", "e", "--weights",
                                                "2,1"])
    assert args.model_weights == "2,1"
    assert "--weights is now --model-weights" in capsys.readouterr().err
