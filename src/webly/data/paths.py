"""Paths read from file lists, metadata, manifests and shards stay inside the dataset root.

A crawled dataset is untrusted input: a list line `../../etc/passwd`, an absolute path, or a symlink
pointing out of the tree must not make a stage read (or a shard carry) files from elsewhere. The
lexical check is per path and costs nothing; the symlink check resolves each directory once
(cached) and lstat()s the file itself.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from webly.core.errors import WeblyError


def check_relative(rel: str, where: str) -> str:
    """`rel` must be a relative path with no '..' part (`where` names the file and line)."""
    p = PurePosixPath(rel.replace("\\", "/"))
    if not rel or p.is_absolute() or rel[1:3] == ":/" or ".." in p.parts:
        raise WeblyError(f"{where}: path {rel[:120]!r} escapes the dataset root "
                         "(absolute or with '..'); paths must be relative and inside it")
    return rel


class RootGuard:
    """Checks that paths resolve inside `root`, following symlinks."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self._dirs: dict[str, bool] = {}

    def _inside(self, p: Path) -> bool:
        return p == self.root or self.root in p.parents

    def check(self, rel: str, where: str) -> str:
        check_relative(rel, where)
        parent, _, _ = rel.rpartition("/")
        ok = self._dirs.get(parent)
        if ok is None:
            d = self.root / parent
            ok = self._dirs[parent] = not d.exists() or self._inside(d.resolve())
        full = self.root / rel
        if ok and os.path.islink(full):
            ok = self._inside(full.resolve())
        if not ok:
            raise WeblyError(f"{where}: {rel[:120]!r} is a symlink (or under one) that points "
                             f"outside the dataset root {self.root}")
        return rel
