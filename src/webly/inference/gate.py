"""`webly gate`: a decision a recipe makes on its holdout, written down with the scores behind it.

A recipe step with `when: "@GATE"` runs only when the gate passed (`when: "not @GATE"`: only when
it did not); `webly run` records a skipped step and why (`webly.pipeline`). Rules:

- `memorised`: did a training run (`--model`) start fitting its wrong labels? Its holdout top-1,
  recorded each epoch, peaked and then fell by at least `min_drop` (points) by the last epoch.
  A run still at its best at its end learns more from more epochs of the same labels; one that
  fell has memorised the noise, and cleaning its labels (a pseudo-label round) pays. The default
  0.5 points is about two paired standard errors of two epochs' top-1 on a 5,000-image holdout
  on which they disagree on 5% of the images.
- `beats`: does a candidate beat the baseline on the holdout? `--preds BASELINE CANDIDATE`
  (holdout predictions) against `--labels` (a manifest or a 'name label' file): passes when the
  candidate's top-1 exceeds the baseline's by more than `margin` (points).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from webly.config import check_choices, opt
from webly.errors import WeblyError
from webly.files import write_atomic


@dataclass
class GateConfig:
    rule: Literal["memorised", "beats"] = opt("memorised", "the decision (see webly gate)")
    min_drop: float = opt(0.5, "memorised: holdout top-1 points lost from the best epoch to the "
                               "last")
    margin: float = opt(0.0, "beats: holdout top-1 points the candidate must gain")

    def validate(self) -> None:
        check_choices(self, "gate")
        if self.min_drop < 0 or self.margin < 0:
            raise WeblyError("gate: min_drop and margin must not be negative")


def holdout_curve(run: Path) -> list[float]:
    """A training run's holdout top-1 (%) per epoch, from its metrics.jsonl."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise WeblyError(f"{run}: no metrics.jsonl (expected a training run folder)")
    curve = []
    for line in path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if "val_top1" in row:
            curve.append(round(100 * float(row["val_top1"]), 3))
    if not curve:
        raise WeblyError(f"{run}: no holdout score was recorded (the data need a val split)")
    return curve


def memorised(curve: list[float], min_drop: float) -> dict[str, Any]:
    best = max(range(len(curve)), key=lambda i: (curve[i], -i))
    drop = round(curve[best] - curve[-1], 3)
    passed = drop >= min_drop
    why = (f"holdout top-1 peaked at {curve[best]:.2f} (epoch {best + 1} of {len(curve)}) and "
           f"ended at {curve[-1]:.2f}: {'fell' if passed else 'a drop of'} {drop:.2f} "
           f"{'>=' if passed else '<'} {min_drop:g} points")
    return {"pass": passed, "why": why, "curve": curve, "best_epoch": best + 1, "drop": drop}


def beats(preds: list[str], labels: str, margin: float) -> dict[str, Any]:
    from webly.data.predictions import load_predictions
    from webly.inference.ensemble import fit_labels_of
    from webly.inference.evaluate import align

    if len(preds) != 2:
        raise WeblyError("gate --rule beats needs --preds BASELINE CANDIDATE (two folders)")
    scores = []
    for d in preds:
        p = load_predictions(d)
        y = align(p, fit_labels_of(labels, d))
        scores.append(round(100 * float((p.top_i[:, 0] == y).mean()), 3))
    gain = round(scores[1] - scores[0], 3)
    passed = gain > margin
    why = (f"holdout top-1 {scores[1]:.2f} against the baseline's {scores[0]:.2f}: "
           f"{gain:+.2f} {'>' if passed else '<='} {margin:g} points")
    return {"pass": passed, "why": why, "scores": dict(zip(preds, scores, strict=True))}


def run_gate(*, cfg: GateConfig, out: Path, model: str | None = None,
             preds: list[str] | None = None, labels: str | None = None) -> dict[str, Any]:
    """The `gate` stage: gate.json in `out` ({"pass", "why", ...})."""
    cfg.validate()
    if cfg.rule == "memorised":
        if not model:
            raise WeblyError("gate --rule memorised needs --model (a training run folder)")
        res = memorised(holdout_curve(Path(model)), cfg.min_drop)
    else:
        if not (preds and labels):
            raise WeblyError("gate --rule beats needs --preds BASELINE CANDIDATE and --labels")
        res = beats(list(preds), labels, cfg.margin)
    res = {"rule": cfg.rule, **res}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "gate.json", json.dumps(res, indent=1) + "\n")
    print(f"[webly] gate ({cfg.rule}): {'pass' if res['pass'] else 'no'}: {res['why']}",
          flush=True)
    return res
