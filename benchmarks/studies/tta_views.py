"""What test-time views buy a trained model, on the clean test split and on the noisy holdout.

`webly predict --tta` is an inference option, so it is measured on finished models rather than
by training again: every `webly run` folder named here (one with `ce/` and `manifest/`, as
`benchmarks/limit.py` and the dataset benchmarks leave them) is predicted with each view set on
`test` and `val` and scored. The holdout column is what a recipe would read to choose the views;
test is scored only. Finished predictions are kept in `RUN/tta_views/` and reused.

    python -m benchmarks.studies.tta_views runs/limit/quick_clean/webly ... \
        [--views center,flip,flip_shift] [--out benchmarks/results/limit_tta.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from webly.inference.evaluate import EvaluateConfig, evaluate
from webly.inference.predict import PredictConfig, predict


def score(run: Path, split: str, views: str, batch_size: int) -> float:
    """Top-1 (%) of RUN's CE model on one split with one view set."""
    out = run / "tta_views" / f"{split}_{views}"
    metrics = out / "eval" / "metrics.json"
    if not metrics.exists():
        manifest = run / "manifest" / "manifest.parquet"
        cfg = PredictConfig(split=split, tta=views, workers=0, batch_size=batch_size)
        predict(run / "ce", manifest, out, cfg)
        evaluate(out, manifest, out / "eval", cfg=EvaluateConfig())
    return round(100 * json.loads(metrics.read_text())["top1"], 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="webly run folders (with ce/, manifest/)")
    ap.add_argument("--views", default="center,flip,flip_shift")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--out", type=Path, help="write the rows here as JSON")
    args = ap.parse_args(argv)
    views = args.views.split(",")
    rows: list[dict[str, Any]] = []
    print("| run | views | test top-1 | holdout top-1 |\n|---|---|---:|---:|")
    for run in args.runs:
        for v in views:
            row = {"run": str(run), "views": v, "test_top1": score(run, "test", v, args.batch_size),
                   "holdout_top1": score(run, "val", v, args.batch_size)}
            rows.append(row)
            print(f"| {run} | {v} | {row['test_top1']:.2f} | {row['holdout_top1']:.2f} |",
                  flush=True)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "command": " ".join(sys.argv)}, indent=1)
                            + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
