"""A synthetic photo benchmark: Fashion-MNIST items drawn as colour objects on textured backgrounds.

No real photo dataset can be downloaded where datamoat is tested; this stand-in has what photos have and
Fashion-MNIST lacks: colour, clutter, varied sizes and aspect ratios, JPEG artefacts. Each item is tinted,
masked by its own intensity, upscaled, flipped, rotated and placed at random (some with a shadow) over a
crop of scikit-learn's sample photos or a procedural texture that says nothing about the class. Output:
``OUT/<split>/<label>_<class name>/<index>.jpg`` (the label prefix keeps sorted folders in label order),
``manifest.jsonl`` and ``README.txt``. Items are chosen from ``SeedSequence(seed)``, image ``i`` is drawn
from its ``i``-th spawned child: the same seed gives byte-identical files whatever the number of workers.

>>> import tempfile
>>> rng = np.random.default_rng(0)
>>> x = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)  # (N, 28, 28) stand-in items
>>> y = np.arange(12) % 3
>>> out = Path(tempfile.mkdtemp()) / "photos"
>>> summary = make_photos(out, SynthConfig(n_per_class=2, test_fraction=0.5), source=(x, y, ["a", "b", "c"]))
>>> summary["images"], summary["counts"]["test"]
(6, {'a': 1, 'b': 1, 'c': 1})
>>> sorted(p.name for p in out.iterdir())
['README.txt', 'manifest.jsonl', 'test', 'train']
"""

from __future__ import annotations

import colorsys
import contextlib
import dataclasses
import importlib.util
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from datamoat.configs import Config, check
from datamoat.data.idx import read_idx
from datamoat.data.sources import FASHION_CLASSES, FASHION_MNIST_DIR
from datamoat.errors import BadInput, NotFound

__all__ = ["SynthConfig", "PhotoSource", "load_fashion_mnist", "render_photo", "make_photos", "SPLITS"]

SPLITS = ("train", "test")
BACKGROUNDS = ("photo", "noise", "stripes", "gradient")
_MARK = "datamoat synthetic photo benchmark"  # first line of README.txt: marks a folder we may overwrite


