"""Progress bars for long work: tqdm on a terminal, a quiet pass-through elsewhere (CI, logs)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(it: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    disable = os.environ.get("WEBLY_PROGRESS", "auto") == "0" or (
        os.environ.get("WEBLY_PROGRESS", "auto") == "auto" and not sys.stderr.isatty())
    return iter(tqdm(it, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True))
