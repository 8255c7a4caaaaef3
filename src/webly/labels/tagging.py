"""`webly tag`: the weakly-tagged set (WT-Set): keywords for every image from its web text.

Pass 1 (parallel, resumable, splittable): the manifest is cut into tasks of `chunk_rows` rows
(within its row groups); each task tags its rows and writes `parts/part-NNNNNN.parquet`, one row
per image with its keyword list. A part that exists is complete (temp file + rename) and is not
redone. `--shard i/n` does only tasks i, i+n, ... so n machines share the work.

Merge (`webly tag merge`, or at the end of an unsharded run): document frequencies from all parts,
then the vocabulary: drop keywords in more than `max_df` of the images that have any keyword
(val/test images without text do not dilute it) and the `drop_top` most common, drop those in
fewer than `min_count`, keep the `max_vocab` most frequent. A word above `max_df` is kept all the
same when it says something about the labels: when the (noisy) class distribution of its images
differs from the prior by at least `keep_informative` bits (KL divergence). The seed drops the most
common words of 16M texts over 5,000 classes, which there are mostly words like "photo" that
spread over every class; on 53 classes a common word is often one that names a class or half the
label space ("t-shirt", "woman"), and a fixed document fraction threw those away. Pass 2 encodes
each part against the vocabulary into one CSR matrix. Memory is bounded by one task's rows, the
distinct-keyword count and the output matrix: never a dense images x keywords array.

Senses in context (`webly.labels.senses`): a keyword's WordNet sense is the one closest to the
classes of the images it appears in, or none when no sense fits ("nike" is the goddess in WordNet,
"puma" the cat: on product titles neither fits, and the word stays a plain token).

Outputs in the tags folder (each written whole or not at all; `stats.json` last):
    vocab.tsv            keyword, doc_frequency, synset (its sense in context, or empty), sense_fit
    keywords.npz         scipy.sparse CSR uint8, images x keywords, row order = manifest order
    stats.json           images, vocabulary size, keywords per image (mean/median/histogram),
                         images with none, the recogniser used, text fields fixed
    keyword_distribution.png, keywords_per_image.png
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from webly.core import faults
from webly.core.config import check_choices, opt, parse_part
from webly.core.errors import WeblyError
from webly.core.files import atomic_path, save_figure, write_atomic
from webly.core.progress import progress
from webly.data.manifest import Manifest
from webly.labels.text import MAX_TAG_CHARS, KeywordRecogniser, WordNetPOS, text_segments
from webly.labels.vocab import choose_senses, informative, manifest_labels, select_vocab

TEXT_COLUMNS = ["title", "description", "tags", "query_text"]


@dataclass
class TagConfig:
    max_df: float = opt(0.1, "drop keywords found in more than this fraction of images...")
    keep_informative: float = opt(0.1, "...unless their images' class distribution differs from "
                                       "the prior by this many bits (KL; 0: drop them all)")
    drop_top: int = opt(0, "also drop this many most common keywords")
    min_count: int = opt(5, "drop keywords found in fewer images than this")
    max_vocab: int = opt(35000, "keep at most this many keywords (most frequent first)")
    use_query: bool = opt(True, "add the search query's text to each image's text")
    keep_unknown: bool = opt(True, "keep words WordNet does not know (brands, loan words such "
                                   "as 'kurta') as plain keyword tokens")
    sense_fit: float = opt(0.5, "a keyword gets a WordNet sense only when the sense's mean "
                                "similarity to its images' classes reaches this (0: the most "
                                "frequent sense that is no proper name)")
    chunk_rows: int = opt(16384, "rows per task (memory bound per worker)")
    workers: int = opt(1, "processes tagging in parallel")
    tagger: Literal["auto", "wordnet", "perceptron"] = opt("auto",
                                                           "part-of-speech recogniser (perceptron: "
                                                           "NLTK's, when its model is installed)")
    shard: str = opt("", "'i/n': do only every n-th task from i, then run `webly tag merge`")

    def validate(self) -> None:
        if not 0 < self.max_df <= 1 or not 0 <= self.sense_fit <= 1:
            raise WeblyError("tag.max_df must be in (0, 1] and sense_fit in [0, 1]")
        if self.keep_informative < 0:
            raise WeblyError("tag.keep_informative must not be negative")
        if min(self.drop_top, self.min_count) < 0 or self.max_vocab < 1 or self.chunk_rows < 1:
            raise WeblyError("tag: drop_top, min_count >= 0; max_vocab, chunk_rows >= 1")
        check_choices(self, "tag")
        if self.shard:
            parse_part(self.shard, "tag.shard")


# -- pass 1 ----------------------------------------------------------------------------------------
@dataclass
class Task:
    index: int
    row_group: int
    start: int  # within the row group
    stop: int


def plan_tasks(manifest: Manifest, chunk_rows: int) -> list[Task]:
    tasks = []
    meta = pq.ParquetFile(manifest.path).metadata
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        for start in range(0, n, chunk_rows):
            tasks.append(Task(len(tasks), g, start, min(n, start + chunk_rows)))
    return tasks


_RECOGNISERS: dict[tuple[str, bool], KeywordRecogniser] = {}  # one a process and setting


def _recogniser(tagger: str, keep_unknown: bool = True) -> KeywordRecogniser:
    key = (tagger, keep_unknown)
    if key not in _RECOGNISERS:
        _RECOGNISERS[key] = KeywordRecogniser(tagger=tagger, keep_unknown=keep_unknown)
    return _RECOGNISERS[key]


def _worker_init() -> None:
    """Forked workers must not share NLTK's open WordNet files (synset data, sense counts, sense
    index): a shared file offset makes concurrent seeks read each other's lines and silently
    corrupts parts of speech. Drop the handles; NLTK reopens them lazily, per process."""
    from webly.labels.wordnet import wordnet

    wn = wordnet()
    wn._data_file_map = {}
    wn._key_count_file = None
    wn._key_synset_file = None


def _tag_task(args: tuple[str, Task, Path, TagConfig]) -> tuple[int, dict[str, int]]:
    manifest_path, task, parts, cfg = args
    rec = _recogniser(cfg.tagger, cfg.keep_unknown)
    table = pq.ParquetFile(manifest_path).read_row_group(task.row_group, columns=TEXT_COLUMNS)
    table = table.slice(task.start, task.stop - task.start)
    counts: Counter = Counter()
    keywords = []
    for row in table.to_pylist():
        text = [row["title"] or "", row["description"] or "", row["tags"] or [],
                (row["query_text"] or "") if cfg.use_query else ""]
        if sum(len(t) for t in text[:2]) > 2 * MAX_TAG_CHARS:
            counts["text_truncated"] += 1
        kws = rec.keywords(text_segments(*text))
        counts["no_text"] += not any(text)
        keywords.append(kws)
    out = parts / f"part-{task.index:06d}.parquet"
    table = pa.table({"keywords": pa.array(keywords,
                                           pa.list_(pa.string()))}).replace_schema_metadata(
        {"webly": json.dumps({"task": task.index, "rows": len(keywords), "recogniser": rec.name})})
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return task.index, dict(counts)


def tag_parts(manifest_path: str | Path, out_dir: str | Path, cfg: TagConfig) -> dict[str, Any]:
    """Pass 1: write every missing part this shard owns; return counts of what it did."""
    manifest = Manifest(manifest_path)
    parts = Path(out_dir) / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    shard_i, shards = parse_part(cfg.shard, "tag.shard") if cfg.shard else (0, 1)
    tasks = plan_tasks(manifest, cfg.chunk_rows)
    write_atomic(parts / "plan.json", json.dumps({"tasks": len(tasks), "rows": len(manifest),
                                                 "chunk_rows": cfg.chunk_rows,
                                                 "manifest": str(Path(manifest.path).resolve())}))
    todo = [t for t in tasks if t.index % shards == shard_i
            and not (parts / f"part-{t.index:06d}.parquet").is_file()]
    # loaded before forking: workers inherit a warm WordNet
    rec = _recogniser(cfg.tagger, cfg.keep_unknown)
    counts: Counter = Counter()
    jobs = [(str(manifest.path), t, parts, cfg) for t in todo]
    if cfg.workers > 1 and len(jobs) > 1:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_worker_init) as pool:
            for _, c in progress(pool.map(_tag_task, jobs), desc="tag", total=len(jobs),
                                 unit="part"):
                counts.update(c)
                faults.point("tag.part")
    else:
        for job in progress(jobs, desc="tag", unit="part"):
            counts.update(_tag_task(job)[1])
            faults.point("tag.part")
    return {"tasks": len(tasks), "tagged_now": len(todo), "recogniser": rec.name, **counts}


# -- merge + pass 2 --------------------------------------------------------------------------------
def _part_files(out_dir: Path) -> list[Path]:
    parts = out_dir / "parts"
    plan_file = parts / "plan.json"
    if not plan_file.is_file():
        raise WeblyError(f"{parts}: no tagging plan; run `webly tag MANIFEST -o {out_dir}` first")
    plan = json.loads(plan_file.read_text())
    files = [parts / f"part-{i:06d}.parquet" for i in range(plan["tasks"])]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise WeblyError(f"{len(missing)} of {plan['tasks']} parts missing in {parts} "
                         f"(first: {', '.join(missing[:3])}): run the remaining shards")
    return files


def merge(out_dir: str | Path, cfg: TagConfig,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Vocabulary from all parts, then the CSR matrix, stats and plots."""
    out = Path(out_dir)
    files = _part_files(out)
    df: Counter = Counter()
    images = documents = 0  # max_df is a fraction of the images that have keywords at all
    recogniser = ""
    for f in progress(files, desc="count", unit="part"):
        pf = pq.ParquetFile(f)
        recogniser = json.loads(pf.schema_arrow.metadata[b"webly"])["recogniser"]
        col = pf.read(columns=["keywords"]).column(0).combine_chunks()
        images += len(col)
        documents += pc.sum(pc.greater(pc.list_value_length(col), 0)).as_py() or 0
        counts = pc.value_counts(col.flatten())  # keywords are unique within an image: df
        df.update(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                           strict=True)))
    labels, classes = manifest_labels(out)
    common = sorted(k for k, n in df.items() if n > cfg.max_df * documents)
    info = informative(files, common, labels, len(classes)) if cfg.keep_informative > 0 else {}
    vocab = select_vocab(df, documents, cfg, info)
    vocab_arr = pa.array([k for k, _ in vocab], pa.string())

    # pass 2, vectorised per part: keyword strings -> vocabulary ids, rows -> CSR offsets
    row_counts, indices = [], []
    for f in progress(files, desc="encode", unit="part"):
        col = pq.read_table(f).column(0).combine_chunks()
        lengths = pc.list_value_length(col).fill_null(0).to_numpy()
        ids = pc.index_in(col.flatten(), value_set=vocab_arr).fill_null(-1).to_numpy()
        keep = ids >= 0
        rows = np.repeat(np.arange(len(col)), lengths)
        row_counts.append(np.bincount(rows[keep], minlength=len(col)))
        indices.append(ids[keep].astype(np.int32))
    indptr = np.concatenate([[0],
                             np.cumsum(np.concatenate(row_counts))]) if row_counts else np.zeros(1)
    ind = np.concatenate(indices) if indices else np.zeros(0, np.int32)
    mat = sp.csr_matrix((np.ones(len(ind), np.uint8), ind, indptr.astype(np.int64)),
                        shape=(images, len(vocab)))
    mat.sort_indices()
    senses, fits = choose_senses(vocab, mat, labels, classes, cfg)
    # a word that is a verb or adverb first ("tie", "clutch") is a keyword only where a noun sense
    # of it fits its images' classes (webly.labels.text): drop the others' columns
    pos = WordNetPOS()
    in_context = cfg.sense_fit > 0 and labels is not None  # else no context: drop them all
    keep = [(bool(s) and in_context) or (pos.lookup(k) or ("", "n"))[1] not in ("v", "r")
            for (k, _), s in zip(vocab, senses, strict=True)]
    if not all(keep):
        cols = np.flatnonzero(keep)
        vocab, senses, fits = [vocab[c] for c in cols], [senses[c] for c in cols], fits[cols]
        mat = mat[:, cols].tocsr()
        mat.sort_indices()
    # every output is written in full beside its final name first, then renamed, stats.json last:
    # a failure (disk full, kill) leaves the previous tag set whole, never a mix of two
    write_atomic(out / ".vocab.new.tsv", "keyword\tdoc_frequency\tsynset\tsense_fit\n" + "".join(
        f"{k}\t{n}\t{s}\t{'' if f < 0 else f}\n"
        for (k, n), s, f in zip(vocab, senses, fits, strict=True)))
    with atomic_path(out / ".keywords.new.npz") as tmp:
        sp.save_npz(tmp, mat, compressed=True)
    stats = keyword_stats(mat, df, images, documents, cfg, recogniser)
    kept = {k for k, _ in vocab}
    stats["filters"]["above_max_df"] = {k: {"images": df[k], "bits": info.get(k, 0.0),
                                            "kept": k in kept} for k in common}
    stats["senses"] = {"rule": "in-context" if labels is not None and cfg.sense_fit > 0
                       else "most-frequent", "sense_fit": cfg.sense_fit,
                       "keywords_with_a_sense": sum(1 for x in senses if x)}
    stats.update(extra or {})
    write_atomic(out / ".stats.new.json", json.dumps(stats, indent=1) + "\n")
    plot_keywords(df, vocab, mat, out)
    # from here until the end the set reads as unfinished
    (out / "stats.json").unlink(missing_ok=True)
    os.replace(out / ".vocab.new.tsv", out / "vocab.tsv")
    os.replace(out / ".keywords.new.npz", out / "keywords.npz")
    os.replace(out / ".stats.new.json", out / "stats.json")
    return stats


