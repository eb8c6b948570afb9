"""Random views of image batches for self- and semi-supervised training, on whole batches in torch.

- `simclr_view`: SimCLR's view of an image (Chen et al. 2020, "A Simple Framework for Contrastive
  Learning of Visual Representations"): a random resized crop, a horizontal flip, then an intensity
  jitter of brightness and contrast (grayscale), plus saturation and a random grayscale (RGB).
- `rand_augment`: FixMatch's strong view (Sohn et al. 2020): RandAugment's operations, `ops` of them
  per image, each at a random magnitude, then Cutout.

Batches come normalised, as `Model.to_tensor` makes them. Each function takes the preprocessing's
mean and std, works on pixel values in [0, 1] (the jitters and the fill of a shifted border are
defined there), and returns a normalised batch of the same shape. One seeded CPU generator drives
every draw, so a seed gives the same views anywhere; the pixels stay on the batch's device.
Everything is batched (one `grid_sample` for all the geometry of a batch), so a CPU makes views of
thousands of 28x28 images a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["STRONG_OPS", "simclr_view", "rand_augment", "to_unit", "from_unit"]

# RandAugment's operations as FixMatch uses them (Equalize left out: a histogram per image and channel
# does not batch); geometry first, then the photometric ones.
STRONG_OPS = (
    "identity",
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "autocontrast",
    "brightness",
    "contrast",
    "color",
    "sharpness",
    "posterize",
    "solarize",
)
_GEOMETRY = STRONG_OPS[1:6]


def _stats(mean: Sequence[float], std: Sequence[float], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(list(mean), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)  # (1, C, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)  # (1, C, 1, 1)
    return m, s


def to_unit(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised (B, C, H, W) -> pixel values in [0, 1] (B, C, H, W)."""
    m, s = _stats(mean, std, x)
    return x * s + m


