"""fashion53: the seed's text half (WT-Set, LW-Set) on real shop photos and their real titles.

    python -m benchmarks.datasets.fashion53 --data ../shared/data/fashion53.tar.gz --quick  # 8 min*
    python -m benchmarks.datasets.fashion53 --data ../shared/data/fashion53.tar.gz  # 40 min*
    python -m benchmarks.datasets.fashion53 --data DIR --quick --noise title40  # other labels
    python -m benchmarks.datasets.fashion53 --data DIR --full  # for a GPU

(* measured on a 2-core VM with one thread each, two runs side by side: OMP_NUM_THREADS=1 for
both gets 1.4x the throughput of one 2-thread run.)

`--data` is the tarball (extracted once into a cache keyed by its bytes) or any folder in its
layout (WebVision 2.0: info/, train/, val/, test/, meta/). The training labels are that folder's
`info/train_filelist.txt` (`--noise shipped`), or made from its clean ones with a fixed seed:
`symmetric40` (40% to a uniformly chosen other class), `wordnet40` (40% to one of the three
classes closest to the true one in WordNet) or `title40` (40% to the class the title's own words
point to most after the true one: text-correlated noise, where the text cannot vouch for the
label). The prepared copy (hard links, cached by a hash of the label files and options) keeps the
clean val split for every choice and the clean test split for scoring; a second copy with the
clean training labels feeds row 7, the ceiling, and nothing else. The steps are
`configs/fashion53/recipe.yaml`, run by `webly run` on the shared harness
(benchmarks/datasets/harness.py).
After training, the clean training labels are read (here only) to measure: the keyword audit (a
keyword-only classifier trained out-of-fold on the noisy labels, balanced top-1 against the clean
ones), wrong-label detection (average precision of 1 - p(label), and precision at k = the number
of wrong labels, for the images alone, the text alone and both) and what pseudo-labelling kept.
Prints a table and writes RUN/benchmark.json and RUN/benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import common, harness
from benchmarks.datasets.harness import Row, Spec
from webly.app.explorer import average_precision, precision_at_k  # noqa: E402

RECIPE = harness.REPO / "configs/fashion53/recipe.yaml"
SYSTEM = ("ce", "train_ce", "val_ce_probe", "pl", "final")
ROWS = [Row("1", "CE on the noisy labels, no pretraining (w/o)", "score_ce", ("ce",), "ce"),
        Row("2", "CE pretraining on the noisy labels -> new head -> class-balanced finetune",
            "score_ft_ce", ("pre_ce", "ft_ce")),
        Row("3", "LW-Set pretraining -> new head -> class-balanced finetune", "score_ft_lw",
            ("pre_lw", "ft_lw")),
        Row("4", "WT-Set pretraining -> new head -> class-balanced finetune", "score_ft_wt",
            ("pre_wt", "ft_wt")),
        Row("5", "system: row 1 labels the training images, text as evidence; val chooses "
                 "the given labels or a text weight x threshold's pseudo-labels (a probe per "
                 "candidate); CE continued on them (2 units)",
            "score_system", SYSTEM, "system"),
        Row("6", "CE for the system's total compute", "score_ce_long", ("ce_long",),
            "same_compute"),
        Row("7", "CE on the clean labels (ceiling, measuring only)", "score_ce_clean",
            ("ce_clean",), "clean")]
# the only steps that may read the clean copy (a test checks that these, and no other, do)
CLEAN_STEPS = ("manifest_clean", "ce_clean", "test_ce_clean", "score_ce_clean")
SHARE = {"ce": 1.0, "pre_ce": 0.5, "ft_ce": 0.5, "pre_lw": 0.5, "ft_lw": 0.5, "pre_wt": 0.5,
         "ft_wt": 0.5, "final": 2.0, "ce_long": 3.0, "ce_clean": 1.0}
# ce_long's share is what the system's steps spent, measured after they ran (Spec.late_match): CE
# and final (3 units), the labelling passes (each training image once: 1 / (3 x epochs)
# of a unit; val's too) and the probes' multiply-adds
EPOCHS = {  # epochs of one unit; ~10 units a run (fp32 on 2 cores: ~400 img/s at 32 px)
    "quick": 1,  # v3: 8.2 min measured (one thread, beside another run on the other core)
    "default": 6,  # v3: 42.5 and 38.1 min measured (two seeds side by side, one thread each)
    "full": 40,
}
NATIVE_SIZE = 32  # one unit: `epochs` passes over the training images at 32 px
NOISES = ("shipped", "symmetric40", "wordnet40", "title40")
FRACTION = 0.4
# ways real web text fails (`--titles`), applied to the training titles (val and test have none)
TITLES = ("shipped", "nameless", "swapped", "other", "tags")
COLOURS = {"black", "white", "blue", "red", "green", "grey", "gray", "brown", "pink", "yellow",
           "navy", "purple", "orange", "beige", "maroon", "olive", "silver", "gold", "cream"}
GENERIC_TAGS = ("fashion", "style", "new", "sale", "shopping", "online", "trendy", "look",
                "ootd", "instafashion", "outfit", "collection", "india", "summer", "gift",
                "offer", "best", "buy", "photo", "latest")


def _titles(root: Path) -> list[str]:
    """Training titles in train_filelist order (through train_meta_list and meta/*.json)."""
    cache: dict[str, list] = {}
    out = []
    for line in (root / "info/train_meta_list.txt").read_text().splitlines():
        if not line.strip():
            continue
        name, row = line.split()
        if name not in cache:
            cache[name] = json.loads((root / "meta" / name).read_text())
        out.append(cache[name][int(row) - 1].get("title", ""))
    return out


def make_noise(root: Path, noise: str, seed: int = 0) -> np.ndarray:
    """The training labels of a label set, in train_filelist order."""
    _, given = common.read_list(root / "info/train_filelist.txt")
    if noise == "shipped":
        return given
    _, clean = common.read_list(root / "info/train_clean_filelist.txt")
    if noise == "clean":
        return clean
    wnids = [line.split()[0] for line in (root / "info/synsets.txt").read_text().splitlines()
             if line.strip()]
    rng = np.random.default_rng(seed)
    flips = np.sort(common.choose_flips(len(clean), FRACTION, rng))
    if noise == "symmetric40":
        return common.to_other_class(clean, flips, len(wnids), rng)
    if noise == "wordnet40":
        return common.to_nearest(clean, wnids, flips, rng)
    if noise == "title40":
        return common.to_title_class(clean, _titles(root), len(wnids), flips)
    raise SystemExit(f"unknown --noise {noise!r}: {', '.join(NOISES)}")


def class_words(root: Path) -> set[str]:
    """Every word that names one of the classes: the words of the class names, and the head word
    (the last: "polo_shirt" -> "shirt") of each WordNet lemma of the class's synset and all its
    hyponyms, each also without a plural ending."""
    from webly.labels.wordnet import synset_from_wnid

    words: set[str] = set()
    for line in (root / "info/synsets.txt").read_text().splitlines():
        if not line.strip():
            continue
        wnid, _, name = line.partition(" ")
        words.update(w for w in re.findall(r"[a-z]+", name.lower()) if w not in ("and", "of"))
        syn = synset_from_wnid(wnid)
        if syn is not None:
            for s in [syn, *syn.closure(lambda x: x.hyponyms())]:
                for lemma in s.lemma_names():
                    words.update(re.findall(r"[a-z]+", lemma.lower())[-1:])
    words |= {_singular(w) for w in words}
    return words - COLOURS  # "whites" is clothing in WordNet; the colour stays in a title


def _singular(word: str) -> str:
    for end, new in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(end) and len(word) > len(end) + 2:
            return word[: -len(end)] + new
    return word


def make_titles(root: Path, titles: str, labels: np.ndarray, seed: int = 0) -> list[str]:
    """The training titles of a title variant, in train_filelist order (`labels`: the noisy
    training labels of the label set, which `swapped` follows):
    - shipped: as the sellers wrote them;
    - nameless: every word that names a class removed (`class_words`: brand, colour, style,
      gender remain), as a Flickr title names the place or the event, not the object;
    - swapped: each image gets the title of another image with the same (noisy) label, as text
      found by the same search query: it repeats the label and says nothing about the image;
    - other: each image gets the title of a random other image: text of another product;
    - tags: a tag list, no sentence: half the title's words (each kept with probability 1/2, at
      least one), shuffled, and two generic tags from a fixed pool, comma-separated."""
    given = _titles(root)
    if titles == "shipped":
        return given
    rng = np.random.default_rng(1000 + seed)
    if titles == "nameless":
        drop = class_words(root)
        out = []
        for t in given:
            kept = [w for w in t.split()  # "T-shirt" goes whole: "shirt" names a class
                    if not any(p in drop or _singular(p) in drop
                               for p in re.findall(r"[a-z]+", w.lower()))]
            out.append(" ".join(kept))
        return out
    if titles == "swapped":
        out = list(given)
        for y in np.unique(labels):
            idx = np.flatnonzero(labels == y)
            for i, j in zip(idx, rng.permutation(idx), strict=True):
                out[i] = given[j]
        return out
    if titles == "other":
        return [given[j] for j in rng.permutation(len(given))]
    if titles == "tags":
        out = []
        for t in given:
            words = re.findall(r"[A-Za-z0-9']+", t.lower())
            keep = [w for w in words if rng.random() < 0.5] or words[:1]
            tags = keep + list(rng.choice(GENERIC_TAGS, 2, replace=False))
            out.append(", ".join(tags[k] for k in rng.permutation(len(tags))))
        return out
    raise SystemExit(f"unknown --titles {titles!r}: {', '.join(TITLES)}")


def write_titles(root: Path, target: Path, new: list[str]) -> None:
    """meta/*.json of `target` with the training titles replaced (train_meta_list order)."""
    files: dict[str, list] = {}
    lines = [ln.split() for ln in (root / "info/train_meta_list.txt").read_text().splitlines()
             if ln.strip()]
    for (name, row), title in zip(lines, new, strict=True):
        if name not in files:
            files[name] = json.loads((root / "meta" / name).read_text())
        files[name][int(row) - 1] = {**files[name][int(row) - 1], "title": title}
    (target / "meta").mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        (target / "meta" / name).write_text(json.dumps(records))


def prepare(root: Path, cache: Path, noise: str, seed: int = 0,
            titles: str = "shipped") -> Path:
    """A cached copy (hard links) with the label set's training labels and the title variant's
    training titles; val and test as given (clean). The clean copy (`noise` "clean") is prepared
    the same way."""
    options = {"seed": seed} | ({"titles": titles} if titles != "shipped" else {})
    target = common.prepared_folder(root, cache, noise, **options)
    if (target / ".complete").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    paths, _ = common.read_list(root / "info/train_filelist.txt")
    clean_paths, clean = common.read_list(root / "info/train_clean_filelist.txt")
    if clean_paths != paths:
        raise SystemExit(f"{root}: train_filelist and train_clean_filelist list different images")
    labels = make_noise(root, noise, seed)
    (target / "info").mkdir(parents=True)
    for name in ("synsets.txt", "train_meta_list.txt", "val_filelist.txt", "test_filelist.txt",
                 "train_clean_filelist.txt"):
        shutil.copy(root / "info" / name, target / "info" / name)
    common.write_list(target / "info/train_filelist.txt", zip(paths, labels, strict=True))
    for folder in ("train", "val", "test") + (("meta",) if titles == "shipped" else ()):
        for f in (root / folder).iterdir():
            common.link(f, target / folder / f.name)
    if titles != "shipped":
        write_titles(root, target, make_titles(root, titles, labels, seed))
    return common.seal(target, noise, labels, clean, titles=titles)


def _prepare(data: Path, cache: Path, noise: str, args: argparse.Namespace) -> dict[str, Path]:
    root = common.find_root(data, cache, "fashion53")
    titles = getattr(args, "titles", "shipped") or "shipped"
    return {"DATA": prepare(root, cache, noise, titles=titles),
            "DATA_CLEAN": prepare(root, cache, "clean", titles=titles)}


def _options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--titles", default="shipped", choices=TITLES,
                    help="the training titles: as shipped, or a way real web text fails "
                         "(make_titles)")


# -- what the text says, measured against the clean labels after training ----------------------
def detection(scores: dict[str, np.ndarray], wrong: np.ndarray) -> dict[str, dict[str, float]]:
    """AP and precision at k = the number of wrong labels, of each ranking (1 - p(label))."""
    out = {}
    for name, p in scores.items():
        score = 1 - np.nan_to_num(p, nan=1.0)
        out[name] = {"ap": round(average_precision(score, wrong), 4),
                     "precision_at_k": round(precision_at_k(score, wrong), 4)}
    return out


def text_results(out: Path, root: Path, true_of_row: np.ndarray) -> dict[str, Any]:
    """The keyword audit and wrong-label detection (images, text, both) of this run."""
    import pyarrow.parquet as pq

    from webly.data.manifest import Manifest
    from webly.labels import textclf
    from webly.labels.tagging import load_tags

    manifest = Manifest(out / "manifest/manifest.parquet")
    labels = np.asarray(manifest.read(["label"]).column(0).fill_null(-1).to_numpy(), np.int64)
    rows = np.flatnonzero(true_of_row >= 0)
    keywords, vocab = load_tags(out / "tags")
    stats = json.loads((out / "tags/stats.json").read_text())
    res: dict[str, Any] = {
        "keywords": {"vocabulary": len(vocab),
                     "per_training_image": round(float(keywords[rows].sum() / len(rows)), 3),
                     "training_images_without": int((np.diff(keywords[rows].indptr) == 0).sum()),
                     "with_a_sense": stats.get("senses", {}).get("keywords_with_a_sense")},
        "keyword_audit": textclf.audit(keywords[rows], labels[rows], true_of_row[rows], rows,
                                       manifest.num_classes),
    }
    if harness.ran(out, "lw"):  # (--rows may leave the LW-Set out)
        res["label_weights"] = {
            k: v for k, v in json.loads((out / "lw/stats.json").read_text()).items()
            if k in ("neighbours_per_concept", "neighbour_weight_mass_per_image",
                     "label_share_of_mass")}
    t = pq.read_table(out / "pl/scores.parquet").to_pydict()
    r = np.array(t["row"])
    wrong = np.array(t["label"]) != true_of_row[r]
    res["wrong_label_detection"] = detection(
        {"images": np.array(t["p_image"], float), "text": np.array(t["p_text"], float),
         "images_and_text": np.array(t["p_label"], float)}, wrong)
    res["wrong_labels"] = int(wrong.sum())
    return res


def _markdown(res: dict[str, Any]) -> list[str]:
    a, k, d = res["keyword_audit"], res["keywords"], res["wrong_label_detection"]
    lw = res.get("label_weights")
    return [
        f"Keywords: {k['vocabulary']} in the vocabulary, {k['per_training_image']:.2f} a training "
        f"image ({k['training_images_without']} without any), {k['with_a_sense']} with a WordNet "
        f"sense. Keyword audit (keyword-only classifier, out-of-fold on the noisy labels, against "
        f"the clean ones): balanced top-1 {a['balanced_top1']:.2f}%, top-1 {a['top1']:.2f}%.",
        *([f"LW-Set: {lw['neighbours_per_concept']} neighbours a concept, their weight "
           f"{lw['neighbour_weight_mass_per_image']} an image against the label's 1 (the label "
           f"keeps {100 * lw['label_share_of_mass']:.1f}% of the mass)."] if lw else []),
        f"Wrong-label detection ({res['wrong_labels']} wrong labels), AP / precision at k: "
        + "; ".join(f"{name.replace('_', ' ')} {v['ap']:.3f} / {v['precision_at_k']:.3f}"
                    for name, v in d.items()) + "."]


def _pl_image(out: Path, root: Path, true_of_row: np.ndarray) -> dict[str, Any]:
    res = text_results(out, root, true_of_row)
    if harness.ran(out, "pl_image"):  # (--rows may leave it out)
        res["pseudo_labels_images_only"] = harness.label_effect(
            out / "pl_image/labels.parquet", true_of_row)
    return res


SPEC = Spec(name="fashion53", recipe=RECIPE, rows=ROWS, share=SHARE, pseudo_labels=("pl",),
            epochs=EPOCHS, native_size=NATIVE_SIZE, noises=NOISES, prepare=_prepare,
            match={"ce_long": SYSTEM}, late_match=True, extra=_pl_image, extra_markdown=_markdown,
            options=_options, variant=lambda a: "" if a.titles == "shipped" else a.titles)

if __name__ == "__main__":
    raise SystemExit(harness.main(SPEC, doc=__doc__))
