"""Decisions a recipe makes on its holdout: one rule, one record, one file per step.

A recipe adapts where its holdout says so: a gate lets a pseudo-label round run or not, a
threshold probe picks pseudo-label's threshold, an ensemble keeps fitted weights or the plain
average. Each is a `Decision`: the candidates with their holdout top-1, the default (what happens
unless the holdout says otherwise), the choice, the gain of the best challenger over the default,
its paired standard error, the gain it needed, why, and the multiply-adds the decision itself
spent (a probe's training; the predictions it reads are their own steps' compute).

The rule (`beats`): the best challenger replaces the default only when its gain exceeds both
`margin` points and `min_se` paired standard errors. The best of several candidates scored on the
same holdout flatters itself, and two models agree on most images, so only the images on which
they disagree carry the difference's noise (`paired_se`).

A step that decides writes its record to `decision.json` in its output folder (`write`); the
pipeline (gates), the report and the benchmarks read it back (`read`) and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from webly.core.errors import WeblyError
from webly.core.files import write_atomic

FILE = "decision.json"


@dataclass
class Decision:
    """What was decided on the holdout, and the evidence."""

    name: str  # what is decided: "gate", "threshold", "ensemble weights", ...
    rule: str  # how: "beats", "memorised", "nll", ...
    default: str  # the candidate that stands unless the holdout says otherwise
    choice: str
    scores: dict[str, float]  # candidate -> holdout score (top-1, %)
    gain: float = 0.0  # best challenger minus the default (points)
    se: float = 0.0  # paired standard error of that gain (points)
    need: float = 0.0  # the gain the challenger had to exceed
    why: str = ""
    macs: int = 0  # multiply-adds the decision spent itself (not the steps it reads)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """The holdout moved the recipe off its default (a gate: passed)."""
        return self.choice != self.default

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


def paired_se(base: np.ndarray, cand: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Standard error (points) of the top-1 difference of two models scored on the same images
    (with `weights`, summing to 1: of the weighted mean, e.g. balanced top-1's 1 / (C x n_c)).

    Pairing matters: two models agree on most images, so only those where one is right and the
    other wrong carry the difference's noise."""
    d = np.asarray(cand, np.float64) - np.asarray(base, np.float64)
    if len(d) < 2:
        return float("inf")
    if weights is None:
        return float(100 * d.std(ddof=1) / np.sqrt(len(d)))
    w = np.asarray(weights, np.float64)
    mean = float(w @ d)
    return float(100 * np.sqrt(np.sum(w**2 * (d - mean) ** 2) * len(d) / (len(d) - 1)))


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Each image's weight in balanced top-1 (the mean of the per-class top-1s): 1 / (C x n_c)."""
    labels = np.asarray(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / (len(classes) * counts[inverse])


def beats(right: dict[str, np.ndarray], default: str, *, name: str, margin: float = 0.0,
          min_se: float = 0.0, macs: int = 0, detail: dict[str, Any] | None = None,
          weights: np.ndarray | None = None) -> Decision:
    """The rule. `right`: candidate -> which holdout images it gets right (the same images for
    all, in preference order: among equal scores the earlier challenger is tried); `weights`
    (summing to 1, e.g. `class_weights`): each image's share of the score, uniform by default.
    The best challenger replaces `default` only when its gain exceeds `margin` points and
    `min_se` paired standard errors."""
    if default not in right or len(right) < 2:
        raise WeblyError(f"{name}: a decision needs the default {default!r} and a challenger")

    def mean(r: np.ndarray) -> float:
        r = np.asarray(r, np.float64)
        return float(np.mean(r)) if weights is None else float(weights @ r)

    scores = {c: round(100 * mean(r), 3) for c, r in right.items()}
    others = [c for c in right if c != default]
    best = max(others, key=lambda c: (100 * mean(right[c]), -others.index(c)))
    gain = 100 * (mean(right[best]) - mean(right[default]))
    se = paired_se(right[default], right[best], weights)
    need = max(margin, min_se * se)
    won = gain > need
    if gain <= 0:
        why = (f"the default {default} scored best ({scores[default]:.2f}; the best other, "
               f"{best}, {scores[best]:.2f})")
    else:
        why = (f"{best} {scores[best]:.2f} against the default {default} {scores[default]:.2f}: "
               f"{gain:+.2f} {'>' if won else '<='} {need:.2f} points (margin {margin:g}, "
               f"{min_se:g} x paired SE {se:.2f})")
    return Decision(name, "beats", default, best if won else default, scores, round(gain, 3),
                    round(se, 3), round(need, 3), why, int(macs), dict(detail or {}))


def write(out: str | Path, decision: Decision) -> None:
    """The step's record: `out/decision.json`."""
    Path(out).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(out) / FILE, json.dumps(decision.to_json(), indent=1) + "\n")


def read(folder: str | Path) -> Decision | None:
    """The decision a step folder recorded, or None where it decided nothing."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    raw.pop("changed", None)
    return Decision(**raw)


def read_all(folders: Sequence[str | Path]) -> dict[str, Decision]:
    """step name -> its decision, for the folders that recorded one."""
    found = {Path(f).name: read(f) for f in folders}
    return {k: d for k, d in found.items() if d is not None}
