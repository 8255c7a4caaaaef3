"""The own-data plan: what the data are (`facts_of`), what a draw costs (`Measured`, measured by
`webly.app.own.measure`), and the rules that turn both and a budget into image size, backbone, batch
and epochs (`plan_for`; the package docstring says them in words)."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from webly.app.own.measure import measure
from webly.app.own.settings import Measured, backbone_for, batch_for, in_memory
from webly.core.errors import WeblyError
from webly.core.progress import duration
from webly.inference import cost
from webly.training.plan import MIN_STEPS

SIZES = (16, 20, 24, 32, 40, 48, 64, 96, 128, 160, 192, 224)
# The size rule's two numbers come from the CIFAR-10N holdout sweep at equal compute (v6, in
# configs/cifar10n/recipe.yaml): 24 px at 8.9 passes lost to 20 px at 13.8, and 16 px (half the
# images' size) at 20 passes lost to 20 px too.
MIN_PASSES = 10.0  # passes per unit below which a smaller image size buys more passes
MIN_SCALE = 0.6  # ...but never smaller than this share of a thumbnail's own size
MIN_SIZE = 32  # px: the floor for photos (0.6 x 512 px would leave a CPU no affordable size)
NO_BUDGET_PASSES = 30.0
MAX_PASSES = 200.0  # a budget beyond this many passes per unit is left unspent (said so)
# from pretrained weights: a few passes finetune (the seed finetunes for tens of epochs over 16M
# images; unmeasured here, where no network fetches weights), at sizes the features were made at
MIN_PASSES_PRETRAINED = 3.0
PRETRAINED_SIZES = (64, 224)
HOLDOUT = 0.1
MIN_TEXT_SHARE = 0.5
# a step's start and end (manifest, model, loader, export): 0.4-0.6 s a step on clothing10 at
# 5m (step.json seconds less the loop's own), 3.8 s for the first, which decodes into memory
# (counted apart); 3 s left 30 s of a 5-minute budget unspent
STEP_OVERHEAD_S = 1.0
EPOCH_CAP = 2  # a budgeted step's epochs bound: twice the planned (its time ends it first)
# a backbone is measured only if it could fit at this many times another's measured multiply-add
# rate (measuring a ResNet-18 costs seconds a short budget cannot spare)
OPTIMISM = 2.0
SIDECARS = ("text.jsonl", "text.csv")



def parse_budget(text: str) -> float:
    """'30m', '1h30m', '90s', '2h' -> seconds."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*"
                         r"(?:(\d+(?:\.\d+)?)s)?\s*", text or "")
    if not text or not parts or not any(parts.groups()):
        raise WeblyError(f"--budget takes a time such as 30m, 1h30m or 90s; got {text!r}")
    h, m, s = (float(x or 0) for x in parts.groups())
    seconds = 3600 * h + 60 * m + s
    if seconds <= 0:
        raise WeblyError(f"--budget must be positive, got {text!r}")
    return seconds


@dataclass
class Facts:
    """What the plan reads off the indexed data."""

    images: dict[str, int]
    classes: int
    text_share: float
    side: int  # median short side of the training images, px
    layout: str


@dataclass
class Plan:
    budget_s: float | None
    spent_s: float
    text: bool
    size: int
    backbone: str
    batch: int
    passes: float  # passes over the training images per compute unit
    steps: dict[str, dict[str, Any]]
    estimated_s: float
    rates: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    pretrained: str = ""  # the weights file every step that starts anew loads ("": none)

    def lines(self) -> list[str]:
        start = f"from {self.pretrained}" if self.pretrained else "from scratch"
        what = "with text (the holdout decides what it is worth)" if self.text else "images only"
        lines = [f"own data: {what}; "
                 f"{self.backbone} at {self.size} px {start}, batch {self.batch}; "
                 f"{self.passes:.1f} passes a unit"]
        lines += [f"  {sid}: {s['epochs']} epochs of {s['draws']} draws ({s['units']:g} units)"
                  for sid, s in self.steps.items()]
        if self.budget_s:
            lines.append(f"estimated {duration(self.estimated_s)} in all of a "
                         f"{duration(self.budget_s)} budget ({duration(self.spent_s)} spent "
                         "indexing, tagging and measuring)")
        else:
            lines.append("time not estimated (no --budget: nothing was measured)")
        return lines + [f"note: {n}" for n in self.notes]


