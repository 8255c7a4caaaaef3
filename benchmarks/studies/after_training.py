"""After training, measured on real images: `webly classify` against `webly predict` (the same
images: top-1, probabilities, img/s) and the ONNX / TorchScript exports against webly (the same
preprocessed tensor; and end to end from the image files, the export fed by a plain PIL + NumPy
preprocessing written from the sidecar JSON alone, as another runtime would).

    python -m benchmarks.studies.after_training runs/fashion53-default-shipped/final \
        --manifest runs/fashion53-default-shipped/manifest/manifest.parquet --split test

Prints a table; writes MODEL/after_training.benchmark.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from webly.data.manifest import Manifest
from webly.data.predictions import load_predictions
from webly.inference.classify import Classifier, ClassifyConfig, classify
from webly.inference.export import export
from webly.inference.predict import PredictConfig, predict


def pil_preprocess(path: Path, pre: dict) -> np.ndarray:
    """The sidecar's preprocessing with PIL and NumPy only (no webly, no torch)."""
    img = Image.open(path).convert("RGB")
    r = int(round(pre["size"] / pre["crop_pct"]))
    w, h = img.size
    if pre["resize"] == "squash":
        img = img.resize((r, r), Image.BILINEAR)
    else:
        s = r / min(w, h)
        img = img.resize((max(r, round(w * s)), max(r, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - pre["size"]) // 2, (h - pre["size"]) // 2
    img = img.crop((left, top, left + pre["size"], top + pre["size"]))
    x = np.asarray(img, np.float32) / 255.0
    x = (x - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    return x.transpose(2, 0, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--manifest", required=True, type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("-n", type=int, default=1000, help="images for the export checks")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    m = Manifest(args.manifest)
    t = m.read(["path", "split"]).to_pydict()
    files = [str(m.root / p) for p, s in zip(t["path"], t["split"], strict=True)
             if s == args.split]
    res: dict = {"model": str(args.model), "images": len(files), "workers": args.workers,
                 "batch_size": args.batch_size, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        predict(args.model, args.manifest, tmp / "p", PredictConfig(
            split=args.split, workers=args.workers, batch_size=args.batch_size))
        res["predict_img_s"] = round(len(files) / (time.time() - t0), 1)
        t0 = time.time()
        s = classify(args.model, files, tmp / "c.csv", ClassifyConfig(
            top_k=5, batch_size=args.batch_size, workers=args.workers))
        res["classify_img_s"] = round(len(files) / (time.time() - t0), 1)
        p = load_predictions(tmp / "p")
        with open(tmp / "c.csv", newline="") as f:
            rows = {r[0]: r for r in list(csv.reader(f))[1:]}
        classes = p.info["classes"]
        same = [rows[f][1] == classes[p.top_i[i, 0]] for i, f in enumerate(files) if f in rows]
        diff = [abs(float(rows[f][2]) - float(p.top_p[i, 0])) for i, f in enumerate(files)
                if f in rows]
        res.update(classified=s["classified"], top1_identical=round(float(np.mean(same)), 5),
                   max_prob_diff_vs_predict_file=round(max(diff), 6))

        clf = Classifier.load(args.model, device="cpu")
        pick = files[:: max(1, len(files) // args.n)][: args.n]
        x = torch.stack([clf.tensor(f) for f in pick])
        want = clf.probabilities(x)
        from webly.data.images import normalize_batch

        xn = normalize_batch(x, clf.preprocess.mean, clf.preprocess.std).numpy()
        ts_path, onnx_path = tmp / "m.pt", tmp / "m.onnx"
        export(args.model, "torchscript", ts_path)
        export(args.model, "onnx", onnx_path)
        ts = torch.jit.load(str(ts_path))
        with torch.no_grad():
            got_ts = ts(torch.from_numpy(xn)).softmax(1).numpy()
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        got_onnx = torch.from_numpy(sess.run(None, {name: xn})[0]).softmax(1).numpy()
        pre = json.loads((tmp / "m.onnx.json").read_text())["preprocess"]
        xp = np.stack([pil_preprocess(Path(f), pre) for f in pick])
        e2e = torch.from_numpy(sess.run(None, {name: xp})[0]).argmax(1).numpy()
        res.update(export_images=len(pick),
                   torchscript_max_diff=float(np.abs(got_ts - want).max()),
                   onnx_max_diff=float(np.abs(got_onnx - want).max()),
                   onnx_pil_top1_identical=round(float((e2e == want.argmax(1)).mean()), 4))
    (args.model / "after_training.benchmark.json").write_text(json.dumps(res, indent=1) + "\n")
    for k, v in res.items():
        print(f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
