"""What the noisy-label benchmark tests share: loading a benchmark and the guard that fails any
open of `train_clean_filelist` while it is on (an audit hook, inherited by forked DataLoader
workers): training must never read the clean labels."""

import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUARD = {"on": False, "opened": []}


def _audit(event: str, args: tuple) -> None:
    if GUARD["on"] and event == "open" and "train_clean_filelist" in str(args[0]):
        GUARD["opened"].append(str(args[0]))
        raise PermissionError(f"training opened the clean labels: {args[0]}")


sys.addaudithook(_audit)


def load_bench(name: str):
    """benchmarks/GROUP/NAME.py, imported afresh (tests point a RECIPE at variants)."""
    group = next(g for g in ("datasets", "studies", "speed")
                 if (REPO / f"benchmarks/{g}/{name}.py").is_file())
    return importlib.reload(importlib.import_module(f"benchmarks.{group}.{name}"))


def run_guarded(bench, recipe: dict, out: Path) -> None:
    """The benchmark's recipe run with the guard on (what it caught: GUARD["opened"])."""
    GUARD["opened"] = []
    GUARD["on"] = True
    try:
        bench.harness.run_recipe(recipe, out, bench.SPEC)
    finally:
        GUARD["on"] = False
