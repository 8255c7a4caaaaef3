"""Keywords from web text: cleaning, and recognising nouns and adjectives with NLTK + WordNet.

Cleaning (`clean_text`): cap the length, repair mojibake (UTF-8 read as Latin-1 or cp1252:
"cafÃ©" -> "café", "donâ€™t" -> "don't") with ftfy, unescape HTML entities, drop markup and URLs,
split camelCase joins (tags only), fold accents to ASCII, lowercase, and keep runs of letters (with
inner apostrophes and hyphens). Other scripts simply vanish; nothing raises. Cleaning is idempotent.
ftfy runs only where a cheap pattern finds what mojibake looks like, so clean text, accented or
not, pays almost nothing for it.

Recognising (`KeywordRecogniser`): NLTK's averaged-perceptron tagger when its model is installed;
otherwise, as on machines without NLTK's downloads, a WordNet recogniser: a word's lemma comes from
WordNet's morphology (`morphy`), and its part of speech is the one whose senses were seen most in
WordNet's sense-tagged corpus (`cntlist` counts via `index.sense`, plus 0.5 a sense so unseen
senses still count), ties going noun > adjective > verb > adverb. Nouns and adjectives are kept;
stop words and one-letter words are not. A word WordNet does not know at all (a brand, a loan word
such as "kurta", a shop's coinage) is kept as a plain token (part of speech "x") when it has at
least three letters: on real titles those are often the words that name the thing (with
`keep_unknown` off they are dropped, as before). Multi-word WordNet nouns in the text ("mule deer",
"big cat", "national park") become one keyword. Every word's answer is cached: a 16M-image corpus
has a vocabulary of a few hundred thousand distinct words, so WordNet is asked once per word.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable

import ftfy

from webly.labels.wordnet import wordnet

# The text cap (characters per field) for tagging: enough for any real description.
MAX_TAG_CHARS = 10_000
MAX_NGRAM = 4

# NLTK's English stop word list (nltk_data corpora/stopwords/english), inlined: no download needed.
STOP_WORDS = frozenset("""
a about above after again against ain all am an and any are aren aren't as at be because been
before being below between both but by can couldn couldn't d did didn didn't do does doesn
doesn't doing don don't down during each few for from further had hadn hadn't has hasn hasn't
have haven haven't having he her here hers herself him himself his how i if in into is isn isn't
it it's its itself just ll m ma me mightn mightn't more most mustn mustn't my myself needn
needn't no nor not now o of off on once only or other our ours ourselves out over own re s same
shan shan't she she's should should've shouldn shouldn't so some such t than that that'll the
their theirs them themselves then there these they this those through to too under until up ve
very was wasn wasn't we were weren weren't what when where which while who whom why will with
won won't wouldn wouldn't y you you'd you'll you're you've your yours yourself yourselves
""".split())  # noqa: SIM905 (one long list, wrapped)

_URL = re.compile(r"(?:https?://|ftp://|www\.)\S*", re.IGNORECASE)
_MARKUP = re.compile(r"<[^<>]{0,1000}>")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_NOT_LETTERS = re.compile(r"[^a-z'\-]+")
_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")
# HTML is unescaped by html.unescape below, once: ftfy must not unescape it a second time.
_FTFY = ftfy.TextFixerConfig(unescape_html=False, explain=False)
# UTF-8 read as Latin-1 or Windows-1252 always shows a lead byte (U+00C2-U+00F4) followed by what
# a continuation byte (0x80-0xBF) reads as there; real accented text ("café", "Zürich") almost
# never does. ftfy (tens of microseconds a document) runs only where this cheap test fires.
_MOJIBAKE = re.compile("[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e"
                       "\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030"
                       "\u2039\u203a\u20ac\u2122]")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})  # don’t -> don't


def clean_text(text: str, *, camel: bool = False, max_chars: int = MAX_TAG_CHARS,
               fix_mojibake: bool = True) -> str:
    """Web text -> lowercase words separated by single spaces (see the module docstring)."""
    text = text[:max_chars]
    if not text.isascii():
        if fix_mojibake and _MOJIBAKE.search(text):
            text = ftfy.fix_text(text, _FTFY)
        text = text.translate(_APOSTROPHES)
    text = html.unescape(text)
    text = _URL.sub(" ", _MARKUP.sub(" ", text))
    if camel:
        text = _CAMEL.sub(" ", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return " ".join(_WORD.findall(_NOT_LETTERS.sub(" ", text)))


def text_segments(title: str, description: str, tags: Iterable[str],
                  query_text: str = "") -> list[str]:
    """The cleaned pieces of an image's text; n-grams never span two pieces (two tags, say)."""
    segs = [clean_text(title), clean_text(description), clean_text(query_text)]
    segs += [clean_text(t, camel=True, max_chars=200) for t in tags]
    return [s for s in segs if s]


POS_ORDER = ("n", "a", "v", "r")  # tie-break order
# x: a word WordNet does not know, kept as a token; nv: a word that is a verb or adverb first but
# also a noun ("tie", "clutch"): kept here, and in the vocabulary only where a noun sense of it fits
# the classes of its images (webly.labels.tagging, webly.labels.senses)
KEEP_POS = ("n", "a", "x", "nv")
MIN_TOKEN_CHARS = 3  # unknown words shorter than this are mostly fragments ("xl", "ss")
MAX_TOKEN_CHARS = 24  # and longer ones run-together junk ("xxxxxxxx...", glued hashtags)


