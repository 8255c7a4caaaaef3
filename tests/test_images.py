"""Decoding in one place: every web image mode comes out as 8-bit RGB; drafts stay big enough."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from webly.data.images import (
    decode_image,
    eval_transform,
    normalize_batch,
    resize_short_side,
    train_transform,
)


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("make,fmt", [
    (lambda: Image.new("CMYK", (20, 10), (0, 255, 0, 0)), "JPEG"),
    (lambda: Image.new("L", (20, 10), 128), "PNG"),
    (lambda: Image.new("RGBA", (20, 10), (255, 0, 0, 0)), "PNG"),
    (lambda: Image.new("P", (20, 10), 3), "GIF"),
    (lambda: Image.fromarray(np.full((10, 20), 60000, np.uint16)), "PNG"),
])
def test_modes_become_rgb(make, fmt):
    img = decode_image(_bytes(make(), fmt))
    assert img.mode == "RGB" and img.size == (20, 10)


def test_alpha_is_composited_on_white():
    img = decode_image(_bytes(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"))
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied():
    src = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    img = decode_image(_bytes(src, "JPEG", exif=exif.tobytes()))
    assert img.size == (20, 40)


def test_draft_reduces_but_never_below_min_short_side():
    data = _bytes(Image.new("RGB", (1000, 750), "blue"), "JPEG")
    assert decode_image(data).size == (1000, 750)
    small = decode_image(data, min_short_side=100)
    assert min(small.size) >= 100 and small.size[0] <= 250
    assert decode_image(data, min_short_side=500).size == (1000, 750)


def test_transforms_give_uint8_and_batch_normalisation():
    img = Image.new("RGB", (50, 40), (124, 116, 104))
    t = train_transform(32)(img)
    e = eval_transform(32)(img)
    assert t.dtype == torch.uint8 and t.shape == (3, 32, 32) and e.shape == (3, 32, 32)
    x = normalize_batch(torch.stack([e, e]))
    assert x.dtype == torch.float32 and x.abs().max() < 0.02  # the colour is the ImageNet mean
    assert resize_short_side(img, 20).size == (25, 20) and resize_short_side(img, 99).size == (50,
                                                                                               40)


@pytest.mark.parametrize("make,fmt", [
    (lambda: Image.new("RGB", (20, 10), (10, 200, 30)), "JPEG"),
    (lambda: Image.new("CMYK", (20, 10), (0, 255, 0, 0)), "JPEG"),
    (lambda: Image.new("L", (20, 10), 128), "JPEG"),
    (lambda: Image.new("RGBA", (20, 10), (255, 0, 0, 0)), "PNG"),
    (lambda: Image.fromarray(np.full((10, 20), 60000, np.uint16)), "PNG"),
])
def test_decode_tensor_matches_pil_path(make, fmt):
    from webly.data.images import decode_tensor

    data = _bytes(make(), fmt)
    x = decode_tensor(data)
    ref = torch.from_numpy(np.array(decode_image(data))).permute(2, 0, 1)
    assert x.dtype == torch.uint8 and x.shape == (3, 10, 20)
    assert (x.int() - ref.int()).abs().max() <= 8  # libjpeg-turbo vs PIL rounding


def test_decode_tensor_exif_draft_and_garbage(tmp_path):
    from webly.data.images import decode_tensor

    exif = Image.Exif()
    exif[0x0112] = 6
    assert decode_tensor(_bytes(Image.new("RGB", (40, 20)), "JPEG",
                                exif=exif.tobytes())).shape == (3, 40, 20)
    big = _bytes(Image.new("RGB", (1000, 750), "blue"), "JPEG")
    assert decode_tensor(big).shape == (3, 750, 1000)
    assert decode_tensor(big, min_short_side=100).shape[1:] == (188, 250)
    p = tmp_path / "x.jpg"
    p.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(OSError):  # PIL's UnidentifiedImageError: a clear reason to log and skip
        decode_tensor(p)


def test_one_preprocessing_for_non_square_images():
    """A 60x80 photo: a pad_crop model saw it squashed whole, so prediction squashes it too (a
    centre crop would cut the top and bottom off); the recorded preprocessing says which."""
    from webly.data.images import EvalTransform, PadCropTransform, Preprocess, resize_for

    x = torch.randint(0, 256, (3, 80, 60), dtype=torch.uint8)
    pre = Preprocess(32, resize_for("pad_crop"), crop_pct=1.0)
    assert pre.resize == "squash" and resize_for("resized_crop") == "crop"
    seen_in_training = PadCropTransform(32)
    torch.manual_seed(0)
    train_view = seen_in_training(x)
    # the training view is a flip and a shift of the squashed image: its pixels are the eval view's
    eval_view = EvalTransform.of(pre)(x)
    assert eval_view.shape == (3, 32, 32)
    assert set(train_view.flatten().tolist()) <= set(eval_view.flatten().tolist())
    crop_view = EvalTransform.of(Preprocess(32, "crop", crop_pct=1.0))(x)
    assert not torch.equal(crop_view, eval_view)  # the old centre crop saw other pixels
    # model.json round trip; a model from before `preprocess` predicts as it did (centre crop)
    meta = {"img_size": 32, "crop_pct": 1.0, "preprocess": pre.to_json()}
    assert Preprocess.from_meta(meta) == pre
    assert Preprocess.from_meta(meta, size=24).size == 24
    legacy = Preprocess.from_meta({"img_size": 32, "crop_pct": 0.9})
    assert legacy.resize == "crop" and legacy.crop_pct == 0.9
    from webly.core.errors import WeblyError

    with pytest.raises(WeblyError, match="unknown preprocess.resize"):
        Preprocess.from_meta({"preprocess": {**pre.to_json(), "resize": "stretch"}})
