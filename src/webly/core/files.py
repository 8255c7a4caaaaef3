"""One atomic write for every stage output.

Stages talk through files, and a later stage (or a rerun deciding what is finished) must never read
half of one. Every output is written to a temporary file beside its final name, flushed to disk
(fsync), renamed over the final name, and the folder is fsynced so the rename itself survives a
power cut. A crash at any moment leaves either the previous file or the new one, never a mix.

    write_atomic(path, text_or_bytes)          whole files (JSON, TSV, YAML, ...)
    with atomic_path(path) as tmp: writer(tmp) anything that wants a path (Parquet, npz, torch, PNG)

The temporary name keeps the suffix (`.name.tmp1234.npz`), since scipy, NumPy and Matplotlib pick
the format from it; it starts with a dot, and is removed when the writer raises.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from webly.core import faults


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some filesystems refuse to open folders: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicTarget:
    """A temporary path beside `path` that `commit()` makes `path` and `discard()` removes: for
    streaming writers whose open and close are far apart (the manifest's row groups)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp{os.getpid()}{self.path.suffix}")

    def commit(self) -> None:
        _fsync_path(self.tmp)
        faults.point("atomic.rename")  # written and flushed, not yet renamed
        os.replace(self.tmp, self.path)
        _fsync_path(self.path.parent, directory=True)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error, make it `path`."""
    target = AtomicTarget(path)
    try:
        yield target.tmp
        target.commit()
    except BaseException:
        target.discard()
        raise


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write a whole file atomically (text as UTF-8)."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write atomically (the format from the suffix) and close a Matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return Path(path)
