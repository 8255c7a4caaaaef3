"""What each text rule of `webly tag` does on real titles: keywords, senses and the keyword audit.

    python -m benchmarks.studies.text_rules --data ../shared/data/fashion53.tar.gz [--noise title40]

Tags the training texts of a WebVision-layout folder (or fashion53.tar.gz) once per rule set,
from every rule off (WordNet's most frequent part of speech and sense, unknown words dropped, the
seed's 10% document-frequency cut) to every rule on, and prints for each: vocabulary, keywords
per training image, images without any, keywords with a WordNet sense, and the keyword audit (a
keyword-only linear classifier trained out-of-fold on the noisy labels, balanced top-1 against the
clean labels, which are read only for that). Then 20 real titles with their keywords before and
after. Writes RUN/text_rules.json and .md. The label set is prepared as
benchmarks/datasets/fashion53.py prepares it (`--noise`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.datasets import common, fashion53, harness

# rule sets, each adding one rule to the one before (TagConfig options)
RULES = [
    ("all rules off (the tagger before)", dict(keep_unknown=False, sense_fit=0.0,
                                                keep_informative=0.0)),
    ("+ unknown words kept as tokens", dict(keep_unknown=True, sense_fit=0.0,
                                            keep_informative=0.0)),
    ("+ senses in context (verbs-first nouns where a sense fits)",
     dict(keep_unknown=True, sense_fit=0.5, keep_informative=0.0)),
    ("+ informative common words kept (all rules on: the defaults)", dict()),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--noise", default="shipped", choices=fashion53.NOISES)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/webly/data")
    ap.add_argument("--out", type=Path, default=harness.REPO / "runs/text-rules")
    args = ap.parse_args(argv)

    from webly.data.index import IndexConfig, run_index
    from webly.data.manifest import Manifest
    from webly.labels import textclf
    from webly.labels.tagging import TagConfig, load_tags, tag

    root = fashion53.prepare(common.find_root(args.data, args.cache, "fashion53"), args.cache,
                             args.noise)
    out = args.out / args.noise
    manifest_path = out / "manifest.parquet"
    if not manifest_path.is_file():
        run_index(root=str(root), cfg=IndexConfig(), out=manifest_path)
    m = Manifest(manifest_path)
    t = m.read(["path", "label", "split", "title"]).to_pydict()
    rows = np.array([i for i, s in enumerate(t["split"]) if s == "train"])
    clean = dict(line.split() for line in
                 (root / "info/train_clean_filelist.txt").read_text().splitlines())
    truth = np.array([int(clean[t["path"][i]]) for i in rows])
    noisy = np.array([t["label"][i] for i in rows])
    results, keywords = [], []
    for n, (name, opts) in enumerate(RULES):
        t0 = time.time()
        stats = tag(manifest_path, out / f"tags{n}", TagConfig(workers=2, **opts))
        mat, vocab = load_tags(out / f"tags{n}")
        x = mat[rows]
        results.append({
            "rules": name, "options": opts, "vocabulary": len(vocab),
            "keywords_per_training_image": round(float(x.sum() / len(rows)), 3),
            "training_images_without": int((np.diff(x.indptr) == 0).sum()),
            "with_a_sense": stats.get("senses", {}).get("keywords_with_a_sense"),
            "audit": textclf.audit(x, noisy, truth, rows, m.num_classes),
            "seconds": round(time.time() - t0, 1)})
        keywords.append([[vocab[j] for j in x[i].indices] for i in range(len(rows))])
        print(json.dumps(results[-1]), flush=True)
    sample = np.linspace(0, len(rows) - 1, 20).astype(int)
    titles = [{"title": t["title"][rows[i]], "label": m.class_names[noisy[i]],
               "before": keywords[0][i], "after": keywords[-1][i]} for i in sample]
    res = {"noise": args.noise, "train_images": len(rows), "rules": results, "sample": titles}
    (out / "text_rules.json").write_text(json.dumps(res, indent=1) + "\n")
    md = ["| rules | vocabulary | keywords / image | images without | with a sense | audit "
          "balanced top-1 | audit top-1 |", "|---|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['rules']} | {r['vocabulary']} | {r['keywords_per_training_image']:.2f} | "
           f"{r['training_images_without']} | {r['with_a_sense']} | "
           f"{r['audit']['balanced_top1']:.2f} | {r['audit']['top1']:.2f} |" for r in results]
    md += ["", "| title | label | keywords before | keywords after |", "|---|---|---|---|"]
    md += [f"| {s['title']} | {s['label']} | {', '.join(s['before'])} | "
           f"{', '.join(s['after'])} |" for s in titles]
    (out / "text_rules.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
