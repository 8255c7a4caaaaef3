"""Deterministic fault injection: a process kills itself at a named point, for crash tests.

Long-running code marks the moments a crash matters with `point("name")` (a checkpoint written, a
part file written, a batch predicted, ...). Normally that is one dictionary lookup. With

    WEBLY_FAULT=[STEP/]POINT:N      e.g. "ft/train.ckpt:2", "tag.part:1"

the process SIGKILLs itself the N-th time it reaches POINT (inside recipe step STEP, when given).
Optional: WEBLY_FAULT_RANK=R fires only in the torchrun process with RANK=R; WEBLY_FAULT_ONCE=FILE
fires only if FILE does not exist yet, and creates it first (so a restarted process runs on).
A test thus kills at a point the code itself signals, never after a sleep or a poll: its outcome
cannot depend on how fast the machine is.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_hits: Counter[str] = Counter()
_scope = ""


def set_scope(name: str) -> None:
    """The recipe step now running (`webly run` sets it); "" outside a recipe."""
    global _scope
    _scope = name


def point(name: str) -> None:
    spec = os.environ.get("WEBLY_FAULT")
    if not spec:
        return
    where, _, count = spec.rpartition(":")
    scope, _, target = where.rpartition("/")
    if target != name or (scope and scope != _scope):
        return
    _hits[name] += 1  # counted inside the named step only
    if _hits[name] != int(count or 1):
        return
    rank = os.environ.get("WEBLY_FAULT_RANK")
    if rank is not None and os.environ.get("RANK", "0") != rank:
        return
    once = os.environ.get("WEBLY_FAULT_ONCE")
    if once:
        if os.path.exists(once):
            return
        with open(once, "w") as f:
            f.write(f"{spec}\n")
    os.kill(os.getpid(), signal.SIGKILL)