def keyword_stats(mat: sp.csr_matrix, df: Counter, images: int, documents: int, cfg: TagConfig,
                  recogniser: str) -> dict[str, Any]:
    per_image = np.diff(mat.indptr)
    hist = np.bincount(np.minimum(per_image, 20), minlength=21)
    return {
        "images": images, "images_with_text_keywords": documents, "vocabulary": mat.shape[1],
        "distinct_keywords_before_filtering": len(df),
        "keywords_per_image_mean": round(float(per_image.mean()), 3) if images else 0.0,
        "keywords_per_image_median": float(np.median(per_image)) if images else 0.0,
        "keywords_per_image_histogram": {("20+" if i == 20 else str(i)): int(c) for i,
                                         c in enumerate(hist)},
        "images_without_keywords": int((per_image == 0).sum()),
        "recogniser": recogniser,
        "filters": {"max_df": cfg.max_df, "drop_top": cfg.drop_top, "min_count": cfg.min_count,
                    "max_vocab": cfg.max_vocab},
    }


def plot_keywords(df: Counter, vocab: list[tuple[str, int]], mat: sp.csr_matrix, out: Path) -> None:
    """The seed's "keyword distribution" chart (frequency by rank, log-log) and keywords/image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    freqs = np.array(sorted(df.values(), reverse=True), dtype=float)
    kept = {k for k, _ in vocab}
    kept_mask = np.array([k in kept for k, _ in sorted(df.items(), key=lambda kv: (-kv[1], kv[0]))])
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(freqs):
        ranks = np.arange(1, len(freqs) + 1)
        ax.loglog(ranks, freqs, color="0.6", label="all keywords")
        ax.loglog(ranks[kept_mask], freqs[kept_mask], ".", ms=2, color="C0",
                  label="kept (vocabulary)")
        ax.legend()
    ax.set(xlabel="keyword rank", ylabel="images with the keyword", title="Keyword distribution")
    save_figure(fig, out / "keyword_distribution.png", dpi=120)
    per_image = np.diff(mat.indptr)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(per_image, bins=np.arange(0, max(int(per_image.max(initial=0)), 1) + 2) - 0.5,
            color="C1")
    ax.set(xlabel="keywords per image (in vocabulary)", ylabel="images", title="Keywords per image")
    save_figure(fig, out / "keywords_per_image.png", dpi=120)


def tag(manifest_path: str | Path, out_dir: str | Path, cfg: TagConfig) -> dict[str, Any]:
    """`webly tag`: pass 1 for this shard; unsharded runs go on to merge."""
    t0 = time.time()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "stats.json").unlink(missing_ok=True)  # outputs are stale until merged again
    done = tag_parts(manifest_path, out_dir, cfg)
    if cfg.shard:
        return {"pass1": done, "seconds": round(time.time() - t0, 2),
                "next": f"when all shards are done: webly tag merge {out_dir}"}
    text = {k: v for k, v in done.items() if k not in ("tasks", "tagged_now", "recogniser")}
    stats = merge(out_dir, cfg, {"text": text})
    stats["seconds"] = round(time.time() - t0, 2)
    return stats


def load_tags(tags_dir: str | Path) -> tuple[sp.csr_matrix, list[str]]:
    """(images x keywords CSR, vocabulary) of a finished `webly tag` run."""
    d = Path(tags_dir)
    if not (d / "stats.json").is_file():
        raise WeblyError(f"{d}: no finished tag set (stats.json missing); run `webly tag` first")
    vocab = [line.split("\t", 1)[0] for line in (d / "vocab.tsv").read_text().splitlines()[1:]]
    mat = sp.load_npz(d / "keywords.npz").tocsr()
    if mat.shape[1] != len(vocab):
        raise WeblyError(f"{d}: keywords.npz has {mat.shape[1]} keyword columns but vocab.tsv "
                         f"{len(vocab)} keywords (a mixed tag set): rerun `webly tag merge`")
    return mat, vocab


def load_senses(tags_dir: str | Path) -> list[str] | None:
    """Each vocabulary keyword's sense (wnid, or "" for none) when the tag set chose senses in
    context; None for a tag set from before that (its synset column meant "the only sense")."""
    d = Path(tags_dir)
    if "senses" not in json.loads((d / "stats.json").read_text()):
        return None
    rows = [line.split("\t") for line in (d / "vocab.tsv").read_text().splitlines()[1:]]
    return [r[2] if len(r) > 2 else "" for r in rows]


def run_tag(*, manifest: str, cfg: TagConfig, out: Path) -> dict[str, Any]:
    """The `tag` stage; `manifest` "merge" combines the parts of a sharded run found in `out`."""
    return merge(out, cfg) if manifest == "merge" else tag(manifest, out, cfg)
