"""The start of the small run folders tests build: generated data, its manifest and its tags."""

from __future__ import annotations

from typing import Any


def first_steps(per_family: int, max_per_class: int, min_per_class: int) -> list[dict[str, Any]]:
    """synth (two WordNet families of 32x32 images) -> index -> tag, as recipe steps."""
    return [
        {"id": "data", "stage": "synth", "families": 2, "per_family": per_family,
         "max_per_class": max_per_class, "min_per_class": min_per_class, "val_per_class": 2,
         "test_per_class": 2, "image_width": 32, "image_height": 32},
        {"id": "manifest", "stage": "index", "root": "@data"},
        {"id": "tags", "stage": "tag", "manifest": "@manifest", "min_count": 1, "max_df": 0.9},
    ]
