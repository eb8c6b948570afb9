"""The deterministic photo geometry on uint8 numpy arrays (C, H, W), with numpy and Pillow only.

A photo becomes a model input by the same code in training's evaluation, the rendered dataset, the
server and a device: `from_pil` (EXIF orientation, RGB or L), then `fit` (the shorter side resized
plus a centre crop, or letterboxing). The server image and edge devices have no torch, so nothing
here imports it; `photo_transforms` wraps these functions for tensors and keeps training's random
augmentation on torch.

The resize is PyTorch's antialiased bilinear (`F.interpolate(mode="bilinear", antialias=True,
align_corners=False)`, torchvision's `Resize` on tensors), which is Pillow's separable triangle
filter: each output pixel is a normalised, tent-weighted mean of the input pixels under it, the
tent widened by the scale when shrinking so no input pixel is skipped. It runs in float32 with the
weights, tap order and pass order (width, then height) of ATen's CPU kernel, so it reproduces it up
to float rounding (tests/data/test_photo_fit.py measures how close).

`PhotoTransformConfig` lives here too, so a server can rebuild a photo model's stored policy
(`datamoat.configs.config_from_dict`) without torch.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from datamoat.configs import Config, check, check_choice
from datamoat.errors import TooLarge

if TYPE_CHECKING:
    import PIL.Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AUTO_AUGMENT",
    "PhotoTransformConfig",
    "from_pil",
    "resize",
    "resize_shorter",
    "center_crop",
    "letterbox",
    "fit",
]

# The resized photo before its centre crop, in pixels: far above a real photo's (a 16:1 panorama to a
# 256-pixel shorter side is 1M), far below what would exhaust memory (float32, three channels).
MAX_RESIZED_PIXELS = 16_000_000
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what torchvision's published weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
AUTO_AUGMENT = ("none", "trivialaugment", "randaugment")


@dataclasses.dataclass
class PhotoTransformConfig(Config):
    """How a photo becomes a model input, in training and everywhere else.

    The evaluation path (`fit`: the shorter side resized plus a centre crop, or letterboxing) is
    what serving and a device apply too; training (`photo_transforms.train_transform`) adds the
    random crop, flip, an automatic augmentation policy and colour jitter.

    >>> PhotoTransformConfig(size=(160, 160)).resize
    'shorter_crop'
    """

    size: tuple[int, int] = (224, 224)  # (H, W) the model sees
    resize: str = "shorter_crop"  # or "letterbox": the whole photo, padded to the size
    crop_fraction: float = 0.875  # shorter_crop: resize the shorter side to size / this, then crop
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's area range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # and its aspect range
    hflip: float = 0.5  # probability
    brightness: float = 0.0  # ColorJitter's factors: a value in [max(0, 1 - b), 1 + b]
    contrast: float = 0.0
    saturation: float = 0.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # New fields keep their defaults off, so a transform recorded before them loads and acts as it did.
    hue: float = 0.0  # ColorJitter's hue: a shift in [-hue, hue] of the colour circle, hue <= 0.5
    auto_augment: str = "none"  # or "trivialaugment" (TrivialAugmentWide), "randaugment" (RandAugment)
    ra_num_ops: int = 2  # RandAugment's num_ops
    ra_magnitude: int = 9  # RandAugment's magnitude, a bin of 31

    def validate(self) -> None:
        self.size = tuple(int(s) for s in self.size)  # type: ignore[assignment]
        check(len(self.size) == 2 and min(self.size) >= 8, f"size must be (H, W) of at least 8, got {self.size}")
        check_choice("resize", self.resize, ("shorter_crop", "letterbox"))
        check(0.1 <= self.crop_fraction <= 1, f"crop_fraction must be in [0.1, 1], got {self.crop_fraction}")
        check(0 < self.scale[0] <= self.scale[1] <= 1, f"scale must be 0 < low <= high <= 1, got {self.scale}")
        check(0 < self.ratio[0] <= self.ratio[1], f"ratio must be 0 < low <= high, got {self.ratio}")
        check(0 <= self.hflip <= 1, f"hflip is a probability, got {self.hflip}")
        for name in ("brightness", "contrast", "saturation"):
            check(0 <= getattr(self, name) <= 1, f"{name} must be in [0, 1], got {getattr(self, name)}")
        check(0 <= self.hue <= 0.5, f"hue must be in [0, 0.5], got {self.hue}")
        check_choice("auto_augment", self.auto_augment, AUTO_AUGMENT)
        check(self.ra_num_ops >= 1, f"ra_num_ops must be at least 1, got {self.ra_num_ops}")
        check(0 <= self.ra_magnitude <= 30, f"ra_magnitude must be a bin in [0, 30], got {self.ra_magnitude}")
        check(
            len(self.mean) == len(self.std) and all(s > 0 for s in self.std),
            "mean and std need one positive std per channel",
        )


def from_pil(im: PIL.Image.Image, channels: int = 3) -> np.ndarray:
    """An opened Pillow image -> uint8 (C, H, W): EXIF orientation applied, 16-bit reduced to its top
    8 bits, converted to RGB (or L). Decoding for training and the server's uploads both come through here.

    >>> from PIL import Image
    >>> from_pil(Image.new("RGB", (5, 3), (255, 0, 0))).shape
    (3, 3, 5)
    >>> from_pil(Image.new("I;16", (2, 1), 65535), 1).tolist()
    [[[255, 255]]]
    """
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: keep the top 8 bits
        im = Image.fromarray((np.asarray(im, np.uint32) >> 8).astype(np.uint8), "L")
    arr = np.asarray(im.convert("RGB" if channels == 3 else "L"), np.uint8)  # (H, W[, C])
    # a copy: Pillow's buffer is read-only, and torch.from_numpy would warn about it
    return np.array(arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None], order="C")  # (C, H, W)


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights, each (n_out, K), of the antialiased triangle filter from `n_in`
    samples to `n_out`: ATen's `_compute_weights_aa` for bilinear, in its float32 arithmetic.
    Unused taps point at a valid index with weight 0, so every row has K of them."""
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    support = scale if scale >= 1 else f32(1.0)  # the tent's half-width in input pixels
    invscale = f32(1.0) / scale if scale >= 1 else f32(1.0)
    i = np.arange(n_out, dtype=np.float64)
    center = (np.float64(scale) * (i + 0.5)).astype(f32)  # (n_out,)
    xmin = np.maximum(((center - support).astype(np.float64) + 0.5).astype(np.int64), 0)
    xmax = np.minimum(((center + support).astype(np.float64) + 0.5).astype(np.int64), n_in)
    # ATen clips a span that float rounding made one tap longer than its buffer
    k = int(np.ceil(support)) * 2 + 1
    size = np.clip(xmax - xmin, 0, k)
    j = np.arange(k)
    at = j[None, :] + xmin[:, None]  # (n_out, K)
    d = ((at.astype(f32) - center[:, None]).astype(np.float64) + 0.5) * np.float64(invscale)
    w = np.maximum(f32(0), f32(1) - np.abs(d.astype(f32)))  # (n_out, K) float32
    w[j[None, :] >= size[:, None]] = 0
    total = w[:, 0].copy()
    for t in range(1, k):  # summed tap by tap, as ATen does
        total += w[:, t]
    w = np.divide(w, total[:, None], out=w, where=total[:, None] != 0)
    used = int(size.max()) if n_out else 0
    return np.minimum(at[:, :used], n_in - 1), w[:, :used]


