"""The numpy photo geometry (datamoat/data/photo_fit.py) against the torch code it replaced, kept here
as the reference: PyTorch's antialiased bilinear `F.interpolate`, then the same crop and letterbox.
Also: it never needs torch, and a transform stored before it existed still loads."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from datamoat.configs import config_from_dict
from datamoat.data import photo_fit, photo_transforms
from datamoat.data.photo_fit import PhotoTransformConfig, center_crop, fit, from_pil, letterbox, resize, resize_shorter
from datamoat.errors import TooLarge

ROOT = Path(__file__).resolve().parents[2]


# The torch path as it was before photo_fit (datamoat/data/photo_transforms.py), the reference.
def ref_resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    x = img[None].float()  # (1, C, H, W)
    y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return y[0].round().clamp(0, 255).to(torch.uint8)


def ref_fit(img: torch.Tensor, cfg: PhotoTransformConfig) -> torch.Tensor:
    th, tw = cfg.size
    h, w = img.shape[-2:]
    if cfg.resize == "letterbox":
        s = min(th / h, tw / w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        top, left = (th - nh) // 2, (tw - nw) // 2
        return F.pad(ref_resize(img, nh, nw), (left, tw - nw - left, top, th - nh - top), value=0)
    size = int(round(min(cfg.size) / cfg.crop_fraction))
    img = (
        ref_resize(img, size, max(1, int(size * w / h))) if h <= w else ref_resize(img, max(1, int(size * h / w)), size)
    )
    h, w = img.shape[-2:]
    if h < th or w < tw:
        ph, pw = max(0, th - h), max(0, tw - w)
        img = F.pad(img, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = img.shape[-2:]
    top, left = int(round((h - th) / 2)), int(round((w - tw) / 2))
    return img[..., top : top + th, left : left + tw]


def _content(kind: str, c: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return rng.integers(0, 256, (c, h, w), dtype=np.uint8)
    if kind == "edges":  # black and white stripes and a checkerboard: the sharpest steps a photo has
        yy, xx = np.indices((h, w))
        return np.broadcast_to(((xx // 3 + yy // 5) % 2 * 255).astype(np.uint8), (c, h, w)).copy()
    ramp = (np.linspace(0, 255, w)[None, :] * np.linspace(0, 1, h)[:, None]).astype(np.uint8)  # smooth
    return np.broadcast_to(ramp, (c, h, w)).copy()


# (C, H, W) -> (h, w): down and up in each axis, odd sizes, 1 px, extreme aspects, gray and RGB
SHAPES = [
    ((3, 120, 160), (32, 42)),
    ((3, 480, 360), (256, 192)),
    ((1, 333, 257), (37, 29)),
    ((3, 7, 9), (20, 3)),
    ((1, 9, 7), (3, 20)),
    ((3, 1, 1), (5, 7)),
    ((1, 5, 7), (1, 1)),
    ((3, 1, 50), (4, 9)),
    ((3, 30, 4000), (8, 1066)),
    ((1, 4000, 30), (1066, 8)),
    ((3, 30, 400), (256, 3413)),
    ((3, 13, 17), (13, 40)),
    ((3, 224, 224), (224, 224)),
    ((3, 301, 401), (37, 49)),
    ((1, 37, 49), (301, 401)),
    ((3, 64, 64), (255, 17)),
    ((3, 97, 1201), (224, 2771)),
]


def test_resize_matches_torchs_antialiased_bilinear_within_one_grey_level():
    rng = np.random.default_rng(0)
    differing = total = 0
    for (c, h, w), (oh, ow) in SHAPES:
        for kind in ("random", "edges", "ramp"):
            a = _content(kind, c, h, w, rng)
            ours, ref = resize(a, oh, ow), ref_resize(torch.from_numpy(a), oh, ow).numpy()
            assert ours.shape == ref.shape == (c, oh, ow) and ours.dtype == np.uint8
            d = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
            assert d.max() <= 1, ((c, h, w), (oh, ow), kind)
            differing, total = differing + int((d > 0).sum()), total + d.size
    # Measured: 4 of these 4.3 million pixels differ (a float sum landing on the other side of .5);
    # the bound leaves room for another CPU's float rounding.
    # Stripes of 0 and 255 averaged to exactly 127.5 make ties more common here; still several times
    # under the bound on this machine.
    assert differing / total < 3e-4, (differing, total)


def test_fit_matches_the_torch_path_on_crop_and_letterbox_configs():
    rng = np.random.default_rng(1)
    configs = [
        PhotoTransformConfig(size=(32, 32)),
        PhotoTransformConfig(size=(224, 224)),
        PhotoTransformConfig(size=(24, 40), crop_fraction=1.0),
        PhotoTransformConfig(size=(32, 32), resize="letterbox"),
        PhotoTransformConfig(size=(48, 20), resize="letterbox"),
    ]
    differing = total = 0
    for cfg in configs:
        for c, h, w in ((3, 120, 480), (3, 480, 120), (1, 200, 200), (3, 9, 11), (3, 1000, 12)):
            a = _content("random" if (h + w) % 2 else "edges", c, h, w, rng)
            ours = fit(a, cfg)
            ref = ref_fit(torch.from_numpy(a), cfg).numpy()
            assert ours.shape == ref.shape == (c, *cfg.size) and ours.flags.c_contiguous
            d = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
            assert d.max() <= 1, (cfg, (c, h, w))
            differing, total = differing + int((d > 0).sum()), total + d.size
            # and the tensor functions are the same code
            assert np.array_equal(photo_transforms.fit(torch.from_numpy(a), cfg).numpy(), ours)
    # Stripes of 0 and 255 averaged to exactly 127.5 make ties more common here; still several times
    # under the bound on this machine.
    assert differing / total < 3e-4, (differing, total)


def test_crop_and_letterbox_place_the_content_and_pad_with_zeros():
    a = np.full((1, 4, 6), 7, np.uint8)
    assert center_crop(a, (2, 2)).tolist() == [[[7, 7], [7, 7]]]
    assert center_crop(np.arange(5, dtype=np.uint8)[None, None], (1, 2)).tolist() == [[[2, 3]]]  # round(1.5) = 2
    padded = center_crop(a, (6, 9))  # smaller than the window: zeros around it, the odd pixel after
    assert padded.shape == (1, 6, 9) and padded[0, 1:5, 1:7].min() == 7 and padded.sum() == 7 * 24
    assert padded[0, 0].max() == 0 and padded[0, :, 0].max() == 0 and padded[0, :, -2:].max() == 0
    boxed = letterbox(np.full((3, 10, 40), 200, np.uint8), (16, 16), fill=9)
    assert boxed.shape == (3, 16, 16) and (boxed[:, :6] == 9).all() and (boxed[:, -6:] == 9).all()
    assert (boxed[:, 6:10] == 200).all()  # a flat image stays flat through the filter
    assert resize_shorter(np.zeros((1, 30, 4000), np.uint8), 8).shape == (1, 8, 1066)
    assert resize_shorter(np.zeros((3, 4000, 30), np.uint8), 8).shape == (3, 1066, 8)


def test_from_pil_turns_by_exif_and_keeps_the_top_8_bits():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # red left half
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    turned = from_pil(Image.open(io.BytesIO(buf.getvalue())))
    assert turned.shape == (3, 40, 20) and turned[0, :5].mean() > 200  # the left half is now on top
    assert from_pil(Image.fromarray(arr), 1).shape == (1, 20, 40)
    deep = from_pil(Image.fromarray(np.full((2, 3), 0x1234, np.uint16)), 1)
    assert deep.dtype == np.uint8 and (deep == 0x12).all() and deep.flags.writeable


def test_photo_fit_needs_no_torch_and_loads_a_transform_stored_before_it():
    # A PhotoTransformConfig as the torch module wrote it into models and dataset versions.
    stored = {
        "type": "PhotoTransformConfig",
        "version": 1,
        "size": [32, 32],
        "resize": "letterbox",
        "crop_fraction": 0.875,
        "scale": [0.08, 1.0],
        "ratio": [0.75, 1.3333333333333333],
        "hflip": 0.5,
        "brightness": 0.2,
        "contrast": 0.0,
        "saturation": 0.0,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "hue": 0.0,
        "auto_augment": "none",
        "ra_num_ops": 2,
        "ra_magnitude": 9,
    }
    assert photo_transforms.PhotoTransformConfig is PhotoTransformConfig  # one class, one registered name
    assert config_from_dict(stored) == PhotoTransformConfig(size=(32, 32), resize="letterbox", brightness=0.2)
    assert PhotoTransformConfig(size=(32, 32)).to_dict()["type"] == "PhotoTransformConfig"
    code = (
        "import json, sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "import numpy as np\n"
        "from datamoat.configs import config_from_dict\n"
        "from datamoat.data.photo_fit import fit\n"
        "cfg = config_from_dict(json.loads(sys.argv[1]))\n"
        "out = fit(np.full((3, 50, 70), 100, np.uint8), cfg)\n"
        "print(json.dumps({'shape': out.shape, 'type': type(cfg).__module__, 'torch': sys.modules['torch']}))\n"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(stored)], capture_output=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout) == {"shape": [3, 32, 32], "type": "datamoat.data.photo_fit", "torch": None}


@pytest.mark.parametrize("n_in,n_out", [(4000, 256), (256, 4000), (7, 7), (1, 9), (9, 1)])
def test_each_output_is_a_few_taps_summing_to_one(n_in, n_out):
    idx, w = photo_fit._taps(n_in, n_out)  # the filter's own weights, checked directly
    assert idx.shape == w.shape and idx.shape[0] == n_out and idx.shape[1] <= 2 * int(np.ceil(n_in / n_out)) + 1
    assert np.allclose(w.sum(1), 1, atol=1e-6) and (w >= 0).all() and idx.min() >= 0 and idx.max() < n_in


def test_a_strip_that_would_resize_to_billions_of_pixels_is_refused_before_any_allocation():
    # 1 x 2,000,000 passes a pixel cap; its shorter side resized to 37 would be 37 x 74M pixels.
    strip = np.broadcast_to(np.zeros((3, 1, 1), np.uint8), (3, 1, 2_000_000))
    with pytest.raises(TooLarge, match="less elongated"):
        fit(strip, PhotoTransformConfig(size=(32, 32)))
    assert fit(np.zeros((3, 30, 4000), np.uint8), PhotoTransformConfig(size=(32, 32))).shape == (3, 32, 32)
