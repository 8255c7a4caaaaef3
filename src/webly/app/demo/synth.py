"""`webly synth`: a small generated dataset in the real WebVision 2.0 (or 1.0) layout.

It carries the structure the method exploits, reproducibly from a seed:
- concepts are real WordNet noun synsets, a few siblings from each of a few subtrees (New World
  warblers, terriers, cars, citrus fruit, big cats, deer), with WebVision-style wnids and indices;
- images are drawn procedurally: a subtree has one shape, its concepts differ in colour and
  texture, so WordNet siblings look alike and semantic label weighting has something to find;
- web text from the concept's lemmas, its hypernyms, colour/texture attributes and Zipfian
  boilerplate, with text noise (the concept word missing, wholly off-topic text) and label noise (a
  set fraction of training images shows another concept, most often a sibling); as with a real
  search engine, a wrongly returned image's text matched the query's name, while the words that
  describe the picture (colour, texture, kind of thing, sometimes its own name) are about what it
  shows: the text carries evidence the label does not;
- a long-tailed number of training images per concept; clean, balanced val and test splits.

The true concept of every image is written to `truth/` (never read by training code), so
benchmarks can measure noise and what label cleaning recovered.
"""

from __future__ import annotations

import colorsys
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from webly.core.config import opt
from webly.core.errors import WeblyError
from webly.core.progress import progress
from webly.data.records import Record
from webly.labels.wordnet import wnid_of, wordnet

# (subtree root, shape drawn for all its concepts, preferred concepts in order)
FAMILIES = [
    ("new_world_warbler.n.01", "triangle", ["yellow_warbler.n.01", "parula_warbler.n.01",
     "cape_may_warbler.n.01", "blackburn.n.01", "myrtle_warbler.n.01", "wilson's_warbler.n.01"]),
    ("terrier.n.01", "square", ["airedale.n.01", "border_terrier.n.01", "fox_terrier.n.01",
     "irish_terrier.n.01", "kerry_blue_terrier.n.01", "norfolk_terrier.n.01"]),
    ("car.n.01", "hexagon", ["ambulance.n.01", "cab.n.03", "convertible.n.01", "coupe.n.01",
     "limousine.n.01", "sports_car.n.01"]),
    ("citrus.n.01", "circle", ["lemon.n.01", "lime.n.06", "orange.n.01", "grapefruit.n.02",
     "mandarin.n.05", "kumquat.n.02"]),
    ("big_cat.n.01", "star", ["cheetah.n.01", "jaguar.n.01", "leopard.n.02", "lion.n.01",
     "tiger.n.02", "snow_leopard.n.01"]),
    ("deer.n.01", "cross", ["mule_deer.n.01", "red_deer.n.01", "roe_deer.n.01",
     "fallow_deer.n.01", "caribou.n.01", "elk.n.01"]),
]
TEXTURES = ["solid", "stripes", "dots"]
FILLER = ["photo", "picture", "image", "beautiful", "free", "wallpaper", "stock", "holiday",
          "summer", "travel", "weekend", "family", "camera", "nikon", "canon", "sunset", "city",
          "garden", "morning", "old", "new", "day", "trip", "hd", "best", "great", "nice"]
PLACES = ["park", "garden", "street", "farm", "forest", "lake", "market", "village", "zoo", "coast"]
OFF_TOPIC = ["Cheap flights and hotel deals for your next vacation.",
             "Wedding photography portfolio by a local studio.",
             "Top ten recipes for a quick weeknight dinner.",
             "Download free icons and vector graphics for your website.",
             "Football highlights from last night's match.",
             "Quarterly financial report and investor presentation."]


def colour_word(hue: float) -> str:
    names = ["red", "orange", "yellow", "green", "green", "cyan", "blue", "blue", "purple", "pink"]
    return names[int((hue % 1.0) * len(names))]