def _resample(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """`x` (..., n_in, ...) -> float32 (..., n_out, ...) along `axis` (-1 or -2), one tap at a time:
    a few gathers and multiply-adds, never a dense (n_out x n_in) matrix."""
    idx, w = _taps(x.shape[axis], n_out)  # (n_out, K) each
    if axis == -2:
        w = w[:, :, None]  # the weights run down the rows
    out = np.take(x, idx[:, 0], axis=axis) * w[:, 0]  # uint8 or float32 input -> float32
    for t in range(1, idx.shape[1]):
        out += np.take(x, idx[:, t], axis=axis) * w[:, t]
    return out


def resize(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 (C, H, W) -> uint8 (C, h, w) by antialiased bilinear (PyTorch's, torchvision's tensor
    `Resize`), in float32, rounded half to even and clamped as the torch path did.

    >>> resize(np.array([[[0, 100, 200, 255]]], np.uint8), 1, 2).tolist()
    [[[71, 209]]]
    """
    x: np.ndarray = arr
    if arr.shape[-1] != w:  # ATen also skips an axis that keeps its size (its weights would be 1 and 0)
        x = _resample(x, w, -1)  # (C, H, w)
    if arr.shape[-2] != h:
        x = _resample(x, h, -2)  # (C, h, w)
    if x is arr:
        return arr.copy()
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def resize_shorter(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is `size`, keeping the aspect ratio (torchvision's Resize(int)).

    >>> resize_shorter(np.zeros((3, 100, 200), np.uint8), 50).shape
    (3, 50, 100)
    """
    h, w = arr.shape[-2:]
    nh, nw = (size, max(1, int(size * w / h))) if h <= w else (max(1, int(size * h / w)), size)
    if nh * nw > MAX_RESIZED_PIXELS:  # a 1 x 24M strip passes every pixel cap and would resize to billions
        raise TooLarge(
            f"a {w}x{h} photo resized to a shorter side of {size} would be {nw}x{nh} pixels, over the limit of "
            f"{MAX_RESIZED_PIXELS}: crop it to a less elongated shape"
        )
    return resize(arr, nh, nw)


def center_crop(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centred (H, W) window; an image smaller than it is padded with zeros first.

    >>> center_crop(np.ones((1, 2, 2), np.uint8), (2, 4)).tolist()
    [[[0, 1, 1, 0], [0, 1, 1, 0]]]
    """
    th, tw = size
    h, w = arr.shape[-2:]
    if h < th or w < tw:
        ph, pw = max(0, th - h), max(0, tw - w)
        arr = np.pad(arr, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        h, w = arr.shape[-2:]
    top, left = int(round((h - th) / 2)), int(round((w - tw) / 2))
    return arr[..., top : top + th, left : left + tw]


def letterbox(arr: np.ndarray, size: tuple[int, int], fill: int = 0) -> np.ndarray:
    """The whole image, scaled to fit (H, W) and padded evenly with `fill`.

    >>> letterbox(np.full((1, 10, 40), 9, np.uint8), (8, 8))[0, :, 0].tolist()
    [0, 0, 0, 9, 9, 0, 0, 0]
    """
    th, tw = size
    h, w = arr.shape[-2:]
    s = min(th / h, tw / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = resize(arr, nh, nw)  # (C, nh, nw)
    top, left = (th - nh) // 2, (tw - nw) // 2
    pad = ((0, 0), (top, th - nh - top), (left, tw - nw - left))
    return np.pad(small, pad, constant_values=fill)


def fit(arr: np.ndarray, cfg: PhotoTransformConfig) -> np.ndarray:
    """The deterministic geometry: uint8 (C, H, W) of any size -> uint8 (C, *cfg.size).

    Training's evaluation, the rendered dataset, the server and a device all call this one function
    (`photo_transforms.fit` on tensors too), so a photo reaches the model the same way everywhere.

    >>> fit(np.zeros((3, 120, 300), np.uint8), PhotoTransformConfig(size=(32, 32))).shape
    (3, 32, 32)
    """
    if cfg.resize == "letterbox":
        return letterbox(arr, cfg.size)
    return np.ascontiguousarray(
        center_crop(resize_shorter(arr, int(round(min(cfg.size) / cfg.crop_fraction))), cfg.size)
    )