class WordNetPOS:
    """Lemma and part of speech of a single word from WordNet alone (no caching here)."""

    name = "wordnet-sense-frequency"

    def __init__(self) -> None:
        self.wn = wordnet()

    def lookup(self, word: str) -> tuple[str, str] | None:
        """(lemma, pos) of `word`, pos in n/a/v/r, or None if WordNet does not know it."""
        best: tuple[float, int, str, str] | None = None
        for rank, pos in enumerate(POS_ORDER):
            for form in self.wn._morphy(word, pos):  # "saw" -> saw (v), see (v): each scored
                score = 0.0
                for syn in self.wn.synsets(form, pos):
                    for lemma in syn.lemmas():
                        if lemma.name().lower() == form:
                            score += lemma.count() + 0.5
                if score and (best is None or (score, -rank) > (best[0], -best[1])):
                    best = (score, rank, form, pos)
        return None if best is None else (best[2], best[3])


class KeywordRecogniser:
    """Cleaned text segments -> unique keywords (noun/adjective lemmas, multi-word nouns)."""

    def __init__(self, *, cache: bool = True, tagger: str = "auto",
                 keep_unknown: bool = True) -> None:
        self.pos = WordNetPOS()
        self.keep_unknown = keep_unknown
        self.cache: dict[str, tuple[str, str] | None] | None = {} if cache else None
        self.multiword = {name for name in self.pos.wn.all_lemma_names("n") if "_" in name}
        self.multi_len: dict[str, int] = {}  # first word -> longest multi-word noun it starts
        for name in self.multiword:
            first, n = name.split("_", 1)[0], name.count("_") + 1
            self.multi_len[first] = max(n, self.multi_len.get(first, 0))
        # "flip-flop" written as two words ("flip flops") is the same noun
        self.hyphenated = {n for n in self.pos.wn.all_lemma_names("n") if n.count("-") == 1
                           and "_" not in n}
        for name in self.hyphenated:
            first = name.split("-", 1)[0]
            self.multi_len[first] = max(2, self.multi_len.get(first, 0))
        self.perceptron = _perceptron_tagger() if tagger in ("auto", "perceptron") else None
        if tagger == "perceptron" and self.perceptron is None:
            from webly.core.errors import WeblyError

            raise WeblyError("NLTK's averaged_perceptron_tagger_eng model is not installed")
        self.name = "nltk-averaged-perceptron" if self.perceptron else WordNetPOS.name

    def word(self, word: str) -> tuple[str, str] | None:
        if self.cache is None:
            return self._word(word)
        hit = self.cache.get(word, False)
        if hit is False:
            hit = self.cache[word] = self._word(word)
        return hit

    def _word(self, word: str) -> tuple[str, str] | None:
        if len(word) < 2 or word in STOP_WORDS:
            return None
        if word.endswith("'s") and len(word) > 3:  # a possessive: "men's" is man, not men's room
            word = word[:-2]
        found = self.pos.lookup(word)
        if found is None and self.keep_unknown and \
                MIN_TOKEN_CHARS <= len(word) <= MAX_TOKEN_CHARS and word not in STOP_WORDS:
            return word, "x"
        if found is not None and found[1] in ("v", "r"):
            nouns = self.pos.wn._morphy(word, "n")  # "tie", "clutch": verbs first, nouns too
            if nouns:
                return nouns[0], "nv"
        return found

    def keywords(self, segments: Iterable[str]) -> list[str]:
        out: dict[str, None] = {}  # ordered set
        for seg in segments:
            tokens = seg.split()
            tags = self.perceptron(tokens) if self.perceptron else None
            i = 0
            while i < len(tokens):
                j, lemma = self._multiword(tokens, i)
                if j:
                    out[lemma] = None
                    i = j
                    continue
                found = self.word(tokens[i])
                if found and (found[1] in KEEP_POS if tags is None or found[1] == "x"
                              else tags[i][1][:2] in ("NN", "JJ")):
                    out[found[0].replace("_", " ")] = None
                i += 1
        return list(out)

    def _multiword(self, tokens: list[str], i: int) -> tuple[int, str]:
        """(end, lemma) of the longest multi-word WordNet noun starting at token i, or (0, "")."""
        longest = self.multi_len.get(tokens[i], 0)
        for j in range(min(len(tokens), i + min(longest, MAX_NGRAM)), i + 1, -1):
            heads = [tokens[j - 1]]
            last = self.word(tokens[j - 1])  # plural head: "big cats" -> big cat
            if last and last[1] in ("n", "nv") and last[0] != tokens[j - 1]:
                heads.append(last[0])
            for head in heads:
                words = [*tokens[i:j - 1], head]
                if "_".join(words) in self.multiword:
                    return j, " ".join(words)
                if j == i + 2 and "-".join(words) in self.hyphenated:
                    return j, "-".join(words)
        return 0, ""


def _perceptron_tagger():
    """NLTK's pos_tag if its model is installed (never downloads), else None."""
    import nltk

    try:
        nltk.data.find("taggers/averaged_perceptron_tagger_eng/")
    except LookupError:
        return None
    return nltk.pos_tag
