"""`webly report RUN` on a small run folder: every section that the run has data for is there,
the clean labels (a generated set's truth) feed the measurements, and a folder that is no run is
a one-line error."""

import json

import pytest
from smallrun import first_steps

import webly.app.pipeline as pipeline
from webly.app.cli import main
from webly.app.report import write_report

TRAIN = dict(backbone="test_resnet", img_size=32, epochs=1, batch_size=16, accum_steps=1, workers=0,
             tensorboard=False)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    pipeline.run({"steps": [
        *first_steps(per_family=2, max_per_class=12, min_per_class=8),
        {"id": "ft", "stage": "finetune", "manifest": "@manifest", **TRAIN},
        {"id": "train_ft", "stage": "predict", "model": "@ft", "manifest": "@manifest",
         "split": "train", "workers": 0},
        {"id": "pl", "stage": "pseudo-label", "manifest": "@manifest", "preds": "@train_ft",
         "text": "@tags", "text_folds": 2},
        {"id": "val", "stage": "predict", "model": "@ft", "manifest": "@manifest", "split": "val",
         "workers": 0},
        {"id": "score", "stage": "evaluate", "preds": "@val", "manifest": "@manifest"},
    ]}, out)
    return out


@pytest.mark.slow
def test_report_shows_what_the_run_has(small_run, capsys):
    assert main(["report", str(small_run)]) == 0
    page = (small_run / "report.html").read_text()
    for section in ("Ablation", "Pseudo-labels", "Keyword audit", "Examples", "given label",
                    "true label", "data:image/jpeg;base64,"):
        assert section in page, section
    md = (small_run / "report.md").read_text()
    assert "| score |" in md and "Keyword audit" in md
    result = write_report(small_run)
    assert result["ablation"][0]["model"] == "score"
    pl = result["pseudo_labels"]
    assert pl["step"] == "pl" and "wrong_labels_before" in pl  # truth/ of the generated set
    assert 0 <= result["keyword_audit"]["balanced_top1"] <= 100
    scores = small_run / "pl/scores.parquet"
    import pyarrow.parquet as pq

    t = pq.read_table(scores).to_pydict()
    assert set(t) == {"row", "id", "label", "p_image", "p_text", "p_label", "predicted",
                      "p_predicted"}
    assert json.loads((small_run / "pl/step.json").read_text())["summary"]["text"]["folds"] == 2
    # the label-issue explorer: every labelled training image ranked, least likely label first
    li = result["label_issues"]
    assert li["step"] == "pl" and li["has_text"] and 0 <= li["ap"] <= 1
    import csv

    with open(small_run / "label_issues.csv", newline="") as f:
        ranking = list(csv.reader(f))
    assert ranking[0][:7] == ["rank", "row", "id", "path", "given", "predicted", "p_label"]
    p = [float(r[6]) for r in ranking[1:]]
    assert len(p) == li["images"] == sum(x >= 0 for x in t["label"]) and p == sorted(p)
    assert "id='label-issues'" in page and "issues-data" in page


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no finished steps" in err and "Traceback" not in err


def test_average_precision_by_hand():
    import numpy as np

    from webly.app.explorer import average_precision

    # ranked: wrong, right, wrong -> precision 1 at the first hit, 2/3 at the second
    ap = average_precision(np.array([0.9, 0.5, 0.4]), np.array([True, False, True]))
    assert ap == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.1, 0.2]), np.array([False, True])) == 1.0


