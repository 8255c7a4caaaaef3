"""Progress of long loops, visible on a terminal and in a log file alike.

On a terminal: a tqdm bar. Elsewhere (nohup, SLURM, CI, `| tee`) a bar shows nothing useful, so a
plain line is written to stderr after the first item, then every `WEBLY_PROGRESS_EVERY` seconds
(default 30), and at the end:

    [webly] predict val: 384/1000 batch (38.4%), 12.3 batch/s, ETA 50s
    [webly] predict val: 1000/1000 batch in 1m21s (12.3 batch/s)

`WEBLY_PROGRESS=0` silences both, `=1` forces the bar; the default (`auto`) picks by whether
stderr is a terminal. Only the primary process of a torchrun job (RANK 0) reports.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
DEFAULT_EVERY = 30.0


def _interval() -> float:
    raw = os.environ.get("WEBLY_PROGRESS_EVERY", "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_EVERY
    except ValueError:
        return DEFAULT_EVERY


def duration(seconds: float) -> str:
    """3725 -> '1h02m', 125 -> '2m05s', 7.4 -> '7s'."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_line(desc: str, done: int, total: int | None, unit: str, elapsed: float) -> str:
    """One plain progress line: done/total, percentage, rate and ETA (when a total is known)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    head = f"[webly] {desc}: {done}/{total} {unit}" if total else f"[webly] {desc}: {done} {unit}"
    if total:
        head += f" ({100 * done / total:.1f}%)"
    line = f"{head}, {rate:.3g} {unit}/s"
    if total and rate > 0:
        line += f", ETA {duration(max(0, total - done) / rate)}"
    return line


def _lines(it: Iterable[T], desc: str, total: int | None, unit: str, every: float) -> Iterator[T]:
    t0 = last = time.monotonic()
    done = 0  # items whose loop body finished: counted when the next one is asked for
    try:
        for item in it:
            yield item
            done += 1
            now = time.monotonic()
            # the first item (the job is alive, a first ETA), then every `every` seconds
            if (done == 1 or now - last >= every) and (total is None or done < total):
                print(progress_line(desc, done, total, unit, now - t0), file=sys.stderr, flush=True)
                last = now
    finally:  # also when the loop stops early (break): the last line says how far it got
        elapsed = time.monotonic() - t0
        rate = f" ({done / elapsed:.3g} {unit}/s)" if elapsed > 0 else ""
        of = f"/{total}" if total else ""
        print(f"[webly] {desc}: {done}{of} {unit} in {duration(elapsed)}{rate}", file=sys.stderr,
              flush=True)


def progress(it: Iterable[T], *, desc: str, total: int | None = None,
             unit: str = "it") -> Iterator[T]:
    """`it`, reporting progress as the module docstring says; `total` defaults to len(it)."""
    mode = os.environ.get("WEBLY_PROGRESS", "auto")
    if mode == "0" or os.environ.get("RANK", "0") != "0":
        return iter(it)
    if total is None:
        try:
            total = len(it)  # type: ignore[arg-type]
        except TypeError:  # generators, iterable-style DataLoaders
            total = None
    if mode != "auto" or sys.stderr.isatty():
        return iter(tqdm(it, desc=desc, total=total, unit=unit, dynamic_ncols=True))
    return _lines(it, desc, total, unit, _interval())
