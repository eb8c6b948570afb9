"""torchvision's automatic augmentation policies on uint8 tensors: `trivial_augment`
(`TrivialAugmentWide`) and `rand_augment` (`RandAugment`).

The op set, the magnitude ranges and the signed-magnitude rule are torchvision's (`autoaugment.py`),
and each op follows its tensor kernel, so a recipe naming a policy means what it means there:
geometric ops take the nearest pixel and fill what comes from outside the image with 0, and colour
ops blend and then truncate to uint8 as torchvision's `_blend` does. Every random draw comes from
the generator given: a training crop seeded by (seed, epoch, index) is the same in any worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from datamoat.configs import check, check_choice

__all__ = ["trivial_augment", "rand_augment", "apply_op"]

Op = Callable[[torch.Tensor, float], torch.Tensor]  # uint8 (C, H, W), magnitude -> uint8 (C, H, W)


def _affine(img: torch.Tensor, m: tuple[float, float, float, float, float, float]) -> torch.Tensor:
    """Output pixel (x, y), in pixels from the image centre, takes the input pixel nearest to
    (m0 x + m1 y + m2, m3 x + m4 y + m5); 0 where that falls outside (torchvision's tensor affine)."""
    c, h, w = img.shape
    # The grid is built in the float steps of torchvision's `_gen_affine_grid`, not by F.affine_grid, so
    # a sample point that falls on a tie between two pixels takes the same one as there.
    x = torch.linspace(0.5 - w / 2, w / 2 - 0.5, w)  # (W,) pixel centres
    y = torch.linspace(0.5 - h / 2, h / 2 - 0.5, h)  # (H,)
    base = torch.stack([x.expand(h, w), y[:, None].expand(h, w), torch.ones(h, w)], -1)  # (H, W, 3)
    theta = torch.tensor([m[:3], m[3:]], dtype=torch.float32).T / torch.tensor([w / 2, h / 2])  # (3, 2) to [-1, 1]
    grid = torch.bmm(base.view(1, h * w, 3), theta[None]).view(1, h, w, 2)  # (1, H, W, 2)
    out = F.grid_sample(img[None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out[0].round().to(torch.uint8)  # (C, H, W)


# The inverse maps torchvision's `_apply_op` makes: shears about the top-left corner (center=[0, 0]),
# a translation by whole pixels, a rotation counter-clockwise by `m` degrees about the centre.
def _shear_x(img: torch.Tensor, m: float) -> torch.Tensor:
    return _affine(img, (1, m, m * img.shape[-2] / 2, 0, 1, 0))


def _shear_y(img: torch.Tensor, m: float) -> torch.Tensor:
    return _affine(img, (1, 0, 0, m, 1, m * img.shape[-1] / 2))


def _translate_x(img: torch.Tensor, m: float) -> torch.Tensor:
    return _affine(img, (1, 0, -int(m), 0, 1, 0))


def _translate_y(img: torch.Tensor, m: float) -> torch.Tensor:
    return _affine(img, (1, 0, 0, 0, 1, -int(m)))


def _rotate(img: torch.Tensor, m: float) -> torch.Tensor:
    cos, sin = math.cos(math.radians(m)), math.sin(math.radians(m))
    return _affine(img, (cos, -sin, 0, sin, cos, 0))


def _blend(img: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    # Truncated, not rounded, to uint8: torchvision's `_blend`.
    return (factor * img.float() + (1 - factor) * other.float()).clamp(0, 255).to(torch.uint8)


def _gray(img: torch.Tensor) -> torch.Tensor:
    """uint8 (C, H, W) -> uint8 (1, H, W), torchvision's `rgb_to_grayscale` weights."""
    if img.shape[0] == 1:
        return img
    r, g, b = img.float()  # (H, W) each
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(torch.uint8)[None]


def _color(img: torch.Tensor, m: float) -> torch.Tensor:
    return img if img.shape[0] == 1 else _blend(img, _gray(img), 1 + m)


def _contrast(img: torch.Tensor, m: float) -> torch.Tensor:
    return _blend(img, _gray(img).float().mean(), 1 + m)


def _sharpness(img: torch.Tensor, m: float) -> torch.Tensor:
    c, h, w = img.shape
    if h <= 2 or w <= 2:
        return img
    kernel = torch.ones(3, 3)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)  # (C, 1, 3, 3): each channel smoothed alone
    blurred = img.clone()  # the border keeps its pixels, as in torchvision
    blurred[:, 1:-1, 1:-1] = F.conv2d(img[None].float(), kernel, groups=c)[0].round().to(torch.uint8)
    return _blend(img, blurred, 1 + m)


def _posterize(img: torch.Tensor, m: float) -> torch.Tensor:
    return img & ((0xFF << (8 - int(m))) & 0xFF)  # keep the top int(m) bits


def _solarize(img: torch.Tensor, m: float) -> torch.Tensor:
    return torch.where(img >= m, 255 - img, img)


def _autocontrast(img: torch.Tensor, m: float) -> torch.Tensor:
    lo = img.amin((-2, -1), keepdim=True).float()  # (C, 1, 1)
    hi = img.amax((-2, -1), keepdim=True).float()
    scale = 255 / (hi - lo)
    flat = ~torch.isfinite(scale)  # a one-value channel is left as it is
    lo, scale = lo.masked_fill(flat, 0), scale.masked_fill(flat, 1)
    return ((img - lo) * scale).clamp(0, 255).to(torch.uint8)


def _equalize_channel(x: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W) -> uint8 (H, W) through torchvision's (PIL's) equalizing lookup table."""
    hist = torch.bincount(x.flatten(), minlength=256)  # (256,)
    step = int(hist[hist != 0][:-1].sum()) // 255  # the last value present takes no share
    if step == 0:
        return x
    lut = (torch.cumsum(hist, 0) + step // 2) // step
    lut = F.pad(lut, [1, 0])[:-1].clamp(0, 255)  # a value maps by the count strictly below it
    return lut[x.long()].to(torch.uint8)


def _equalize(img: torch.Tensor, m: float) -> torch.Tensor:
    return torch.stack([_equalize_channel(x) for x in img])


# name: (op, signed, TrivialAugmentWide's largest magnitude, RandAugment's). Bin k of n is k / (n - 1)
# of the largest, except Posterize (bits, 8 down to 8 - largest) and Solarize (threshold, 255 down
# to 0); RandAugment's translations are 150/331 of the width (X) or height (Y). None: no magnitude.
_OPS: dict[str, tuple[Op, bool, float | None, float | None]] = {
    "Identity": (lambda img, m: img, False, None, None),
    "ShearX": (_shear_x, True, 0.99, 0.3),
    "ShearY": (_shear_y, True, 0.99, 0.3),
    "TranslateX": (_translate_x, True, 32.0, 150 / 331),
    "TranslateY": (_translate_y, True, 32.0, 150 / 331),
    "Rotate": (_rotate, True, 135.0, 30.0),
    "Brightness": (lambda img, m: _blend(img, torch.zeros(()), 1 + m), True, 0.99, 0.9),
    "Color": (_color, True, 0.99, 0.9),
    "Contrast": (_contrast, True, 0.99, 0.9),
    "Sharpness": (_sharpness, True, 0.99, 0.9),
    "Posterize": (_posterize, False, 6, 4),
    "Solarize": (_solarize, False, 255.0, 255.0),
    "AutoContrast": (_autocontrast, False, None, None),
    "Equalize": (_equalize, False, None, None),
}


def _magnitudes(name: str, top: float, n: int) -> torch.Tensor:
    """The n magnitude bins of op `name` (n,), computed as torchvision does, in float32."""
    if name == "Posterize":
        return 8 - (torch.arange(n) / ((n - 1) / top)).round().int()
    if name == "Solarize":
        return torch.linspace(top, 0.0, n)
    return torch.linspace(0.0, top, n)


def _random_op(img: torch.Tensor, g: torch.Generator, wide: bool, bins: int, magnitude: int | None) -> torch.Tensor:
    """One op drawn uniformly, at bin `magnitude` (None: a random bin), its sign flipped on a coin."""
    names = list(_OPS)
    name = names[int(torch.randint(len(names), (1,), generator=g))]
    op, signed, ta_top, ra_top = _OPS[name]
    top = ta_top if wide else ra_top
    m = 0.0
    if top is not None:
        if not wide and name.startswith("Translate"):
            top *= img.shape[-1] if name == "TranslateX" else img.shape[-2]
        k = int(torch.randint(bins, (1,), generator=g)) if magnitude is None else magnitude
        m = float(_magnitudes(name, top, bins)[k])
    if signed and int(torch.randint(2, (1,), generator=g)):
        m = -m
    return op(img, m)


def apply_op(img: torch.Tensor, op_name: str, magnitude: float) -> torch.Tensor:
    """One op of the policies by torchvision's name at a signed `magnitude` in the op's own unit, as
    torchvision's `_apply_op`: shear factor, pixels, degrees counter-clockwise, a colour factor less
    1 (Brightness, Color, Contrast, Sharpness), bits kept (Posterize), threshold (Solarize).

    >>> img = torch.tensor([[[10, 200]]], dtype=torch.uint8)  # (1, 1, 2)
    >>> apply_op(img, "Solarize", 128).tolist()
    [[[10, 55]]]
    """
    _check_image(img, 2)
    check_choice("op_name", op_name, tuple(_OPS))
    return _OPS[op_name][0](img, magnitude)


def _check_image(img: torch.Tensor, bins: int) -> None:
    check(
        img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] in (1, 3),
        f"automatic augmentation takes a uint8 (C, H, W) image with 1 or 3 channels, got {img.dtype} {tuple(img.shape)}",
    )
    check(bins >= 2, f"num_magnitude_bins must be at least 2, got {bins}")


def trivial_augment(img: torch.Tensor, g: torch.Generator, num_magnitude_bins: int = 31) -> torch.Tensor:
    """torchvision's TrivialAugmentWide: one op drawn uniformly at a uniformly drawn magnitude.

    uint8 (C, H, W), C 1 or 3 -> uint8 (C, H, W); every draw comes from `g`.

    >>> img = torch.arange(48, dtype=torch.uint8).reshape(3, 4, 4)
    >>> out = trivial_augment(img, torch.Generator().manual_seed(0))
    >>> out.shape, out.dtype
    (torch.Size([3, 4, 4]), torch.uint8)
    """
    _check_image(img, num_magnitude_bins)
    return _random_op(img, g, True, num_magnitude_bins, None)


def rand_augment(
    img: torch.Tensor, g: torch.Generator, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31
) -> torch.Tensor:
    """torchvision's RandAugment: `num_ops` ops drawn uniformly in turn, each at bin `magnitude` of
    `num_magnitude_bins`, a signed op's direction drawn on a coin.

    uint8 (C, H, W), C 1 or 3 -> uint8 (C, H, W); every draw comes from `g`.

    >>> img = torch.arange(48, dtype=torch.uint8).reshape(3, 4, 4)
    >>> g = torch.Generator().manual_seed(0)
    >>> torch.equal(rand_augment(img, g, num_ops=0), img)
    True
    >>> rand_augment(img, g).shape
    torch.Size([3, 4, 4])
    """
    _check_image(img, num_magnitude_bins)
    check(num_ops >= 0, f"num_ops must be at least 0, got {num_ops}")
    check(0 <= magnitude < num_magnitude_bins, f"magnitude must be a bin in [0, {num_magnitude_bins - 1}]")
    for _ in range(num_ops):
        img = _random_op(img, g, False, num_magnitude_bins, magnitude)
    return img
