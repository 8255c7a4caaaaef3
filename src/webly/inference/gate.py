"""`webly gate`: a decision a recipe makes on its holdout, written down with the scores behind it.

A recipe step with `when: "@GATE"` runs only when the gate passed (`when: "not @GATE"`: only when
it did not); `webly run` records a skipped step and why (`webly.pipeline`). Rules:

- `memorised`: did a training run (`--model`) start fitting its wrong labels? Its holdout top-1,
  recorded each epoch, peaked and then fell by at least `min_drop` (points) by the last epoch.
  A run still at its best at its end learns more from more epochs of the same labels; one that
  fell has memorised the noise, and cleaning its labels (a pseudo-label round) pays. The default
  0.5 points is about two paired standard errors of two epochs' top-1 on a 5,000-image holdout
  on which they disagree on 5% of the images.
  Measured too weak at CIFAR-10N's default (a one-unit cosine run ends near its peak even when
  it has memorised), so the CIFAR-10N recipe asks `beats` of a short continuation instead.
- `beats`: does a candidate beat the baseline on the holdout? `--preds BASELINE CANDIDATE`
  (holdout predictions) against `--labels` (a manifest or a 'name label' file): passes when the
  candidate's top-1 exceeds the baseline's by more than `margin` points and by more than
  `min_se` paired standard errors of the difference (computed from the images on which the two
  disagree): a gain the holdout cannot tell from its own noise does not pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from webly.config import check_choices, opt
from webly.errors import WeblyError
from webly.files import write_atomic


@dataclass
class GateConfig:
    rule: Literal["memorised", "beats"] = opt("memorised", "the decision (see webly gate)")
    min_drop: float = opt(0.5, "memorised: holdout top-1 points lost from the best epoch to the "
                               "last")
    margin: float = opt(0.0, "beats: holdout top-1 points the candidate must gain")
    min_se: float = opt(0.0, "beats: paired standard errors of the difference the gain must "
                             "exceed")

    def validate(self) -> None:
        check_choices(self, "gate")
        if self.min_drop < 0 or self.margin < 0 or self.min_se < 0:
            raise WeblyError("gate: min_drop, margin and min_se must not be negative")


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


def beats(preds: list[str], labels: str, margin: float, min_se: float = 0.0) -> dict[str, Any]:
    from webly.data.predictions import load_predictions
    from webly.inference.ensemble import fit_labels_of
    from webly.inference.evaluate import align, paired_se

    if len(preds) != 2:
        raise WeblyError("gate --rule beats needs --preds BASELINE CANDIDATE (two folders)")
    right = []
    for d in preds:
        p = load_predictions(d)
        y = align(p, fit_labels_of(labels, d))
        right.append(dict(zip(p.ids, p.top_i[:, 0] == y, strict=True)))
    if right[0].keys() != right[1].keys():
        raise WeblyError(f"gate: {preds[0]} and {preds[1]} predict different images")
    names = sorted(right[0])
    base, cand = (np.array([r[n] for n in names]) for r in right)
    scores = [round(100 * float(base.mean()), 3), round(100 * float(cand.mean()), 3)]
    gain = round(scores[1] - scores[0], 3)
    se = round(paired_se(base, cand), 3)
    need = max(margin, min_se * se)
    passed = gain > need
    why = (f"holdout top-1 {scores[1]:.2f} against the baseline's {scores[0]:.2f}: "
           f"{gain:+.2f} {'>' if passed else '<='} {need:.2f} points (margin {margin:g}, "
           f"{min_se:g} x paired SE {se:.2f})")
    return {"pass": passed, "why": why, "scores": dict(zip(preds, scores, strict=True)),
            "gain": gain, "se": se}


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
        res = beats(list(preds), labels, cfg.margin, cfg.min_se)
    res = {"rule": cfg.rule, **res}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "gate.json", json.dumps(res, indent=1) + "\n")
    print(f"[webly] gate ({cfg.rule}): {'pass' if res['pass'] else 'no'}: {res['why']}",
          flush=True)
    return res
