"""Line-oriented reading of dataset list files: streaming, never crashing on bad bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from webly.core.errors import WeblyError


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for each non-blank line; bad UTF-8 is replaced."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line:
                yield n, line


def count_lines(path: Path) -> int:
    """Non-blank lines, as `iter_lines` yields them."""
    return sum(1 for _ in iter_lines(path))


def part_range(total: int, part: tuple[int, int]) -> tuple[int, int]:
    """[lo, hi) of the i-th of n contiguous, near-equal ranges of `total` items."""
    i, n = part
    return total * i // n, total * (i + 1) // n


def line_range(path: Path, part: tuple[int, int]) -> tuple[int, int | None]:
    """The non-blank lines of `path` that part (i, n) reads (no count needed for the whole)."""
    return (0, None) if part[1] == 1 else part_range(count_lines(path), part)


def parse_label(token: str, path: Path, lineno: int, num_classes: int) -> int:
    """A 0-based class index from a list file; one-line error naming file and line otherwise."""
    try:
        label = int(token)
    except ValueError:
        raise WeblyError(f"{path}:{lineno}: label {token!r} is not an integer") from None
    if not 0 <= label < num_classes:
        raise WeblyError(f"{path}:{lineno}: label {label} out of range [0, {num_classes})")
    return label


def require(path: Path, what: str, folder: bool = False) -> Path:
    """`path`, or a one-line error saying what was expected there (a file unless `folder`)."""
    if not path.exists():
        raise WeblyError(f"missing {path}: expected {what}")
    if path.is_dir() and not folder:
        raise WeblyError(f"{path} is a folder: expected a file of {what}")
    return path
