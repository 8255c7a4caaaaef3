"""A run folder read back: its finished steps by stage, the steps a decision skipped, what its
steps decided on the holdout, and the clean labels where the data has them. The report, the
explorer and the benchmarks read run folders through this one module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from webly.app.stages import STAGES
from webly.core import decisions as decisions_of
from webly.core.errors import WeblyError
from webly.data.manifest import Manifest


class Run:
    """A run folder's steps by stage, in the order they finished."""

    def __init__(self, path: Path) -> None:
        self.path = path
        found = []  # (finished, record): a recipe's step.json, or a stage run by hand's summary
        for d in (p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []:
            if (d / "step.json").is_file():
                found.append(((d / "step.json").stat().st_mtime_ns,
                              json.loads((d / "step.json").read_text())))
                continue
            for st in STAGES:
                f = d / f"{st.name}.summary.json"
                if f.is_file():
                    found.append((f.stat().st_mtime_ns, {"id": d.name, "stage": st.name,
                                                         "summary": json.loads(f.read_text())}))
                    break
        if not found:
            raise WeblyError(f"{path}: no finished steps (no */step.json, no stage summaries): "
                             "not a run folder")
        ordered = [r for _, r in sorted(found, key=lambda x: x[0])]
        # a step a decision skipped left only its reason: shown with the decisions, read by none
        self.skipped = {r["id"]: r["skipped"] for r in ordered if r.get("skipped")}
        self.steps = {r["id"]: r for r in ordered if not r.get("skipped")}
        manifests = self.of("index")
        self.manifest = Manifest(path / manifests[0] / "manifest.parquet") if manifests else None

    def of(self, stage: str) -> list[str]:
        return [i for i, r in self.steps.items() if r["stage"] == stage]

    def truth(self) -> np.ndarray | None:
        """The true label of each manifest row (-1: none) when the data has a clean label file."""
        if self.manifest is None:
            return None
        root = Path(self.manifest.root)
        t = self.manifest.read(["id", "path"]).to_pydict()
        for f, key in ((root / "info/train_clean_filelist.txt", "path"),
                       (root / "truth/train_true_labels.txt", "id")):
            if f.is_file():
                clean = dict(line.split()[:2] for line in f.read_text().splitlines() if line)
                return np.array([int(clean.get(k, -1)) for k in t[key]])
        return None


def decided(run: Run) -> dict[str, Any]:
    """What a run decided on its holdout: each step's `decision.json` (gates, thresholds,
    ensemble weights: `webly.core.decisions`), and each skipped step and why. The one reader of
    these records: the report shows it, the benchmarks write it to benchmark.json."""
    found = decisions_of.read_all([run.path / s for s in run.steps])
    return {"decisions": {s: d.to_json() for s, d in found.items()},
            "skipped": dict(run.skipped)}


def decisions(run: Run) -> list[list[str]]:
    """(step, decision, why) rows of `decided`."""
    d = decided(run)
    rows = [[sid, f"{r['name']}: {r['choice']}" + ("" if r["changed"] else " (the default)"),
             r["why"]] for sid, r in d["decisions"].items()]
    return rows + [[sid, "skipped", why] for sid, why in d["skipped"].items()]


