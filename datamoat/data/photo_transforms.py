"""Photo preprocessing and augmentation on tensors (torchvision cannot be installed beside the
pinned torch, so the few transforms a photo model needs are written here on `torch` alone).

Names and parameters follow torchvision's (`Resize`, `CenterCrop`, `RandomResizedCrop`,
`RandomHorizontalFlip`, `ColorJitter`, `Normalize`, and in `photo_augment` `TrivialAugmentWide`
and `RandAugment`), so a recipe reads the same. Images are
uint8 tensors (C, H, W) until `normalize`, which returns float32.

`PhotoTransformConfig` is the policy a photo model records: the evaluation path (`eval_transform`:
resize by the shorter side plus a centre crop, or letterboxing) is what serving and a device must
apply too; the training path (`train_transform`) adds the random crop, flip, an automatic augmentation policy
and colour jitter. The config and the deterministic geometry (`from_pil`, `resize_shorter`,
`center_crop`, `letterbox`, `fit`) live in `photo_fit` on numpy, which a server or device without
torch imports; the functions here wrap them for tensors, so every path shapes a photo by one code.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from datamoat.configs import check
from datamoat.data import photo_fit
from datamoat.data.photo_augment import rand_augment, trivial_augment

# Re-exported: imports of it from here keep working (a stored config names only its type).
from datamoat.data.photo_fit import PhotoTransformConfig
from datamoat.errors import BadInput

if TYPE_CHECKING:
    import PIL.Image

__all__ = [
    "PhotoTransformConfig",
    "decode",
    "from_pil",
    "resize_shorter",
    "center_crop",
    "letterbox",
    "random_resized_crop",
    "hflip",
    "adjust_hue",
    "color_jitter",
    "normalize",
    "fit",
    "eval_transform",
    "train_transform",
    "train_min_side",
]


def decode(data: bytes, channels: int = 3, *, min_side: int = 0) -> torch.Tensor:
    """Encoded bytes -> uint8 (C, H, W), turned as its EXIF orientation says, in RGB (or L).

    With `min_side`, a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling,
    Pillow's `draft`) while both sides keep at least `min_side` pixels: far cheaper for a phone photo
    cropped to a small model input. Only training's random crops use it (`train_min_side`); the
    deterministic path (`fit`: render, server, device) always decodes in full, so they agree.

    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (5, 3), (255, 0, 0)).save(buf, "PNG")
    >>> tuple(decode(buf.getvalue()).shape)
    (3, 3, 5)
    >>> buf = io.BytesIO(); Image.new("RGB", (1600, 1200), (0, 90, 0)).save(buf, "JPEG")
    >>> tuple(decode(buf.getvalue(), min_side=256).shape)  # decoded at 1/4
    (3, 300, 400)
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as src:
            if min_side > 0:
                src.draft(None, (min_side, min_side))  # a no-op for formats other than JPEG
            return from_pil(src, channels)
    except (UnidentifiedImageError, OSError) as e:
        raise BadInput(f"not a decodable image ({e}): import it through `datamoat data import-photos`") from None


def from_pil(im: PIL.Image.Image, channels: int = 3) -> torch.Tensor:
    """An opened Pillow image -> uint8 (C, H, W): `photo_fit.from_pil` (EXIF orientation applied,
    16-bit reduced to its top 8 bits, RGB or L) as a tensor."""
    return torch.from_numpy(photo_fit.from_pil(im, channels))


def _resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    # Antialiased bilinear, as torchvision's Resize on tensors does: downscaling without aliasing.
    # Only training's random crops resize here, batched by torch; `fit` runs `photo_fit.resize`.
    x = img[None].float()  # (1, C, H, W)
    y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return y[0].round().clamp(0, 255).to(torch.uint8)


