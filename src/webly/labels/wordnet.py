"""Make WordNet 3.0 usable by NLTK without its downloader.

Order of preference: NLTK's own `corpora/wordnet` data if present; else the Debian files in
`/usr/share/wordnet` (packages `wordnet-base`, `wordnet-sense-index`) copied into NLTK's layout in a
cache folder, with the `lexnames` file NLTK needs and Debian does not ship generated from the 45
standard lexicographer file names; else `nltk.download` when online. The cache folder is added to
`nltk.data.path`, so `nltk.corpus.wordnet` and NLTK's lemmatiser work everywhere in the process.
"""

from __future__ import annotations

import os
import shutil
import socket
import warnings
from functools import lru_cache
from pathlib import Path

from webly.core.errors import WeblyError

DEBIAN_DIR = Path("/usr/share/wordnet")

# WordNet's lexicographer files, in index order (lexnames(5WN)); NLTK reads "NN\tname\tpos".
LEXNAMES = [
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1),
    ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1),
    ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1),
    ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2),
    ("verb.competition", 2), ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2),
    ("verb.emotion", 2), ("verb.motion", 2), ("verb.perception", 2), ("verb.possession", 2),
    ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2), ("adj.ppl", 3),
]
# Files NLTK's WordNetCorpusReader opens (index.sense too: NLTK 3.10 reads it when it loads, to map
# sense keys; Debian's wordnet-sense-index); cntlist.rev gives sense counts.
REQUIRED = [f"{k}.{p}" for k in ("data", "index") for p in ("noun", "verb", "adj", "adv")]
REQUIRED += [f"{p}.exc" for p in ("noun", "verb", "adj", "adv")] + ["index.sense"]
OPTIONAL = ["cntlist.rev", "cntlist"]

INSTALL_HINT = (
    "WordNet 3.0 is not available: install Debian's packages "
    "(apt-get install wordnet-base wordnet-sense-index), or NLTK's data "
    "(python -m nltk.downloader wordnet), or point WEBLY_WORDNET_DIR at a folder of WordNet dict "
    "files"
)


def cache_dir() -> Path:
    return Path(os.environ.get("WEBLY_CACHE", Path.home() / ".cache" / "webly"))


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{pos}\n" for i, (name, pos) in enumerate(LEXNAMES))


def build_nltk_layout(source: Path, nltk_root: Path) -> Path:
    """Copy WordNet dict files from `source` into `nltk_root/corpora/wordnet` (atomically)."""
    missing = [f for f in REQUIRED if not (source / f).is_file()]
    if missing:
        raise WeblyError(f"{source}: not a WordNet dict folder, missing {', '.join(missing)}")
    target = nltk_root / "corpora" / "wordnet"
    if (target / "lexnames").is_file():
        return target
    tmp = target.with_name(f".wordnet.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in REQUIRED + OPTIONAL:
        if (source / name).is_file():
            shutil.copyfile(source / name, tmp / name)
    (tmp / "lexnames").write_text(lexnames_text(), encoding="ascii")
    (tmp / "LICENSE").write_text("WordNet 3.0 license: "
                                 "https://wordnet.princeton.edu/license-and-commercial-use\n")
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _nltk_has_wordnet() -> bool:
    import nltk

    for name in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(name)
            return True
        except LookupError:
            pass
    return False


def _try_download(nltk_root: Path, timeout: float = 5.0) -> bool:
    import nltk

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        return bool(nltk.download("wordnet", download_dir=str(nltk_root), quiet=True,
                                  raise_on_error=False))
    except Exception:
        return False
    finally:
        socket.setdefaulttimeout(old)


def provision(*, debian_dir: Path | None = None, nltk_root: Path | None = None,
              allow_download: bool = True, use_nltk_data: bool = True) -> str:
    """Make WordNet importable by NLTK; return a one-line description of where it came from."""
    import nltk

    nltk_root = Path(nltk_root or cache_dir() / "nltk_data")
    if str(nltk_root) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_root))
    if (nltk_root / "corpora" / "wordnet" / "lexnames").is_file():
        return f"cached NLTK layout in {nltk_root}"
    if use_nltk_data and _nltk_has_wordnet():
        return "NLTK data"
    env_dir = os.environ.get("WEBLY_WORDNET_DIR")
    for src in [Path(p) for p in (debian_dir, env_dir, DEBIAN_DIR) if p]:
        if (src / "data.noun").is_file():
            build_nltk_layout(src, nltk_root)
            return f"built from {src} into {nltk_root}"
    if allow_download and _try_download(nltk_root):
        return f"downloaded by nltk into {nltk_root}"
    raise WeblyError(INSTALL_HINT)


@lru_cache(maxsize=1)
def wordnet():
    """The WordNet corpus reader, provisioned on first use (cached for the process)."""
    provision()
    from nltk.corpus import wordnet as wn

    wn.ensure_loaded()
    return wn


def synset_from_wnid(wnid: str):
    """`n02432511` -> Synset('mule_deer.n.01'); WeblyError if WordNet 3.0 lacks it."""
    wn = wordnet()
    if len(wnid) != 9 or wnid[0] not in "nvar" or not wnid[1:].isdigit():
        raise WeblyError(f"not a WordNet id: {wnid!r} (expected e.g. n02432511)")
    with warnings.catch_warnings():  # NLTK warns and returns None for unknown offsets
        warnings.simplefilter("ignore")
        try:
            syn = wn.synset_from_pos_and_offset(wnid[0], int(wnid[1:]))
        except Exception:
            syn = None
    if syn is None:
        raise WeblyError(f"WordNet 3.0 has no synset {wnid}")
    return syn


def wnid_of(synset) -> str:
    return f"{synset.pos()}{synset.offset():08d}"
