"""webly: noisy web images + their text -> a strong image classifier."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from webly.inference.classify import Classifier

__version__ = "0.1.0"


def load(path: str | Path, device: str = "auto", tta: str = "center") -> Classifier:
    """A trained model ready to classify images: `webly.load("runs/x/final").predict(["a.jpg"])`
    gives each image's top classes with their probabilities (see `webly.inference.classify`).
    Imported on use, so `import webly` stays light."""
    from webly.inference.classify import Classifier

    return Classifier.load(path, device=device, tta=tta)