def _on_numpy(img: torch.Tensor, fn: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """`fn` of `photo_fit` applied to a uint8 (C, H, W) tensor, as a tensor."""
    return torch.from_numpy(np.ascontiguousarray(fn(img.contiguous().numpy())))


def resize_shorter(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is `size`, keeping the aspect ratio (`photo_fit.resize_shorter`).

    >>> tuple(resize_shorter(torch.zeros(3, 100, 200, dtype=torch.uint8), 50).shape)
    (3, 50, 100)
    """
    return _on_numpy(img, lambda a: photo_fit.resize_shorter(a, size))


def center_crop(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centred (H, W) window; an image smaller than it is padded with zeros first (`photo_fit.center_crop`).

    >>> tuple(center_crop(torch.zeros(3, 10, 20, dtype=torch.uint8), (8, 8)).shape)
    (3, 8, 8)
    """
    return _on_numpy(img, lambda a: photo_fit.center_crop(a, size))


def letterbox(img: torch.Tensor, size: tuple[int, int], fill: int = 0) -> torch.Tensor:
    """The whole image, scaled to fit (H, W) and padded evenly with `fill` (`photo_fit.letterbox`).

    >>> tuple(letterbox(torch.zeros(3, 10, 40, dtype=torch.uint8), (16, 16)).shape)
    (3, 16, 16)
    """
    return _on_numpy(img, lambda a: photo_fit.letterbox(a, size, fill))


def random_resized_crop(
    img: torch.Tensor, size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """torchvision's RandomResizedCrop: a random area and aspect, resized to `size`; after 10 misses,
    a centre crop at the nearest allowed aspect.

    >>> g = torch.Generator().manual_seed(0)
    >>> tuple(random_resized_crop(torch.zeros(3, 50, 80, dtype=torch.uint8), (32, 32), (0.08, 1), (0.75, 1.33), g).shape)
    (3, 32, 32)
    """
    h, w = img.shape[-2:]
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=g))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            return _resize(img[..., top : top + ch, left : left + cw], *size)
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return _resize(center_crop(img, (ch, cw)), *size)


def hflip(img: torch.Tensor) -> torch.Tensor:
    """Mirror left-right."""
    return img.flip(-1)


def _shift_hue(x: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """float RGB (3, H, W) in [0, 1] with its hue turned by `hue_factor` of the colour circle, in HSV
    as torchvision's `adjust_hue` (its `_rgb2hsv`; the closed form of `_hsv2rgb`)."""
    r, g, b = x  # (H, W) each
    maxc, minc = x.amax(0), x.amin(0)
    delta = maxc - minc
    gray = delta == 0  # no hue: any value of h gives back the gray, so avoid dividing by 0
    s = delta / torch.where(gray, torch.ones_like(maxc), maxc)
    d = torch.where(gray, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = (h / 6.0 + hue_factor) % 1.0  # (H, W) in [0, 1)
    k = (torch.tensor([5.0, 3.0, 1.0])[:, None, None] + h * 6.0) % 6.0  # (3, H, W): R, G, B
    return maxc - maxc * s * torch.minimum(k, 4.0 - k).clamp(0, 1)


def adjust_hue(img: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """torchvision's adjust_hue: uint8 RGB (3, H, W) with its hue turned by `hue_factor` in
    [-0.5, 0.5] of the colour circle (0.5: the complementary colours); a gray (1, H, W) image is
    returned as it is.

    >>> red = torch.tensor([255, 0, 0], dtype=torch.uint8).reshape(3, 1, 1)
    >>> adjust_hue(red, 1 / 3).flatten().tolist()  # a third of the circle on: green
    [0, 255, 0]
    """
    check(-0.5 <= hue_factor <= 0.5, f"hue_factor must be in [-0.5, 0.5], got {hue_factor}")
    if img.shape[0] == 1:
        return img
    # Back to uint8 as torchvision's convert_image_dtype does (scale by 256 - 1e-3, truncate): the same pixels.
    return (_shift_hue(img.float() / 255, hue_factor) * 255.999).to(torch.uint8)


def color_jitter(
    img: torch.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    g: torch.Generator,
    hue: float = 0.0,
) -> torch.Tensor:
    """torchvision's ColorJitter: brightness, contrast and saturation factors in [max(0, 1 - x), 1 + x]
    and a hue shift in [-hue, hue], applied in a random order; saturation and hue leave a gray image.

    >>> g = torch.Generator().manual_seed(0)
    >>> color_jitter(torch.full((3, 4, 4), 100, dtype=torch.uint8), 0.5, 0.0, 0.0, g, hue=0.1).dtype
    torch.uint8
    """
    x = img.float()  # (C, H, W) in 0..255
    ops = []
    for name, amount in (("b", brightness), ("c", contrast), ("s", saturation)):
        if amount:
            ops.append((name, float(torch.empty(1).uniform_(max(0.0, 1 - amount), 1 + amount, generator=g))))
    if hue:  # drawn after the others, so a jitter without hue draws exactly what it drew before hue existed
        ops.append(("h", float(torch.empty(1).uniform_(-hue, hue, generator=g))))
    for i in torch.randperm(len(ops), generator=g).tolist():
        name, f = ops[i]
        gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None] if x.shape[0] == 3 else x  # (1, H, W)
        if name == "b":
            x = x * f
        elif name == "c":
            x = (x - gray.mean()) * f + gray.mean()
        elif name == "s" and x.shape[0] == 3:
            x = (x - gray) * f + gray
        elif name == "h" and x.shape[0] == 3:
            x = _shift_hue(x / 255, f) * 255
        x = x.clamp(0, 255)
    return x.round().to(torch.uint8)


def normalize(img: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (C, H, W) in 0..255 -> float32 ((x / 255) - mean) / std, per channel.

    >>> normalize(torch.full((1, 1, 1), 255, dtype=torch.uint8), (0.5,), (0.5,)).item()
    1.0
    """
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]  # (C, 1, 1)
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (img.float() / 255.0 - m) / s


def fit(img: torch.Tensor, cfg: PhotoTransformConfig) -> torch.Tensor:
    """The deterministic geometry: uint8 (C, H, W) of any size -> uint8 (C, *cfg.size), by `photo_fit.fit`.

    Training's evaluation, the rendered dataset, the server and a device all run that one numpy
    function (the server and a device without torch), so a photo reaches the model the same way everywhere.

    >>> tuple(fit(torch.zeros(3, 120, 300, dtype=torch.uint8), PhotoTransformConfig(size=(32, 32))).shape)
    (3, 32, 32)
    """
    return _on_numpy(img, lambda a: photo_fit.fit(a, cfg))


def eval_transform(img: torch.Tensor, cfg: PhotoTransformConfig) -> torch.Tensor:
    """The deterministic path: uint8 (C, H, W) of any size -> float32 (C, *cfg.size)."""
    return normalize(fit(img, cfg), cfg.mean, cfg.std)


def train_min_side(cfg: PhotoTransformConfig) -> int:
    """The fewest pixels a photo's shorter side needs for training's smallest random crop (area
    `scale[0]` at the most extreme `ratio`) to still hold the model's resolution.

    >>> train_min_side(PhotoTransformConfig(size=(64, 64), scale=(0.25, 1.0), ratio=(1.0, 1.0)))
    128
    """
    squeeze = min(cfg.ratio[0], 1 / cfg.ratio[1], 1.0)  # a crop's shorter side shrinks with its aspect
    return math.ceil(max(cfg.size) / math.sqrt(cfg.scale[0] * squeeze))


def train_transform(img: torch.Tensor, cfg: PhotoTransformConfig, g: torch.Generator) -> torch.Tensor:
    """The training path: uint8 (C, H, W) of any size -> float32 (C, *cfg.size), in this order:
    random resized crop, horizontal flip, the automatic augmentation policy (`cfg.auto_augment`, if
    any), colour jitter, then normalisation. Every random draw comes from `g`.

    The policy works on the crop at the model's size, as in torchvision's classification recipe, so
    its translations and shears are in the pixels the model sees.

    >>> cfg = PhotoTransformConfig(size=(16, 16), auto_augment="trivialaugment", hue=0.1)
    >>> train_transform(torch.zeros(3, 40, 60, dtype=torch.uint8), cfg, torch.Generator().manual_seed(0)).shape
    torch.Size([3, 16, 16])
    """
    out = random_resized_crop(img, cfg.size, cfg.scale, cfg.ratio, g)
    if cfg.hflip and float(torch.rand(1, generator=g)) < cfg.hflip:
        out = hflip(out)
    if cfg.auto_augment == "trivialaugment":
        out = trivial_augment(out, g)
    elif cfg.auto_augment == "randaugment":
        out = rand_augment(out, g, num_ops=cfg.ra_num_ops, magnitude=cfg.ra_magnitude)
    if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue:
        out = color_jitter(out, cfg.brightness, cfg.contrast, cfg.saturation, g, hue=cfg.hue)
    return normalize(out, cfg.mean, cfg.std)
