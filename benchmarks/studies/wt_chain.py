"""Why the WT-Set chain (fashion53 row 4) scores under CE: a linear probe on each model's features.

    python -m benchmarks.studies.wt_chain RUN [--out F]   # RUN: a finished fashion53 run

For each model of a finished fashion53 run (pre_ce and pre_wt: half a unit of CE and of WT-Set
pretraining; ft_ce and ft_wt: each finetuned half a unit with a new head; ce: one unit of CE) a
softmax layer is fitted to convergence on its training-split features with the given (noisy)
labels, class-balanced (`webly.inference.probe.fit_probe`, as pseudo-label's probes are), and
scored on the clean val split, beside the model's own head on the same split. The probe reads
what the features know; the head what the training made of them. WT-Set pretraining has no class
head: a one-step finetune at lr 1e-9 attaches one without moving the weights (its BatchNorm
statistics move one step). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import torch

MODELS = ("pre_ce", "pre_wt", "ft_ce", "ft_wt", "ce")


def _predict(model: Path, manifest: Path, split: str, out: Path) -> Path:
    if not (out / "features.npy").is_file():
        subprocess.run(["webly", "predict", str(model), str(manifest), "-o", str(out), "--split",
                        split, "--features", "--workers", "0", "--batch-size", "500",
                        "--top-k", "1"], check=True, capture_output=True)
    return out


def _with_head(run: Path, work: Path) -> Path:
    """pre_wt with a 53-class head, its weights unmoved (lr 1e-9, one step)."""
    cfg = json.loads((run / "ft_wt/train.config.json").read_text())
    out = work / "pre_wt_head"
    if not (out / "model.safetensors").is_file():
        subprocess.run(["webly", "finetune", str(run / "manifest/manifest.parquet"), "-o",
                        str(out), "--pretrained", str(run / "pre_wt"), "--backbone",
                        cfg["backbone"], "--img-size", str(cfg["img_size"]), "--augment",
                        cfg["augment"], "--crop-pct", str(cfg["crop_pct"]), "--in-memory",
                        "--lr", "1e-9", "--max-steps", "1", "--epochs", "1", "--workers", "0",
                        "--warmup-epochs", "0"], check=True, capture_output=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from webly.core.decisions import class_weights
    from webly.data.manifest import Manifest
    from webly.data.predictions import load_features, load_predictions, rows_of
    from webly.inference.probe import fit_probe

    run, work = args.run, args.run / "wt_chain"
    manifest = run / "manifest/manifest.parquet"
    m = Manifest(manifest)
    labels = np.asarray(m.read(["label"])["label"].fill_null(-1).to_numpy(), np.int64)
    res = {}
    for name in MODELS:
        model = _with_head(run, work) if name == "pre_wt" else run / name
        train, val = (_predict(model, manifest, s, work / f"{name}_{s}") for s in ("train", "val"))
        xt, xv = (np.asarray(load_features(d), np.float32) for d in (train, val))
        yt, yv = labels[rows_of(train)], labels[rows_of(val)]
        mu, sd = xt.mean(0), xt.std(0) + 1e-6
        lin, _ = fit_probe(torch.from_numpy((xt - mu) / sd), torch.from_numpy(yt), m.num_classes)
        with torch.no_grad():
            probe = lin(torch.from_numpy((xv - mu) / sd)).argmax(1).numpy() == yv
        head = load_predictions(val).top_i[:, 0] == yv
        w = class_weights(yv)
        res[name] = {"probe_balanced_top1": round(100 * float(w @ probe), 2),
                     "head_balanced_top1": None if name == "pre_wt" else
                     round(100 * float(w @ head), 2)}
        print(name, res[name], flush=True)
    out = args.out or run / "wt_chain.json"
    out.write_text(json.dumps({"run": str(run), "split": "val (clean)", "models": res},
                              indent=1) + "\n")
    print("| model | probe on its features | its own head |\n|---|---:|---:|")
    for name, r in res.items():
        head = "" if r["head_balanced_top1"] is None else f"{r['head_balanced_top1']:.2f}"
        print(f"| {name} | {r['probe_balanced_top1']:.2f} | {head} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