def from_unit(u: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Pixel values (B, C, H, W), clamped to [0, 1], -> normalised (B, C, H, W)."""
    m, s = _stats(mean, std, u)
    return (u.clamp(0, 1) - m) / s


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _warp(u: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image through its affine map `theta` (B, 2, 3) (output coords -> input coords,
    both in [-1, 1]); what falls outside the image is black."""
    grid = F.affine_grid(theta.to(u.device, u.dtype), list(u.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(u, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gray(u: torch.Tensor) -> torch.Tensor:
    """Luma (B, 1, H, W) of RGB pixels (B, 3, H, W) (ITU-R 601, as PIL); a 1-channel batch as it is."""
    if u.shape[1] != 3:
        return u.mean(1, keepdim=True)
    w = torch.tensor([0.299, 0.587, 0.114], dtype=u.dtype, device=u.device).view(1, 3, 1, 1)
    return (u * w).sum(1, keepdim=True)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """b + factor * (a - b) per image: PIL's ImageEnhance (factor 1 keeps `a`, 0 gives `b`)."""
    return b + factor.view(-1, 1, 1, 1).to(a.device, a.dtype) * (a - b)


def simclr_view(
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    g: torch.Generator,
    *,
    strength: float = 0.5,
    min_scale: float = 0.2,
    flip: bool = True,
) -> torch.Tensor:
    """One SimCLR view of each image of a normalised batch: (B, C, H, W) -> (B, C, H, W).

    A crop of a random `min_scale`..1 of the area and aspect ratio 3/4..4/3, resized back; a flip with
    probability 1/2; then, with probability 0.8, brightness and contrast (and saturation for RGB)
    scaled by random factors in 1 +- 0.8 `strength`, in a random order of the two; RGB images turn
    gray with probability 0.2 (SimCLR's colour distortion without hue, which needs an HSV round trip).

    >>> g = torch.Generator().manual_seed(0)
    >>> simclr_view(torch.zeros(4, 1, 8, 8), [0.5], [0.25], g).shape
    torch.Size([4, 1, 8, 8])
    """
    b, c = x.shape[:2]
    u = to_unit(x, mean, std)  # (B, C, H, W) in [0, 1]
    area = _uniform(b, min_scale, 1.0, g)
    logr = _uniform(b, math.log(3 / 4), math.log(4 / 3), g)
    w = torch.sqrt(area * logr.exp()).clamp(max=1.0)  # crop width, a fraction of the image's
    h = torch.sqrt(area / logr.exp()).clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)  # the crop's centre: the crop stays inside
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    u = _warp(u, theta)
    jit = 0.8 * strength
    on = (torch.rand(b, generator=g) < 0.8).float()  # which images are jittered at all
    bright = 1 + on * _uniform(b, -jit, jit, g)
    contrast = 1 + on * _uniform(b, -jit, jit, g)
    bright_first = torch.rand(b, generator=g) < 0.5
    mean_of = lambda v: _gray(v).mean((1, 2, 3), keepdim=True)  # noqa: E731  (B, 1, 1, 1)
    for step in range(2):  # brightness then contrast, or contrast then brightness
        do_bright = bright_first if step == 0 else ~bright_first
        v_b = _blend(u, torch.zeros_like(u), bright).clamp(0, 1)
        v_c = _blend(u, mean_of(u).expand_as(u), contrast).clamp(0, 1)
        u = torch.where(do_bright.view(b, 1, 1, 1).to(u.device), v_b, v_c)
    if c == 3:
        sat = 1 + on * _uniform(b, -jit, jit, g)
        u = _blend(u, _gray(u).expand_as(u), sat).clamp(0, 1)
        gray = (torch.rand(b, generator=g) < 0.2).view(b, 1, 1, 1).to(u.device)
        u = torch.where(gray, _gray(u).expand_as(u), u)
    return from_unit(u, mean, std)


def _geometry(sel: torch.Tensor, mag: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image's affine map (B, 2, 3): the product of its chosen geometric ops at their magnitudes
    (rotate up to 30 degrees, shear up to 0.3, translate up to 0.3 of the side), each of a random sign."""
    b = len(mag)
    sign = torch.where(torch.rand(b, len(_GEOMETRY), generator=g) < 0.5, -1.0, 1.0)  # (B, 5)
    m = mag[:, None] * sign * sel[:, 1 : 1 + len(_GEOMETRY)].float()  # (B, 5), 0 where the op is not chosen
    a = m[:, 0] * math.radians(30)
    cos, sin = torch.cos(a), torch.sin(a)
    mat = torch.zeros(b, 3, 3)
    mat[:, 0, 0], mat[:, 0, 1], mat[:, 1, 0], mat[:, 1, 1], mat[:, 2, 2] = cos, -sin, sin, cos, 1.0
    shear = torch.eye(3).repeat(b, 1, 1)
    shear[:, 0, 1], shear[:, 1, 0] = m[:, 1] * 0.3, m[:, 2] * 0.3
    shift = torch.eye(3).repeat(b, 1, 1)
    shift[:, 0, 2], shift[:, 1, 2] = m[:, 3] * 0.6, m[:, 4] * 0.6  # 0.3 of the side is 0.6 in [-1, 1] units
    return (shift @ shear @ mat)[:, :2]  # (B, 2, 3)


def rand_augment(
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    g: torch.Generator,
    *,
    ops: int = 2,
    cutout: float = 0.5,
) -> torch.Tensor:
    """FixMatch's strong view of each image of a normalised batch: (B, C, H, W) -> (B, C, H, W).

    Each image gets `ops` distinct operations of `STRONG_OPS`, each at its own magnitude drawn
    uniformly in [0, 1] (FixMatch's RandAugment: no fixed magnitude to tune), then a gray square of
    `cutout` times the shorter side at a random place (0 turns Cutout off).

    >>> g = torch.Generator().manual_seed(0)
    >>> rand_augment(torch.zeros(4, 3, 8, 8), [0.5] * 3, [0.25] * 3, g).shape
    torch.Size([4, 3, 8, 8])
    """
    b, _, hh, ww = x.shape
    k = len(STRONG_OPS)
    ops = max(0, min(ops, k))
    # `ops` distinct operations per image: the top `ops` of random scores
    pick = torch.rand(b, k, generator=g).argsort(1)[:, :ops]  # (B, ops)
    sel = torch.zeros(b, k, dtype=torch.bool).scatter_(1, pick, True)  # (B, K)
    mag = torch.rand(b, generator=g)  # (B,)
    u = to_unit(x, mean, std)  # (B, C, H, W)
    if sel[:, 1 : 1 + len(_GEOMETRY)].any():
        u = _warp(u, _geometry(sel, mag, g))
    dev = u.device
    signed = 1 + 0.9 * mag * torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)  # enhance factors 0.1..1.9

    def chosen(name: str) -> torch.Tensor:
        return sel[:, STRONG_OPS.index(name)].view(b, 1, 1, 1).to(dev)

    lo = u.amin((2, 3), keepdim=True)  # (B, C, 1, 1)
    hi = u.amax((2, 3), keepdim=True)
    u = torch.where(chosen("autocontrast"), (u - lo) / (hi - lo).clamp(min=1e-3), u)
    u = torch.where(chosen("brightness"), _blend(u, torch.zeros_like(u), signed), u).clamp(0, 1)
    contrast = _blend(u, _gray(u).mean((1, 2, 3), keepdim=True).expand_as(u), signed)
    u = torch.where(chosen("contrast"), contrast, u).clamp(0, 1)
    u = torch.where(chosen("color"), _blend(u, _gray(u).expand_as(u), signed), u).clamp(0, 1)
    # sharpness: against PIL's smoothing kernel (centre 5, neighbours 1, /13), channel by channel
    kernel = torch.ones(3, 3, dtype=u.dtype, device=dev)
    kernel[1, 1] = 5.0
    smooth = F.conv2d(
        F.pad(u, (1, 1, 1, 1), mode="replicate"), (kernel / 13).expand(u.shape[1], 1, 3, 3), groups=u.shape[1]
    )
    u = torch.where(chosen("sharpness"), _blend(u, smooth, signed), u).clamp(0, 1)
    levels = (2 ** (8 - (mag * 4).round())).view(b, 1, 1, 1).to(dev)  # keep 8..4 bits
    u = torch.where(chosen("posterize"), torch.floor(u * 255 / levels) * levels / 255, u)
    threshold = (1 - mag).view(b, 1, 1, 1).to(dev)
    u = torch.where(chosen("solarize") & (u >= threshold), 1 - u, u)
    if cutout > 0:
        side = max(1, int(round(cutout * min(hh, ww))))
        cy = torch.randint(0, hh, (b,), generator=g).view(b, 1, 1, 1).to(dev)
        cx = torch.randint(0, ww, (b,), generator=g).view(b, 1, 1, 1).to(dev)
        rows = torch.arange(hh, device=dev).view(1, 1, hh, 1)
        cols = torch.arange(ww, device=dev).view(1, 1, 1, ww)
        box = ((rows - cy).abs() * 2 < side) & ((cols - cx).abs() * 2 < side)  # (B, 1, H, W)
        u = torch.where(box, torch.full_like(u, 0.5), u)
    return from_unit(u, mean, std)