@dataclass
class SynthConfig:
    families: int = opt(4, "WordNet subtrees to draw concepts from (1-6)")
    per_family: int = opt(6, "concepts per subtree (siblings)")
    max_per_class: int = opt(120, "training images of the most frequent concept")
    min_per_class: int = opt(15, "training images of the rarest concept (long tail)")
    val_per_class: int = opt(10, "clean validation images per concept")
    test_per_class: int = opt(10, "clean test images per concept")
    image_width: int = opt(64, "image width in pixels")
    image_height: int = opt(64, "image height in pixels")
    label_noise: float = opt(0.25, "fraction of training images that show another concept")
    sibling_noise: float = opt(0.7, "share of those wrong images that show a WordNet sibling")
    text_missing: float = opt(0.3, "probability the concept's name is absent from an image's text")
    off_topic: float = opt(0.15, "probability an image's text is wholly off-topic")
    flickr_fraction: float = opt(0.5, "fraction of training images from Flickr (with tags)")
    version: int = opt(2, "WebVision layout version: 2 (q%05d, metadata under meta/) or 1 (q%04d)")
    images: bool = opt(True, "draw the images (off: lists and metadata only, for text benchmarks)")
    seed: int = opt(0, "random seed")

    def validate(self) -> None:
        if not 1 <= self.families <= len(FAMILIES):
            raise WeblyError(f"synth.families must be in 1..{len(FAMILIES)}")
        if self.per_family < 1 or self.min_per_class < 1 or self.max_per_class < self.min_per_class:
            raise WeblyError("synth: per_family >= 1 and 1 <= min_per_class <= max_per_class "
                             "required")
        if min(self.image_width, self.image_height) < 8:
            raise WeblyError("synth: images must be at least 8x8 pixels")
        for name in ("label_noise", "sibling_noise", "text_missing", "off_topic",
                     "flickr_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise WeblyError(f"synth.{name} must be within [0, 1]")
        if self.version not in (1, 2):
            raise WeblyError("synth.version must be 1 or 2")


@dataclass
class Concept:
    index: int
    wnid: str
    lemmas: list[str]
    hypernyms: list[str]
    family: int
    shape: str
    hue: float
    texture: str
    siblings: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.lemmas[0]


def pick_concepts(cfg: SynthConfig) -> list[Concept]:
    wn = wordnet()
    concepts: list[Concept] = []
    for f, (root_name, shape, preferred) in enumerate(FAMILIES[: cfg.families]):
        root = wn.synset(root_name)
        names = preferred + sorted(h.name() for h in root.hyponyms() if h.name() not in preferred)
        chosen = [wn.synset(n) for n in names[: cfg.per_family]]
        if len(chosen) < cfg.per_family:
            raise WeblyError(f"{root_name} has only {len(chosen)} hyponyms; lower per_family")
        hyper = [lem.replace("_", " ") for lem in root.lemma_names()[:1]]
        hyper += [root.hypernyms()[0].lemma_names()[0].replace("_",
                                                               " ")] if root.hypernyms() else []
        for j, syn in enumerate(chosen):
            concepts.append(Concept(
                index=len(concepts), wnid=wnid_of(syn),
                lemmas=[lem.replace("_", " ") for lem in syn.lemma_names()],
                hypernyms=hyper, family=f, shape=shape,
                hue=(j / cfg.per_family + 0.07 * f) % 1.0, texture=TEXTURES[j % len(TEXTURES)]))
    for c in concepts:
        c.siblings = [o.index for o in concepts if o.family == c.family and o.index != c.index]
    return concepts


# -- drawing ---------------------------------------------------------------------------------------
def _polygon(shape: str, cx: float, cy: float, r: float, theta: float) -> list[tuple[float, float]]:
    if shape == "star":
        pts = [(r if k % 2 == 0 else r * 0.45, k * math.pi / 5) for k in range(10)]
    elif shape == "cross":
        a = r * 0.35
        raw = [(a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a), (-a, -r), (a, -r), (a, -a),
               (r, -a), (r, a), (a, a)]
        pts = [(math.hypot(x, y), math.atan2(y, x)) for x, y in raw]
    else:
        n = {"triangle": 3, "square": 4, "hexagon": 6}[shape]
        pts = [(r, 2 * math.pi * k / n) for k in range(n)]
    return [(cx + d * math.cos(a + theta), cy + d * math.sin(a + theta)) for d, a in pts]


def draw_concept(c: Concept, rng: random.Random, w: int, h: int) -> Image.Image:
    """One picture of concept `c`: its family's shape, in its colour and texture, on clutter."""
    nrng = np.random.default_rng(rng.getrandbits(32))
    bg_rgb = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.3),
                                          rng.uniform(0.3, 0.9)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = (xx / w * rng.uniform(-0.3, 0.3) + yy / h * rng.uniform(-0.3, 0.3))[..., None]
    img = np.clip(bg_rgb[None, None, :] + grad + nrng.normal(0, 0.06, (h, w, 3)), 0, 1)

    side = min(w, h)
    r = side * rng.uniform(0.25, 0.42)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    mask_img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask_img)
    if c.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(c.shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=255)
    mask = np.asarray(mask_img, dtype=np.float32)[..., None] / 255.0

    hue = (c.hue + rng.uniform(-0.02, 0.02)) % 1.0
    fg = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)))
    shade = np.ones((h, w), np.float32)
    period = max(3.0, side / rng.uniform(5, 8))
    if c.texture == "stripes":
        ang = rng.uniform(0, math.pi)
        shade = np.where(((xx * math.cos(ang) + yy * math.sin(ang)) // (period / 2)) % 2 == 0, 1,
                         0.5)
    elif c.texture == "dots":
        d2 = (xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2
        shade = np.where(d2 < (period / 3.5) ** 2, 0.45, 1.0)
    fg_img = fg[None, None, :] * shade[..., None]
    out = img * (1 - mask) + fg_img * mask
    return Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8))


