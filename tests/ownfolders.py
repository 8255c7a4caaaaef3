"""Generated class folders with a titles sidecar, as a user's own data: each class is a colour
(with pixel noise) and its titles name it; a share of the images sit in a wrong class folder,
their titles still naming the true class (the way a text search errs)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("boot", "dress", "hat", "sandal", "scarf", "jacket")
COLOURS = ((200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 200, 40), (160, 40, 160),
           (40, 180, 180))
WORDS = ("red", "leather", "cotton", "vintage", "new", "classic", "soft", "warm")


def make_folders(root: Path, per_class: int = 40, noise: float = 0.2, size: int = 24,
                 titles: bool = True, seed: int = 0, classes: int = len(CLASSES)) -> Path:
    rng = random.Random(seed)
    gen = np.random.default_rng(seed)
    rows = []
    for c, name in enumerate(CLASSES[:classes]):
        for i in range(per_class):
            folder = CLASSES[rng.randrange(classes)] if rng.random() < noise else name
            pixels = np.clip(np.array(COLOURS[c]) + gen.normal(0, 40, (size, size, 3)), 0, 255)
            rel = f"{folder}/{name}_{i}.png"
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(root / rel)
            rows.append({"path": rel, "title": f"{rng.choice(WORDS)} {name} {rng.choice(WORDS)}"})
    if titles:
        (root / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
