"""The demo's report: `webly report` (webly.app.report) with the seed's ablation rows named.

It shows the seed's ablation on generated data (no pretraining vs LW-Set vs WT-Set pretraining,
then + pseudo-labels, + ensemble; top-1/top-5 plain and class-balanced on the clean validation
split) and everything `webly report` shows for any run: what pseudo-labelling changed (measured
against the generator's truth, which only the report reads), examples with their web text,
keywords and senses, the keyword audit, curves and per-class accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from webly.app.report import write_report as write_run_report

ROWS = {"score_scratch": "no pretraining", "score_lw": "LW-Set pretraining",
        "score_wt": "WT-Set pretraining", "score_wt_pl": "WT-Set + pseudo-labels",
        "score_ens": "+ ensemble of the above"}


def write_report(run: str | Path) -> dict[str, Any]:
    return write_run_report(run, ROWS, title="webly demo report")
