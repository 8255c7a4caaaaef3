"""Would another rule for the recipe's last decision have scored better on test? (issue 27)

Decision 3 of the CIFAR-10N recipe (`test_recipe`) averages the models that ran with weights
fitted on the noisy holdout by top-1, kept only when they beat the plain average there by more
than `fit_min_se` paired standard errors. This script re-reads finished run folders (no
training: every member's holdout and test predictions are on disk) and scores on test what the
other obvious rules would have answered:
    rule     the recipe's (recomputed here; equals the run's row 5)
    plain    always the plain average of the members
    fitted   always the holdout's best grid weights (fit_min_se 0)
    best     the one member with the best holdout top-1
Analysis only: no recipe reads this. A rule chosen after looking at these runs would be tuned to
them; the table says how the shipped rule, set before most of them, compares.

    python -m benchmarks.studies.ensemble_rules runs/c16-quick-worst runs/c16-quick-asym40 ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RULES = ("rule", "plain", "fitted", "best")


def scores(run: Path) -> dict:
    """The members' holdout and test top-1 and each rule's test top-1, for one run folder."""
    import yaml

    from webly.data.manifest import Manifest
    from webly.data.predictions import load_predictions
    from webly.inference.ensemble import average_topk, fit_top1, fitted_or_plain

    step = run / "test_recipe"
    if not (step / "ensemble.summary.json").is_file():
        raise SystemExit(f"{run}: no test_recipe/ensemble.summary.json (a finished benchmark run "
                         "folder of benchmarks/datasets/cifar10n.py?)")
    summary = json.loads((step / "ensemble.summary.json").read_text())
    config = yaml.safe_load((step / "ensemble.config.yaml").read_text())["ensemble"]
    min_se = float(config["fit_min_se"])
    names = [Path(m).name.removeprefix("test_") for m in summary["members"]]
    val = [load_predictions(run / f"val_{n}") for n in names]
    test = [load_predictions(run / f"test_{n}") for n in names]
    label = np.asarray(Manifest(run / "manifest/manifest.parquet").read(["label"])["label"]
                       .fill_null(-1).to_numpy())
    yv, yt = label[val[0].rows], label[test[0].rows]  # the noisy holdout; the clean test set

    def top1(preds: list, w: np.ndarray, y: np.ndarray) -> float:
        return round(100 * float((average_topk(preds, w, 1)[0][:, 0] == y).mean()), 2)

    one = np.eye(len(names))
    held = [top1([v], np.ones(1), yv) for v in val]
    fitted, _ = fit_top1(val, yv)
    weights = {"rule": fitted_or_plain(val, yv, fitted, min_se)[0],
               "plain": np.full(len(names), 1 / len(names)), "fitted": fitted,
               "best": one[int(np.argmax(held))]}
    return {"run": str(run), "members": names, "holdout": held,
            "test": [top1([t], np.ones(1), yt) for t in test], "fit_min_se": min_se,
            "rules": {r: top1(test, w, yt) for r, w in weights.items()},
            **_recorded(step, summary)}


def _recorded(step: Path, summary: dict) -> dict:
    """What the run chose ("plain" or "fitted") and why: its decision.json (older runs: the
    summary's `fitted` line)."""
    from webly.core import decisions

    d = decisions.read(step)
    if d is not None:
        return {"recorded_choice": d.choice, "recorded_rule": d.why}
    why = summary.get("fitted") or ""
    return {"recorded_choice": "plain" if "the plain average" in why else "fitted",
            "recorded_rule": why}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="CIFAR-10N benchmark run folders")
    ap.add_argument("--json", type=Path, help="also write the scores here")
    args = ap.parse_args(argv)
    res = [scores(r) for r in args.runs]
    print(f"{'run':28s} {'members (holdout / test)':52s} " + " ".join(f"{r:>7s}" for r in RULES))
    for s in res:
        members = ", ".join(f"{n} {h:.1f}/{t:.1f}"
                            for n, h, t in zip(s["members"], s["holdout"], s["test"], strict=True))
        print(f"{Path(s['run']).name:28s} {members:52s} "
              + " ".join(f"{s['rules'][r]:7.2f}" for r in RULES))
    mean = {r: float(np.mean([s["rules"][r] - s["rules"]["rule"] for s in res])) for r in RULES}
    print(f"{'mean difference to rule':81s} " + " ".join(f"{mean[r]:+7.2f}" for r in RULES))
    if args.json:
        cmd = " ".join(["python -m benchmarks.studies.ensemble_rules", *sys.argv[1:]])
        args.json.write_text(json.dumps({"command": cmd, "runs": res,
                                         "mean_difference_to_rule": mean}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