# -- text ------------------------------------------------------------------------------------------
FILLER_WEIGHTS = [1 / (r + 1) ** 1.2 for r in range(len(FILLER))]  # web boilerplate is Zipfian


def _filler(rng: random.Random, k: int = 1) -> list[str]:
    return rng.choices(FILLER, weights=FILLER_WEIGHTS, k=k)


def make_text(shown: Concept, rng: random.Random, cfg: SynthConfig, source: str,
              query: Concept | None = None) -> dict:
    """Title/description/tags as a web page or Flickr upload might describe its picture.

    `query` is the concept the search engine returned the image for, `shown` what the picture
    shows. As on the web, a wrongly returned image still matched the query's words, while the
    words that describe the picture itself (colour, texture, kind of thing, sometimes its own
    name) are about what it shows. Boilerplate words follow a Zipf law, so dropping the most
    common keywords removes most of them.
    """
    query = query or shown
    if rng.random() < cfg.off_topic:
        title = rng.choice(OFF_TOPIC).rstrip(".")
        desc = " ".join(rng.sample(OFF_TOPIC, 2))
        tags = _filler(rng, 3)
    else:
        named = rng.random() >= cfg.text_missing
        name = rng.choice(query.lemmas[:2]) if named else rng.choice(shown.hypernyms)
        colour, place = colour_word(shown.hue), rng.choice(PLACES)
        texture = {"solid": "plain", "stripes": "striped", "dots": "spotted"}[shown.texture]
        title = rng.choice([f"{colour} {name}", f"{name} in the {place}", f"my {name}",
                            f"{name} {_filler(rng)[0]}", f"{_filler(rng)[0]} {name} {place}"])
        sentences = [f"A {texture} {colour} {name} seen near the {place}.",
                     f"This {rng.choice(shown.hypernyms)} was photographed on a {_filler(rng)[0]} "
                     "trip.",
                     f"{_filler(rng)[0].capitalize()} {_filler(rng)[0]} of a {name}.",
                     f"We visited the {place} last {rng.choice(['summer', 'spring', 'winter'])}."]
        if shown is not query and rng.random() < 0.5:
            sentences.append(f"It is really a {rng.choice(shown.lemmas[:2])}.")
        desc = " ".join(rng.sample(sentences, rng.randint(1, 3)))
        tags = [name, rng.choice(shown.hypernyms), colour] + _filler(rng, rng.randint(1, 4))
        rng.shuffle(tags)
    item = {"title": title, "description": desc}
    if source == "flickr":
        item["tags"] = list(dict.fromkeys(tags))
    return item


# -- the generator ---------------------------------------------------------------------------------
def _class_counts(cfg: SynthConfig, n: int, rng: random.Random) -> list[int]:
    ranks = list(range(n))
    rng.shuffle(ranks)
    alpha = math.log(cfg.max_per_class / cfg.min_per_class) / math.log(max(n, 2))
    return [max(cfg.min_per_class, round(cfg.max_per_class * (r + 1) ** -alpha)) for r in ranks]


def _noisy_concept(c: Concept, concepts: list[Concept], cfg: SynthConfig,
                   rng: random.Random) -> int:
    if rng.random() >= cfg.label_noise:
        return c.index
    if c.siblings and rng.random() < cfg.sibling_noise:
        return rng.choice(c.siblings)
    return rng.choice([o.index for o in concepts if o.index != c.index])


def _write_info(out: Path, concepts: list[Concept], version: int) -> None:
    """info/synsets.txt, the query lists and the query -> class map."""
    (out / "info").mkdir(parents=True, exist_ok=True)
    wn = wordnet()
    lemmas = [wn.synset_from_pos_and_offset("n", int(c.wnid[1:])).lemma_names() for c in concepts]
    syn_lines = [f"{c.wnid} {', '.join(names)}".replace("_", " ")
                 for c, names in zip(concepts, lemmas, strict=True)]
    _write_lines(out / "info/synsets.txt", syn_lines)
    queries = [f"{c.index + 1} {c.name.replace(' ', '+')}" for c in concepts]
    qfiles = ["queries.txt"] if version == 2 else ["queries_google.txt", "queries_flickr.txt"]
    for qfile in qfiles:
        _write_lines(out / "info" / qfile, queries)
    _write_lines(out / "info/queries_synsets_map.txt",
                 [f"{c.index + 1} {c.index}" for c in concepts])