@dataclasses.dataclass
class SynthConfig(Config):
    """How many images, and the ranges every random choice is drawn from.

    >>> SynthConfig(n_per_class=10, test_fraction=0.3).to_dict()["max_side"]
    480
    """

    n_per_class: int = 100  # images per class, train and test together
    test_fraction: float = 0.2  # share of each class's images in the test split (rounded per class)
    classes: tuple[int, ...] = ()  # labels to draw; empty: every class of the source
    min_side: int = 120  # the longer side is drawn uniformly from [min_side, max_side] pixels
    max_side: int = 480
    min_aspect: float = 0.75  # width / height, drawn log-uniformly: 3:4 portrait ...
    max_aspect: float = 16 / 9  # ... to 16:9 landscape
    min_quality: int = 75  # JPEG quality, drawn uniformly
    max_quality: int = 95
    min_scale: float = 0.35  # the object's side as a fraction of the image's shorter side
    max_scale: float = 0.9
    max_rotation: float = 30.0  # degrees, either way
    photo_fraction: float = 0.5  # backgrounds cropped from the sample photos; the rest are procedural
    seed: int = 0
    workers: int = 1  # processes; 0 uses every core. The output does not depend on it.

    def validate(self) -> None:
        cls, q = tuple(self.classes), self.max_quality
        rules = [
            (self.n_per_class >= 1, f"n_per_class must be at least 1, got {self.n_per_class}"),
            (0 <= self.test_fraction < 1, f"test_fraction must be in [0, 1), got {self.test_fraction}"),
            (all(isinstance(c, int) and c >= 0 for c in cls), f"classes must be label numbers >= 0, got {cls}"),
            (len(set(cls)) == len(cls), f"classes lists a label twice: {cls}"),
            (self.min_side >= 16, f"min_side must be at least 16 pixels, got {self.min_side}"),
            (self.min_side <= self.max_side <= 4096, f"max_side must be in [min_side, 4096], got {self.max_side}"),
            (0.25 <= self.min_aspect <= 4, f"min_aspect (width / height) must be in [0.25, 4], got {self.min_aspect}"),
            (self.min_aspect <= self.max_aspect <= 4, f"max_aspect must be in [min_aspect, 4], got {self.max_aspect}"),
            (1 <= self.min_quality <= 100, f"min_quality must be in [1, 100], got {self.min_quality}"),
            (self.min_quality <= self.max_quality <= 100, f"max_quality must be in [min_quality, 100], got {q}"),
            (0 < self.min_scale <= 1, f"min_scale must be in (0, 1], got {self.min_scale}"),
            (self.min_scale <= self.max_scale <= 1, f"max_scale must be in [min_scale, 1], got {self.max_scale}"),
            (0 <= self.max_rotation <= 180, f"max_rotation must be in [0, 180] degrees, got {self.max_rotation}"),
            (0 <= self.photo_fraction <= 1, f"photo_fraction must be in [0, 1], got {self.photo_fraction}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.workers >= 0, f"workers must be >= 0 (0 uses every core), got {self.workers}"),
        ]
        for ok, message in rules:
            check(ok, message)


@dataclasses.dataclass(frozen=True)
class PhotoSource:
    """Items to draw: `x` (N, h, w) uint8, `y` (N,) labels indexing `classes`; `test_pool` (N,) bool,
    if given, reserves items for the test split (Fashion-MNIST's official test set)."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    name: str = "arrays"
    test_pool: np.ndarray | None = None


def as_source(source: PhotoSource | tuple | None) -> PhotoSource:
    """A checked `PhotoSource` from one, from ``(x, y, class_names)``, or Fashion-MNIST for None."""
    if source is None:
        return load_fashion_mnist()
    if isinstance(source, PhotoSource):
        x, y, classes, name, pool = source.x, source.y, source.classes, source.name, source.test_pool
    else:
        x, y, classes = source
        name, pool = "arrays", None
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]  # (N, 1, h, w) -> (N, h, w)
    check(x.ndim == 3, f"source images have shape {x.shape}: pass (N, h, w) or (N, 1, h, w) grayscale")
    check(len(x) > 0, "source has no images: pass at least one per class")
    check(x.dtype == np.uint8, f"source images are {x.dtype}: pass uint8 (0..255)")
    check(y.shape == (len(x),), f"source has {len(x)} images but labels of shape {y.shape}: pass one label each")
    check(np.issubdtype(y.dtype, np.integer), f"source labels are {y.dtype}: pass integer labels")
    check(len(y) == 0 or 0 <= y.min() <= y.max() < len(classes), f"source labels must index the {len(classes)} names")
    check(pool is None or np.shape(pool) == (len(x),), f"source test_pool must be one bool per image ({len(x)})")
    return PhotoSource(x, y.astype(np.int64), [str(c) for c in classes], name, pool)


def load_fashion_mnist(root: str | Path = FASHION_MNIST_DIR) -> PhotoSource:
    """Fashion-MNIST's 60k train and 10k test items; test images only feed the test split."""
    root = Path(root)
    if not root.is_dir():
        raise NotFound(
            f"Fashion-MNIST directory {root} does not exist: `apt-get install dataset-fashion-mnist` or pass a path"
        )
    parts = []
    for stem in (f"{split}-{kind}-ubyte" for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")):
        found = [c for c in (root / f"{stem}.gz", root / stem) if c.exists()]
        if not found:
            raise NotFound(f"{root} has no {stem}[.gz]: point at a directory with the four Fashion-MNIST IDX files")
        parts.append(read_idx(found[0]))
    x, y = np.concatenate([parts[0], parts[2]]), np.concatenate([parts[1], parts[3]])  # (70000, 28, 28), (70000,)
    pool = np.arange(len(y)) >= len(parts[1])
    return as_source(PhotoSource(x, y, FASHION_CLASSES, "fashion-mnist", pool))


def _plan(src: PhotoSource, cfg: SynthConfig) -> list[dict[str, Any]]:
    """One row per image, index order: split, label, path and the source item it draws."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed))  # the items' own seeds are its children
    labels = tuple(cfg.classes) or tuple(range(len(src.classes)))
    bad = [c for c in labels if c >= len(src.classes)]
    check(not bad, f"classes {bad} are not in the source (labels 0..{len(src.classes) - 1}): pick from those")
    n_test = round(cfg.n_per_class * cfg.test_fraction)
    need = {"train": cfg.n_per_class - n_test, "test": n_test}
    picks: dict[tuple[str, int], np.ndarray] = {}
    for label in labels:
        items = np.flatnonzero(src.y == label)
        if src.test_pool is not None:
            pools = {"train": items[~src.test_pool[items]], "test": items[src.test_pool[items]]}
        else:  # keep train and test items apart: split this class's items first
            items = rng.permutation(items)
            k = min(len(items) - 1, max(1, round(len(items) * cfg.test_fraction))) if n_test else 0
            pools = {"test": items[:k], "train": items[k:]}
        for split in SPLITS:
            pool, name = pools[split], src.classes[label]
            check(need[split] == 0 or len(pool) > 0, f"class {name!r} has too few source items to fill both splits")
            reps = math.ceil(need[split] / max(len(pool), 1))  # reuse items only when the pool is too small
            picks[split, label] = np.concatenate([rng.permutation(pool) for _ in range(reps)] or [pool])[: need[split]]
    width = len(str(max(labels)))
    dirs = {
        c: f"{c:0{width}d}_" + (re.sub(r"[^A-Za-z0-9.-]+", "_", src.classes[c]).strip("_.") or "class") for c in labels
    }
    digits = max(6, len(str(cfg.n_per_class * len(labels) - 1)))
    rows: list[dict[str, Any]] = []
    for split in SPLITS:
        for label in labels:
            for s in picks[split, label]:
                i = len(rows)
                path = f"{split}/{dirs[label]}/{i:0{digits}d}.jpg"
                row = {"index": i, "split": split, "label": label, "class_name": src.classes[label], "path": path}
                rows.append({**row, "source": src.name, "source_index": int(s), "seed": cfg.seed})
    return rows


_PHOTOS: list[Image.Image] = []  # scikit-learn's sample photos, loaded once per process


def _sample_photos() -> list[Image.Image]:
    """china.jpg and flower.jpg, the files `sklearn.datasets.load_sample_images` reads, read without
    importing scikit-learn (which costs more than making a few hundred images)."""
    if not _PHOTOS:
        spec = importlib.util.find_spec("sklearn")
        root = Path(list(spec.submodule_search_locations or [])[0]) / "datasets" / "images" if spec else Path("?")
        for name in ("china.jpg", "flower.jpg"):
            if not (root / name).is_file():
                raise NotFound(f"scikit-learn's sample photo {root / name} is missing: reinstall scikit-learn")
            with Image.open(root / name) as im:
                _PHOTOS.append(im.convert("RGB"))  # (427, 640) each
    return _PHOTOS


def _size(rng: np.random.Generator, cfg: SynthConfig) -> tuple[int, int]:
    """(width, height): the longer side uniform, width / height log-uniform, both kept in range after rounding."""
    long = int(rng.integers(cfg.min_side, cfg.max_side + 1))
    aspect = math.exp(rng.uniform(math.log(cfg.min_aspect), math.log(cfg.max_aspect)))

    def fit(v: int, lo: int, hi: int) -> int:
        return min(max(v, lo), hi) if lo <= hi else v

    if aspect >= 1:
        h = fit(round(long / aspect), math.ceil(long / cfg.max_aspect), math.floor(long / cfg.min_aspect))
        return long, max(h, 1)
    w = fit(round(long * aspect), math.ceil(long * cfg.min_aspect), math.floor(long * cfg.max_aspect))
    return max(w, 1), long


def _colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val)), np.float32) * 255


def _background(rng: np.random.Generator, kind: str, w: int, h: int) -> np.ndarray:
    """A (h, w, 3) float32 texture in 0..255."""
    if kind == "photo":
        photo = _sample_photos()[int(rng.integers(2))]
        pw, ph = photo.size
        cw = min(pw, ph * w / h) * rng.uniform(0.25, 1.0)  # a crop of the image's aspect, at a random zoom
        ch = cw * h / w
        x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
        im = photo.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        gain = rng.uniform(0.7, 1.2, 3).astype(np.float32)  # (3,) exposure and white balance
        return np.asarray(im, np.float32) * gain
    yy = np.arange(h, dtype=np.float32)[:, None]  # (h, 1)
    xx = np.arange(w, dtype=np.float32)[None, :]  # (1, w)
    theta = rng.uniform(0, np.pi)
    t = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))  # (h, w) distance along a direction
    c1, c2 = _colour(rng, (0, 1), (0.2, 1)), _colour(rng, (0, 1), (0.2, 1))  # (3,) each
    if kind == "noise":
        layers = []
        for cells in (int(rng.integers(2, 7)), int(rng.integers(8, 25))):  # a coarse and a fine octave
            grid = rng.integers(0, 256, (cells, max(2, round(cells * w / h)), 3), dtype=np.uint8)
            layers.append(np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC), np.float32))
        mix = 0.7 * layers[0] + 0.3 * layers[1]  # (h, w, 3)
        return c1 + (c2 - c1) * 0.6 + (mix - 128) * np.float32(rng.uniform(0.5, 1.2))
    if kind == "stripes":
        period, sharp = rng.uniform(6, 0.3 * max(w, h)), rng.uniform(0.5, 8)
        v = 0.5 + 0.5 * np.tanh(sharp * np.sin(t * np.float32(2 * np.pi / period) + np.float32(rng.uniform(0, 6.3))))
    else:  # gradient
        v = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return c1 + (c2 - c1) * v[..., None]  # (h, w, 3)


def _blend(canvas: np.ndarray, alpha: np.ndarray, rgb: np.ndarray, x0: int, y0: int) -> None:
    """Composite a layer (alpha (a, b), rgb (a, b, 3) or (3,)) onto canvas (h, w, 3) at (x0, y0), clipped."""
    h, w = canvas.shape[:2]
    ya, yb, xa, xb = max(y0, 0), min(y0 + alpha.shape[0], h), max(x0, 0), min(x0 + alpha.shape[1], w)
    if ya >= yb or xa >= xb:
        return
    a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0, None]  # (a', b', 1)
    layer = rgb[ya - y0 : yb - y0, xa - x0 : xb - x0] if rgb.ndim == 3 else rgb
    region = canvas[ya:yb, xa:xb]
    region += (layer - region) * a  # in place: canvas is updated


def render_photo(
    item: np.ndarray, index: int, config: SynthConfig, *, draw_object: bool = True
) -> tuple[np.ndarray, dict[str, Any]]:
    """Image `index` of the set drawn from `item` (h, w) uint8: (H, W, 3) uint8 and what was drawn.

    Every random number is drawn whether or not `draw_object`, so leaving the object out
    gives the same image without it (tests use that to check the object is there).

    >>> im, info = render_photo(np.full((8, 8), 255, np.uint8), 0, SynthConfig())
    >>> im.shape == (info["height"], info["width"], 3), info["background"] in BACKGROUNDS
    (True, True)
    """
    cfg = config
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(index,)))
    w, h = _size(rng, cfg)
    quality = int(rng.integers(cfg.min_quality, cfg.max_quality + 1))
    kind = "photo" if rng.random() < cfg.photo_fraction else BACKGROUNDS[1 + int(rng.integers(3))]
    colour = _colour(rng, (0.3, 1), (0.45, 1))  # (3,)
    side = max(4, round(rng.uniform(cfg.min_scale, cfg.max_scale) * min(w, h)))
    angle, flip = rng.uniform(-cfg.max_rotation, cfg.max_rotation), rng.random() < 0.5
    cx, cy = rng.random(), rng.random()  # where the object's square lies within the image
    shadow = rng.random() < 0.5
    shift = rng.uniform(0.02, 0.08, 2) * side  # (2,) shadow offset, pixels
    shade, noise = rng.uniform(0.25, 0.55), rng.uniform(0, 3)
    canvas = _background(rng, kind, w, h)  # (h, w, 3) float32
    obj = Image.fromarray(np.ascontiguousarray(item))
    if flip:
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    obj = obj.resize((side, side), Image.Resampling.BICUBIC).rotate(angle, Image.Resampling.BICUBIC, expand=True)
    x0 = round(cx * (w - side)) - (obj.width - side) // 2
    y0 = round(cy * (h - side)) - (obj.height - side) // 2
    inten = np.asarray(obj, np.float32) / 255  # (oh, ow): the item's intensity, upscaled and rotated
    alpha = np.clip(inten * 10, 0, 1)  # the item's black background transparent, anything above a tenth opaque
    bbox = [max(x0, 0), max(y0, 0), min(x0 + obj.width, w), min(y0 + obj.height, h)]
    if draw_object:
        if shadow:
            soft = Image.fromarray(np.uint8(alpha * 255)).filter(ImageFilter.BoxBlur(max(1, side // 40)))
            dx, dy = (int(v) for v in np.rint(shift))
            _blend(canvas, np.asarray(soft, np.float32) / 255 * shade, np.zeros(3, np.float32), x0 + dx, y0 + dy)
        _blend(canvas, alpha, colour * (0.3 + 0.7 * inten)[..., None], x0, y0)  # brighter parts of the item: lighter
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(noise)  # sensor noise
    out = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)  # (h, w, 3)
    info = {"width": w, "height": h, "quality": quality, "background": kind, "bbox": bbox, "shadow": bool(shadow)}
    info.update(angle=round(float(angle), 2), scale=round(side / min(w, h), 3))
    return out, info


_STATE: dict[str, Any] = {}  # per process: the config and output folder for `_make`


def _init(config: SynthConfig, out: str) -> None:
    # Workers read the photos themselves: a large start-up payload blocks the parent if a worker dies early.
    _STATE.update(config=config, out=Path(out))
    _sample_photos()


def _make(task: tuple[dict[str, Any], np.ndarray]) -> tuple[dict[str, Any], int]:
    """Render, encode and write one image: its manifest row and its size in bytes."""
    row, item = task
    im, info = render_photo(item, row["index"], _STATE["config"])
    buf = io.BytesIO()
    Image.fromarray(im, "RGB").save(buf, "JPEG", quality=info["quality"])
    (_STATE["out"] / row["path"]).write_bytes(buf.getvalue())
    return {**row, **{k: info[k] for k in ("width", "height", "quality", "background")}}, buf.tell()


def _prepare(out: Path, overwrite: bool) -> None:
    """Make `out` empty, refusing to delete anything that is not a set this module wrote."""
    check(not out.exists() or out.is_dir(), f"{out} is a file: pass a folder path for the photos")
    entries = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if not entries:
        out.mkdir(parents=True, exist_ok=True)
        return
    if not overwrite:
        raise BadInput(f"{out} is not empty: pick a new folder, or pass overwrite=True (--overwrite) to replace a set")
    readme = out / "README.txt"
    ours = readme.is_file() and readme.read_text(errors="replace").startswith(_MARK)
    if not ours or set(entries) - {"README.txt", "manifest.jsonl", *SPLITS}:
        raise BadInput(f"{out} holds more than a synthetic photo set: refusing to delete it; pick a new folder")
    for name in entries:
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()


def _readme(src: PhotoSource, cfg: SynthConfig, rows: list[dict[str, Any]]) -> str:
    import PIL

    dirs = sorted({r["path"].split("/")[1] for r in rows})
    pool = "\nTest images come only from the source's own test set." if src.test_pool is not None else ""
    return f"""{_MARK}

SYNTHETIC: not photographs. Each image is one {src.name} item ({src.x.shape[1]}x{src.x.shape[2]} grayscale, with its class)
tinted with a random colour, alpha-masked by its own intensity, upscaled (bicubic), flipped, rotated,
placed at a random scale and position, some with a soft shadow, over a random crop of scikit-learn's
sample photos (china.jpg, flower.jpg) or a procedural texture (smoothed noise, stripes, gradient) drawn
independently of the class, with mild sensor noise, saved as an RGB JPEG.

Made by datamoat.data.synth.make_photos with SynthConfig (workers aside; they change nothing):
{json.dumps({k: v for k, v in cfg.to_dict().items() if k != "workers"}, sort_keys=True)}
Image i is drawn from numpy.random.SeedSequence(seed, spawn_key=(i,)), the source items from SeedSequence(seed),
so the same source, config, numpy ({np.__version__}) and Pillow ({PIL.__version__}) give byte-identical files.{pool}

{len(rows)} images: {", ".join(f"{s} {sum(r['split'] == s for r in rows)}" for s in SPLITS)}.
Layout: <split>/<label>_<class name>/<index>.jpg; class folders: {", ".join(dirs)}.
manifest.jsonl: one JSON line per image: {", ".join(sorted([*rows[0], "width", "height", "quality", "background"]))}.
"""


def make_photos(
    out_dir: str | Path,
    config: SynthConfig | None = None,
    *,
    source: PhotoSource | tuple | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the synthetic photo set into `out_dir` (see the module docstring); returns a summary:
    images, counts per split and class, bytes written, seconds, images per second.

    `source` is a `PhotoSource`, ``(x, y, class_names)`` with x (N, h, w) or (N, 1, h, w) uint8,
    or None for Fashion-MNIST. A non-empty `out_dir` is refused unless `overwrite` and it holds
    only a set this function wrote.
    """
    cfg = config or SynthConfig()
    t0 = time.perf_counter()
    src = as_source(source)
    rows = _plan(src, cfg)
    out = Path(out_dir)
    _prepare(out, overwrite)
    (out / "README.txt").write_text(_readme(src, cfg, rows))  # first: it marks the folder as ours
    for d in sorted({r["path"].rsplit("/", 1)[0] for r in rows}):
        (out / d).mkdir(parents=True)
    tasks = [(r, src.x[r["source_index"]]) for r in rows]
    workers = min(cfg.workers or os.cpu_count() or 1, max(1, len(rows) // 8))
    done, size = [], 0  # manifest rows in index order, bytes written
    with contextlib.ExitStack() as stack:
        if workers == 1:
            _init(cfg, str(out))
            results: Any = map(_make, tasks)
        else:  # spawn, not fork: the parent may hold torch's threads; a worker that dies raises, never hangs
            spawn = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(workers, spawn, _init, (cfg, str(out))))
            results = pool.map(_make, tasks, chunksize=8)
        if progress:
            from rich.console import Console
            from rich.progress import track

            results = track(results, "photos", total=len(rows), console=Console(stderr=True))  # stdout: --json
        try:
            for row, nbytes in results:
                done.append(row)
                size += nbytes
        except BrokenProcessPool:
            raise BadInput(
                f"workers={workers}: a worker process failed to start; call make_photos under "
                "`if __name__ == '__main__':` in a script file, or use workers=1"
            ) from None
    (out / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in done))
    seconds = time.perf_counter() - t0
    n = Counter((r["split"], r["class_name"]) for r in done)
    names = [src.classes[c] for c in sorted({r["label"] for r in done})]
    counts = {s: {c: n[s, c] for c in names} for s in SPLITS}
    summary = {"out_dir": str(out), "images": len(done), "counts": counts, "bytes": size, "seconds": round(seconds, 3)}
    rate = round(len(done) / max(seconds, 1e-9), 1)
    return {**summary, "images_per_s": rate, "workers": workers, "source": src.name, "seed": cfg.seed}
