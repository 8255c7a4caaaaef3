"""`webly gate`: a decision a recipe makes on its holdout, written down with the scores behind it.

A recipe step with `when: "@GATE"` runs only when the gate passed (its decision moved off the
default; `when: "not @GATE"`: only when it did not); `webly run` records a skipped step and why
(`webly.app.pipeline`). The gate writes a `webly.core.decisions.Decision` to `decision.json`, as
every deciding step does. Rules (`RULES`: a new rule is one function here and its name in a
recipe's `rule:`):

- `memorised`: did a training run (`--model`) start fitting its wrong labels? Its holdout top-1,
  recorded each epoch, peaked and then fell by at least `min_drop` (points) by the last epoch.
  A run still at its best at its end learns more from more epochs of the same labels; one that
  fell has memorised the noise, and cleaning its labels (a pseudo-label round) pays. The default
  0.5 points is about two paired standard errors of two epochs' top-1 on a 5,000-image holdout
  on which they disagree on 5% of the images. A cosine run ends near its peak even when it has
  memorised, so a recipe with such a schedule asks `beats` of a short continuation instead.
- `beats`: does a candidate beat the baseline on the holdout? `--preds BASELINE CANDIDATE`
  (holdout predictions) against `--labels` (a manifest or a 'name label' file): the rule of
  `webly.core.decisions.beats` with `margin` and `min_se`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from webly.core import decisions
from webly.core.config import opt
from webly.core.decisions import Decision
from webly.core.errors import WeblyError
from webly.data.predictions import load_predictions
from webly.inference.ensemble import fit_labels_of
from webly.inference.evaluate import align


@dataclass
class GateConfig:
    rule: str = opt("memorised", "the decision: memorised or beats (see webly gate)")
    min_drop: float = opt(0.5, "memorised: holdout top-1 points lost from the best epoch to the "
                               "last")
    margin: float = opt(0.0, "beats: holdout top-1 points the candidate must gain")
    min_se: float = opt(0.0, "beats: paired standard errors of the difference the gain must "
                             "exceed")

    def validate(self) -> None:
        if self.rule not in RULES:
            raise WeblyError(f"gate: rule {self.rule!r} is not one of {', '.join(RULES)}")
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


def memorised(curve: list[float], min_drop: float) -> Decision:
    """Passes (choice "memorised") when the curve fell `min_drop` points from its peak."""
    best = max(range(len(curve)), key=lambda i: (curve[i], -i))
    drop = round(curve[best] - curve[-1], 3)
    passed = drop >= min_drop
    why = (f"holdout top-1 peaked at {curve[best]:.2f} (epoch {best + 1} of {len(curve)}) and "
           f"ended at {curve[-1]:.2f}: {'fell' if passed else 'a drop of'} {drop:.2f} "
           f"{'>=' if passed else '<'} {min_drop:g} points")
    return Decision("gate", "memorised", "learning", "memorised" if passed else "learning",
                    {"best epoch": curve[best], "last epoch": curve[-1]}, drop, 0.0, min_drop,
                    why, detail={"curve": curve, "best_epoch": best + 1})


def beats(preds: list[str], labels: str, margin: float, min_se: float = 0.0) -> Decision:
    """Passes (choice "candidate") when the candidate's holdout top-1 beats the baseline's."""
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
    return decisions.beats({"baseline": base, "candidate": cand}, "baseline", name="gate",
                           margin=margin, min_se=min_se,
                           detail={"baseline": preds[0], "candidate": preds[1]})


def _memorised(cfg: GateConfig, model: str | None, preds: list[str] | None,
               labels: str | None) -> Decision:
    if not model:
        raise WeblyError("gate --rule memorised needs --model (a training run folder)")
    return memorised(holdout_curve(Path(model)), cfg.min_drop)


def _beats(cfg: GateConfig, model: str | None, preds: list[str] | None,
           labels: str | None) -> Decision:
    if not (preds and labels):
        raise WeblyError("gate --rule beats needs --preds BASELINE CANDIDATE and --labels")
    return beats(list(preds), labels, cfg.margin, cfg.min_se)


# rule name -> (config, --model, --preds, --labels) -> the decision
RULES: dict[str, Callable[..., Decision]] = {"memorised": _memorised, "beats": _beats}


def run_gate(*, cfg: GateConfig, out: Path, model: str | None = None,
             preds: list[str] | None = None, labels: str | None = None) -> dict:
    """The `gate` stage: `decision.json` in `out`; passed = the choice is not the default."""
    cfg.validate()
    d = RULES[cfg.rule](cfg, model, list(preds) if preds else None, labels)
    decisions.write(out, d)
    print(f"[webly] gate ({d.rule}): {'pass' if d.changed else 'no'}: {d.why}", flush=True)
    return d.to_json()
