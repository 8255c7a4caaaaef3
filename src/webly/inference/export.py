"""`webly export`: a trained model as ONNX or TorchScript, its preprocessing written beside it.

The exported network takes a float32 NCHW batch already preprocessed (resized and cropped as
`preprocess` says, then (x / 255 - mean) / std) and returns logits (softmax gives webly's
probabilities); the batch size is free, the side is `preprocess.size`. `FILE.json` holds the
class names in output order and the preprocessing, so any runtime can reproduce the input.
ONNX needs the `export` extra (`pip install "webly[export]"`: onnx, onnxscript, onnxruntime).
timm backbones need no export to leave webly: `timm.create_model(backbone, num_classes=C)` loads
`model.safetensors` as it is (docs/formats.md).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from webly.core.errors import WeblyError
from webly.data.images import Preprocess
from webly.inference.predict import load_model

FORMATS = ("onnx", "torchscript")


def export(model_path: str | Path, fmt: str, out: str | Path, opset: int = 18) -> dict[str, Any]:
    if fmt not in FORMATS:
        raise WeblyError(f"export: unknown format {fmt!r} ({', '.join(FORMATS)})")
    model, meta = load_model(model_path)
    pre = Preprocess.from_meta(meta)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(2, 3, pre.size, pre.size)
    if fmt == "torchscript":
        # deprecated in torch 2.14 for torch.export, but what C++ and older runtimes still load
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.trace(model, x).save(str(out))
    else:
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise WeblyError(f"export --format onnx needs the export extra: pip install "
                             f"'webly[export]' ({e})") from e
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(model, (x,), str(out), input_names=["image"], output_names=["logits"],
                          dynamic_shapes={"x": {0: batch}}, opset_version=opset, dynamo=True,
                          external_data=False, verbose=False)
    sidecar = out.with_name(out.name + ".json")
    info = {"format": fmt, "input": "float32 N x 3 x size x size: resized and cropped as "
                                    "preprocess says, then (x / 255 - mean) / std per channel",
            "output": "logits, N x classes (softmax: probabilities)",
            "classes": meta["classes"], "preprocess": pre.to_json(),
            "backbone": meta["backbone"], "source": str(model_path)}
    sidecar.write_text(json.dumps(info, indent=1) + "\n")
    return {"output": str(out), "preprocess": str(sidecar), "format": fmt,
            "bytes": out.stat().st_size, "classes": len(meta["classes"])}