def _eval_split(out: Path, split: str, per: int, concepts: list[Concept],
                jobs: list[tuple[Path, int]]) -> list[Record]:
    """A clean val or test split: `per` images a concept, listed, their images queued in `jobs`."""
    names, folder, records = [], f"{split}_images_256", []
    (out / folder).mkdir()
    for i in range(per * len(concepts)):
        c = concepts[i % len(concepts)]
        name = f"{split}{i + 1:06d}.jpg"
        names.append((name, c.index))
        jobs.append((out / folder / name, c.index))
        records.append(Record(id=name, path=f"{folder}/{name}", split=split,
                              label=c.index if split == "val" else None))
    _write_lines(out / f"info/{split}_filelist.txt",
                 [f"{n} {lab}" if split == "val" else n for n, lab in names])
    if split == "test":
        _write_lines(out / "truth/test_labels.txt", [f"{n} {lab}" for n, lab in names])
    return records


def generate(out: str | Path, cfg: SynthConfig) -> dict[str, list[Record]]:
    """Write the dataset under `out` (replacing it); return the records written, by split."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    rng = random.Random(cfg.seed)
    concepts = pick_concepts(cfg)
    qfmt = "q%05d" if cfg.version == 2 else "q%04d"
    meta_dir = out / "meta" if cfg.version == 2 else out
    (out / "truth").mkdir(parents=True)
    w, h = cfg.image_width, cfg.image_height
    _write_info(out, concepts, cfg.version)

    counts = _class_counts(cfg, len(concepts), rng)
    records: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    lists: dict[str, list[str]] = {"google": [], "flickr": []}
    metas: dict[str, list[str]] = {"google": [], "flickr": []}
    truth: list[str] = []
    jobs = []
    for source in ("google", "flickr"):
        for c in concepts:
            n_flickr = round(counts[c.index] * cfg.flickr_fraction)
            n = n_flickr if source == "flickr" else counts[c.index] - n_flickr
            qdir = f"{source}/{qfmt % (c.index + 1)}"
            items = []
            for k in range(n):
                true = _noisy_concept(c, concepts, cfg, rng)
                item = {"id": f"{source[0]}{c.index:03d}{k:05d}",
                        **make_text(concepts[true], rng, cfg, source, query=c)}
                item.update({"site": "www.example.com",
                             "page_url": f"http://www.example.com/{c.index}/{k}"}
                            if source == "google" else {"url": f"http://flickr.example/{c.index}/{k}"})
                items.append(item)
                rel = f"{qdir}/{k + 1:06d}.jpg"
                lists[source].append(f"{rel} {c.index}")
                metas[source].append(f"{qdir}.json {k + 1}")
                truth.append(f"{rel} {true}")
                jobs.append((out / rel, true))
                records["train"].append(Record(
                    id=rel, path=rel, split="train", label=c.index, source=source,
                    query=c.index + 1, query_text=c.name, title=item["title"],
                    description=item["description"], tags=list(item.get("tags", []))))
            (meta_dir / source).mkdir(parents=True, exist_ok=True)
            (meta_dir / f"{qdir}.json").write_text(json.dumps(items, indent=0))
    lists_by_name = (("all", ("google", "flickr")), ("google", ("google",)),
                     ("flickr", ("flickr",)))
    for name, parts in lists_by_name:
        _write_lines(out / f"info/train_filelist_{name}.txt", [x for p in parts for x in lists[p]])
        _write_lines(out / f"info/train_meta_list_{name}.txt", [x for p in parts for x in metas[p]])
    _write_lines(out / "truth/train_true_labels.txt", truth)

    for split, per in (("val", cfg.val_per_class), ("test", cfg.test_per_class)):
        records[split] = _eval_split(out, split, per, concepts, jobs)
    (out / "truth/README.txt").write_text(
        "True concepts of the generated images, for measuring noise only. Training never reads "
        "this.\n")

    if cfg.images:
        for path, true in progress(jobs, desc="synth images", unit="img"):
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_concept(concepts[true], rng, w, h).save(path, quality=90)
    return records


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def run_synth(*, cfg: SynthConfig, out: Path) -> dict[str, Any]:
    """The `synth` stage: generate, and count what was written."""
    t0 = time.time()
    records = generate(out, cfg)
    return {"root": str(out), **{s: len(r) for s, r in records.items()},
            "seconds": round(time.time() - t0, 2)}