def _big_run(tmp_path, n=20_000):
    """A run folder of `n` training images (a handful of real JPEGs) with pseudo-label scores,
    as the explorer finds it: the manifest, a tag-less pseudo-label step, clean labels."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from webly.data.manifest import write_manifest
    from webly.data.records import Record

    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    for c in range(5):
        Image.new("RGB", (24, 24), (50 * c, 255 - 50 * c, 90)).save(data / f"img/{c}.jpg")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, n)
    recs = [Record(id=f"i{i}", path=f"img/{labels[i]}.jpg", split="train", label=int(labels[i]),
                   title=f"photo {i} <b>&</b>") for i in range(n)]
    write_manifest(data / "manifest.parquet", recs,
                   {"root": str(data), "classes": [f"n{c}" for c in range(5)],
                    "class_names": [f"class {c}" for c in range(5)]})
    true = np.where(rng.random(n) < 0.3, (labels + 1) % 5, labels)
    (data / "truth").mkdir()
    (data / "truth/train_true_labels.txt").write_text(
        "".join(f"i{i} {true[i]}\n" for i in range(n)))
    run = tmp_path / "run"
    for sid, stage in (("manifest", "index"), ("pl", "pseudo-label")):
        (run / sid).mkdir(parents=True)
        (run / sid / "step.json").write_text(json.dumps({"id": sid, "stage": stage}))
    (data / "manifest.parquet").rename(run / "manifest/manifest.parquet")
    p_label = np.where(true != labels, rng.uniform(0, 0.6, n), rng.uniform(0.3, 1, n))
    pq.write_table(pa.table({"row": np.arange(n), "id": [f"i{i}" for i in range(n)],
                             "label": labels, "p_image": p_label,
                             "p_text": np.full(n, np.nan), "p_label": p_label,
                             "predicted": true, "p_predicted": rng.uniform(0.3, 1, n)}),
                   run / "pl/scores.parquet")
    pq.write_table(pa.table({"row": np.arange(n), "label": labels, "original_label": labels,
                             "source": ["original"] * n}), run / "pl/labels.parquet")
    return run, n


def test_explorer_pages_twenty_thousand_ranked_images(tmp_path):
    run, n = _big_run(tmp_path)
    result = write_report(run)
    li = result["label_issues"]
    assert li["images"] == n and not li["has_text"] and 0.5 < li["ap"] <= 1
    page = (run / "report.html").read_text()
    data = page[page.index("id='issues-data'>") + 17:page.index("</script>", page.index(
        "id='issues-data'"))]
    items = json.loads(data)["items"]
    assert len(items) == n and items[0][6] <= items[1][6] <= items[-1][6]
    assert "<" not in data  # web text is data for textContent: it cannot end the script
    assert (run / items[0][1]).is_file()  # thumbnails link to the image files


@pytest.mark.slow
def test_explorer_renders_in_chromium(tmp_path):
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (CI installs Debian's chromium; .ci/run)")
    run, n = _big_run(tmp_path)
    write_report(run)
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}", "--allow-file-access-from-files"]
    dom = subprocess.run(args + ["--dump-dom", (run / "report.html").as_uri()], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    assert f"1-50 of {n}" in dom  # the script ran: the first page of the ranking
    body = dom[dom.index("id=\"issues-body\""):]
    assert body[:body.index("</tbody>")].count("<tr>") == 50
    shot = tmp_path / "shot.png"
    subprocess.run(args + [f"--screenshot={shot}", "--window-size=1100,4200",
                           "--virtual-time-budget=5000", (run / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000


def test_warnings_say_near_chance_most_dropped_and_over_budget(tmp_path):
    """A model near chance, a pseudo-label step that kept under half the images and a run over
    its budget each get a plain warning; a healthy run gets none."""
    from types import SimpleNamespace

    from webly.app.report import budget, budget_section, warnings, warnings_section

    (tmp_path / "own_plan.json").write_text(json.dumps(
        {"plan": {"budget_s": 300, "estimated_s": 290, "spent_s": 40.0}}))
    steps = {"ce": {"stage": "finetune", "seconds": 200.0},
             "pl": {"stage": "pseudo-label", "seconds": 5.0},
             "final": {"stage": "finetune", "seconds": 120.0},
             "manifest": {"stage": "index", "seconds": 9.0}}  # counted in the plan's spent_s
    run = SimpleNamespace(path=tmp_path, steps=steps, manifest=SimpleNamespace(num_classes=10))
    b = budget(run)
    assert b["spent_s"] == 365.0 and list(b["steps_s"]) == ["ce", "pl", "final"]
    ctx = {"ablation": [{"model": "final", "top1": 0.109}, {"model": "ce", "top1": 0.38}],
           "pseudo_labels": [{"step": "pl", "train_images": 3380, "kept": 340,
                              "kept_share": 0.1006}], "budget": b}
    said = warnings(run, ctx)
    assert len(said) == 3
    assert said[0].startswith("final: top-1 10.9% is near chance (10.0% for 10 classes)")
    assert said[1].startswith("pl kept 340 of 3380 training images (10%)")
    assert said[2] == "the run took 6m05s of a 5m00s budget"
    page = warnings_section(run, {"warnings": said}) + budget_section(run, ctx)
    assert "<h2>Warnings</h2>" in page and "Time against the budget" in page
    ctx.update(ablation=[{"model": "ce", "top1": 0.38}], budget={**b, "spent_s": 310.0},
               pseudo_labels=[{"step": "pl", "train_images": 3380, "kept": 3000,
                               "kept_share": 0.89}])
    assert warnings(run, ctx) == [] and warnings_section(run, {"warnings": []}) == ""


def test_data_without_text_gets_no_text_columns(tmp_path):
    """Class folders without titles: the examples show images and labels, no empty title or
    keyword columns; the results are "Results", not the seed's text ablation."""
    from ownfolders import make_folders

    from webly.app.report import examples_section, results_section
    from webly.app.runs import Run

    data = make_folders(tmp_path / "photos", per_class=4, titles=False, classes=3)
    pipeline.run({"steps": [{"id": "manifest", "stage": "index", "root": str(data),
                             "holdout": 0.25}]}, tmp_path / "run")
    run = Run(tmp_path / "run")
    page = examples_section(run, {"truth": None})
    assert "Examples: training images and their labels" in page
    assert "title / tags" not in page and "keywords" not in page and "given label" in page
    assert results_section(run, {"ablation": []}).startswith("<h2>Results</h2>")