def facts_of(manifest_path: Path, sample: int = 200) -> Facts:
    from PIL import Image

    from webly.data.manifest import Manifest

    m = Manifest(manifest_path)
    t = m.read(["split", "path", "title", "description", "tags"])
    split = t["split"].to_pylist()
    images = {s: split.count(s) for s in ("train", "val", "test") if s in split}
    train = [i for i, s in enumerate(split) if s == "train"]
    if not train:
        raise WeblyError(f"{manifest_path}: no training images")
    titles, descs, tags = (t[c].to_pylist() for c in ("title", "description", "tags"))
    with_text = sum(bool(titles[i] or descs[i] or tags[i]) for i in train)
    paths = t["path"].to_pylist()
    sides = []
    for i in train[:: max(len(train) // sample, 1)][:sample]:
        try:
            with Image.open(m.image_path(paths[i])) as img:
                sides.append(min(img.size))
        except OSError:
            continue
    if not sides:
        raise WeblyError(f"{manifest_path}: none of {sample} sampled training images opens")
    return Facts(images, m.num_classes, with_text / len(train), int(statistics.median(sides)),
                 m.meta.get("layout", ""))


# with text: CE (the labeller), then final continues it on the labels the holdout chose (the
# given ones, or the text's pseudo-labels where they pay): training step -> compute units
TEXT_STEPS = {"ce": 1.0, "final": 2.0}
# images only: CE, half a unit more of it (decision 1 reads it against CE on the holdout), then
# the rest either continues CE (ce_rest) or trains a new model on pseudo-labels (final): the two
# branches cost the same units, so one plan fits either (`seconds` counts the longer)
IMAGE_STEPS = {"ce": 1.0, "ce_more": 0.5, "ce_rest": 1.5, "final": 1.5}
BRANCHES = ("ce_rest", "final")  # decision 1 runs one of them
SCRATCH = ("ce", "final")  # steps that may start from random weights: MIN_STEPS applies


def step_sizes(units: dict[str, float], passes: float, train_images: int,
               batch: int) -> dict[str, dict[str, Any]]:
    """Each training step's epochs and draws an epoch for `passes` per unit (a fraction of an
    epoch is spent as fewer draws an epoch, never less than one optimizer step)."""
    out = {}
    for sid, u in units.items():
        draws = max(round(u * passes * train_images), batch)
        epochs = max(1, round(u * passes))
        out[sid] = {"units": u, "epochs": epochs, "draws": max(draws // epochs, batch)}
    return out


def _fwd(rate: Measured, tta: str = "none") -> float:
    """Seconds one image's inference costs at `rate` (the cost model's forward share)."""
    macs_s = cost.Rate.of_training(rate.backbone, rate.size, 1 / rate.train_s, "measured")
    return macs_s.seconds(cost.predict_macs(rate.backbone, rate.size, 1, tta))


def train_seconds(sid: str, s: dict[str, Any], rate: Measured, facts: Facts) -> float:
    """A training step's time in its loop: its draws (a decode each when it reads files) and
    validation after each epoch; the step's `time_budget_s` (the loop ends on it)."""
    per_draw = rate.train_s + (0.0 if in_memory(rate.size) else rate.decode_s)
    total = s["epochs"] * s["draws"] * per_draw
    total += s["epochs"] * facts.images.get("val", 0) * (_fwd(rate) + rate.decode_s)
    return total


def seconds(steps: dict[str, dict[str, Any]], rate: Measured, facts: Facts, text: bool) -> float:
    """The recipe's time at `rate`: each training step's loop (`train_seconds`) and start,
    decoding into memory (once: the decoded images are cached, except for the pseudo-labelled
    subset `final` trains on), the inference passes (the labeller's on the training images with
    their mirrors; val and test per member). Of decision 1's two branches only `final` is
    counted (the same units; both make a labelling pass)."""
    n_train, n_val = facts.images.get("train", 0), facts.images.get("val", 0)
    n_test = facts.images.get("test", 0)
    branch = all(b in steps for b in BRANCHES)
    members = [sid for sid in steps if not (branch and sid == BRANCHES[0])]
    total = sum(train_seconds(sid, steps[sid], rate, facts) for sid in members)
    if in_memory(rate.size):
        total += n_train * rate.decode_s * (1 + ("final" in steps))
    if "final" in steps:  # the labelling pass (with text one view, else with the mirror)
        total += n_train * (_fwd(rate, "center" if text else "flip") + rate.decode_s)
    if text:  # the holdout's pass with features (the probe; its fits are seconds)
        total += n_val * (_fwd(rate, "center") + rate.decode_s)
    total += len(members) * (n_val + n_test) * (_fwd(rate) + rate.decode_s)  # val, test
    return total + STEP_OVERHEAD_S * (3 * len(members) + 2 + 3 * bool(n_test) + int(text))


def optimizer_steps(steps: dict[str, dict[str, Any]], batch: int) -> int:
    """The fewest optimizer steps of a step that trains from random weights (0: none does)."""
    return min([steps[s]["epochs"] * (steps[s]["draws"] // batch) for s in SCRATCH
                if s in steps] or [0])


def solve_passes(units: dict[str, float], rate: Measured, facts: Facts, text: bool, batch: int,
                 left_s: float) -> float:
    """The most passes per unit whose recipe fits in `left_s` (bisection; at least 0.05)."""
    lo, hi = 0.05, MAX_PASSES
    n = facts.images["train"]
    if seconds(step_sizes(units, hi, n, batch), rate, facts, text) <= left_s:
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        fits = seconds(step_sizes(units, mid, n, batch), rate, facts, text) <= left_s
        lo, hi = (mid, hi) if fits else (lo, mid)
    return round(lo, 3)


def candidate_sizes(side: int, pretrained: bool) -> list[int]:
    """The sizes the plan may train at, smallest first: from scratch, up to the images' own
    (median short side) and down to 0.6 of a thumbnail's or `MIN_SIZE` for photos; from
    pretrained weights, `PRETRAINED_SIZES` (and not above the images' own)."""
    lo, hi = ((PRETRAINED_SIZES[0], min(side, PRETRAINED_SIZES[1])) if pretrained
              else (min(MIN_SCALE * side, MIN_SIZE), side))
    sizes = [s for s in SIZES if lo <= s <= hi]
    return sizes or [max([s for s in SIZES if s <= hi] or [SIZES[0]])]


def plan_for(facts: Facts, manifest: Path, budget_s: float | None, spent_s: float,
             measure_fn: Any = None, pretrained: tuple[str, str] | None = None,
             clock: Callable[[], float] = time.monotonic) -> Plan:
    """Text or not, image size, backbone, batch and epochs (the package docstring says how);
    `measure_fn(manifest, size, batch, backbone) -> Measured` (default: `measure`); `pretrained`:
    (weights, their backbone) to finetune; `clock` times the planning itself (tests stop it)."""
    measure_fn = measure_fn or measure
    text = facts.text_share >= MIN_TEXT_SHARE
    units = TEXT_STEPS if text else IMAGE_STEPS
    n = facts.images["train"]
    batch = batch_for(n)
    weights, fixed = pretrained or ("", "")
    sizes = candidate_sizes(facts.side, bool(weights))
    min_passes = MIN_PASSES_PRETRAINED if weights else MIN_PASSES
    backbone_at = (lambda size: fixed) if weights else backbone_for
    notes = [f"{facts.text_share:.0%} of the training images have text"
             + ("" if text else f" (under {MIN_TEXT_SHARE:.0%}: images only)")]
    if budget_s is None:
        size = sizes[-1]
        steps = step_sizes(units, NO_BUDGET_PASSES, n, batch)
        return Plan(None, spent_s, text, size, backbone_at(size), batch, NO_BUDGET_PASSES,
                    steps, 0.0, [], notes + ["no --budget: the images' own size, "
                                             f"{NO_BUDGET_PASSES:g} passes a unit"], weights)
    t0 = clock()
    measured: dict[str, Measured] = {}  # backbone -> a measurement at one of its sizes

    def carried(r: Measured, bb: str, size: int, speedup: float = 1.0) -> Measured:
        """`r`'s multiply-adds a second (x `speedup`) carried to `bb` at `size`."""
        macs_s = cost.Rate.of_training(r.backbone, r.size, speedup / r.train_s, "measured")
        return replace(r, backbone=bb, size=size,
                       train_s=macs_s.seconds(cost.train_macs(bb, size, 1)))

    def rate_at(size: int) -> Measured:
        bb = backbone_at(size)
        if bb not in measured:  # at its largest size, up to 96 px (a short measurement)
            if measured:  # measure it only if it might fit at 2x another's multiply-add rate
                hope = carried(next(iter(measured.values())), bb, size, OPTIMISM)
                if passes_at(hope, batch) < min_passes:
                    return hope
            at = min(max(s for s in sizes if backbone_at(s) == bb), 96)
            measured[bb] = measure_fn(manifest, at, batch, bb)
        return carried(measured[bb], bb, size)  # the cost model carries it to `size`

    def passes_at(rate: Measured, batch: int) -> float:
        left = budget_s - spent_s - (clock() - t0)
        return solve_passes(units, rate, facts, text, batch, left)

    rate_at(sizes[0])  # the cheapest backbone first: a costlier one may not need measuring
    size = sizes[0]
    for s in reversed(sizes):
        if passes_at(rate_at(s), batch) >= min_passes:
            size = s
            break
    rate = rate_at(size)
    if measured[rate.backbone].size != size:  # measured where it trains (a short measurement)
        rate = measured[f"{rate.backbone}@{size}"] = measure_fn(manifest, size, batch,
                                                                rate.backbone)
    passes = passes_at(rate, batch)
    scratch = not weights  # finetuning from pretrained weights needs no MIN_STEPS
    while (scratch and optimizer_steps(step_sizes(units, passes, n, batch), batch) < MIN_STEPS
           and batch > 16):
        batch //= 2  # more optimizer steps for the same draws (a CPU's rate barely changes)
        notes.append(f"batch {batch}: the budget's draws in at least {MIN_STEPS} optimizer steps")
        passes = passes_at(rate, batch)
    spent = spent_s + clock() - t0
    steps = step_sizes(units, passes, n, batch)
    for sid, st in steps.items():  # each step's loop ends on its time (`time_budget_s`)
        st["seconds"] = round(train_seconds(sid, st, rate, facts), 1)
    fewest = optimizer_steps(steps, batch)
    if scratch and fewest < MIN_STEPS:
        notes.append(f"the budget affords {passes:.2f} passes a unit at {size} px: "
                     f"{fewest} optimizer steps for a model trained from scratch, where a network "
                     f"rarely learns in fewer than {MIN_STEPS}: expect a weak model; a longer "
                     "--budget trains more")
    if passes >= MAX_PASSES:
        notes.append(f"the budget is more than {MAX_PASSES:g} passes a unit need: "
                     "the rest is left unspent")
    return Plan(budget_s, round(spent, 1), text, size, rate.backbone, batch, passes, steps,
                round(spent + seconds(steps, rate, facts, text), 1),
                [asdict(r) for r in measured.values()], notes, weights)
