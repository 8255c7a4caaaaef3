"""The one record type every reader yields and every stage consumes (a manifest row).

Text fields are always clean Python strings (never None), tags always a list of strings: readers
normalise messy web metadata here once, counting what they had to fix, so later stages need not.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Source(str, Enum):
    GOOGLE = "google"
    FLICKR = "flickr"
    OTHER = "other"

    @classmethod
    def of_path(cls, relpath: str) -> Source:
        head = relpath.split("/", 1)[0].lower()
        return cls(head) if head in ("google", "flickr") else cls.OTHER


SPLITS = ("train", "val", "test")
# Longest text kept per field: web descriptions run to megabytes and nothing downstream needs that.
MAX_TEXT_CHARS = 20_000
# Lone surrogates are the only code points UTF-8 cannot encode; JSON's "\udcff" escapes and
# undecodable file names (surrogateescape) produce them, and Parquet, HTML and every later stage
# would fail on them.
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogates(value: str) -> bool:
    return not value.isascii() and _SURROGATE.search(value) is not None


@dataclass
class Record:
    """One image: where it is, its (noisy) label if any, and the web text around it."""

    id: str  # unique within the dataset: the image path as its file list names it
    path: str  # image path relative to the dataset root (or a shard key)
    split: str  # train | val | test
    label: int | None = None  # 0-based class index; None for unlabelled test images
    source: str = Source.OTHER.value
    query: int | None = None  # WebVision query id (the q%04d / q%05d folder number)
    query_text: str = ""
    title: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)


def clean_field(value: Any, counts: Counter | None = None, name: str = "text",
                max_chars: int = MAX_TEXT_CHARS) -> str:
    """Any JSON value -> valid text: null -> "", numbers -> str, NUL -> space, lone surrogates ->
    U+FFFD, over-long -> truncated; each fix counted under `name` so the index summary shows it."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        if counts is not None:
            counts[f"{name}_not_string"] += 1
        value = str(value) if not isinstance(value, (list, dict)) else " ".join(map(str, value))
    if "\x00" in value:
        if counts is not None:
            counts[f"{name}_nul_replaced"] += 1
        value = value.replace("\x00", " ")
    if has_surrogates(value):
        if counts is not None:
            counts[f"{name}_surrogates_replaced"] += 1
        value = _SURROGATE.sub("\ufffd", value)
    if len(value) > max_chars:
        if counts is not None:
            counts[f"{name}_truncated"] += 1
        value = value[:max_chars]
    return value


def clean_tags(value: Any, counts: Counter | None = None) -> list[str]:
    """Flickr tags arrive as a list, or sometimes one string ("a,b" or "a b"): always a list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        if counts is not None:
            counts["tags_as_string"] += 1
        parts = value.split(",") if "," in value else value.split()
        return [clean_field(t.strip(), counts, "tag", 200) for t in parts if t.strip()]
    if isinstance(value, (list, tuple)):
        return [clean_field(t, counts, "tag",
                            200) for t in value if t is not None and str(t).strip()]
    if counts is not None:
        counts["tags_not_list"] += 1
    return [clean_field(value, counts, "tag", 200)]


def text_from_meta(item: Any, counts: Counter) -> tuple[str, str, list[str]]:
    """(title, description, tags) from one metadata dict; a non-dict item counts and gives ''."""
    if not isinstance(item, dict):
        counts["meta_item_not_dict"] += 1
        return "", "", []
    return (clean_field(item.get("title"), counts, "title"),
            clean_field(item.get("description"), counts, "description"),
            clean_tags(item.get("tags"), counts))
