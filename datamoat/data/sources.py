"""Importers: IDX files, image folders and scikit-learn's bundled digits."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from datamoat.data.dataset import Dataset, make_dataset
from datamoat.data.idx import read_idx
from datamoat.errors import BadInput, NotFound
from datamoat.workspace import Workspace

__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_CLASSES",
    "import_idx",
    "import_fashion_mnist",
    "import_folder",
    "import_digits",
    "import_default",
    "fashion_mnist_missing",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# Refuse decompression bombs: no image we import needs more pixels than this.
MAX_PIXELS = 4096 * 4096


def _idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif x.ndim != 4:
        raise BadInput(f"IDX images {images} have {x.ndim} dims: expected (N, H, W) or (N, C, H, W)")
    if y.ndim != 1:
        raise BadInput(f"IDX labels {labels} have {y.ndim} dims: expected a 1-D label file")
    if len(x) != len(y):
        raise BadInput(f"{images} has {len(x)} images but {labels} has {len(y)} labels: pass a matching pair")
    return x, y.astype(np.int64)


def import_idx(
    ws: Workspace,
    images: str | Path,
    labels: str | Path,
    *,
    test_images: str | Path | None = None,
    test_labels: str | Path | None = None,
    classes: list[str] | None = None,
    name: str = "idx",
    seed: int = 0,
    val: float = 0.1,
) -> Dataset:
    """Import an IDX images/labels pair, optionally with an official test pair.

    >>> ds = import_fashion_mnist(Workspace.init("/tmp/ws"))  # doctest: +SKIP
    """
    x, y = _idx_pair(Path(images), Path(labels))
    fixed_test = None
    if (test_images is None) != (test_labels is None):
        raise BadInput("give both --test-images and --test-labels, or neither")
    if test_images is not None:
        xt, yt = _idx_pair(Path(test_images), Path(test_labels))  # type: ignore[arg-type]
        if xt.shape[1:] != x.shape[1:]:
            raise BadInput(f"test images are {xt.shape[1:]} but train images are {x.shape[1:]}: they must match")
        fixed_test = np.r_[np.zeros(len(x), bool), np.ones(len(xt), bool)]
        x, y = np.concatenate([x, xt]), np.concatenate([y, yt])
    if classes is None:
        classes = [str(i) for i in range(int(y.max()) + 1)]
    source = {"kind": "idx", "images": str(images), "labels": str(labels), "test_images": str(test_images)}
    return make_dataset(
        ws, x, y, classes, name=name, source=source, val=val, test=0.15, seed=seed, fixed_test=fixed_test
    )


def import_fashion_mnist(ws: Workspace, root: str | Path = FASHION_MNIST_DIR, *, seed: int = 0) -> Dataset:
    """Import Fashion-MNIST (60k train with 10% carved out for val, 10k official test)."""
    root = Path(root)
    if not root.is_dir():
        raise NotFound(
            f"Fashion-MNIST directory {root} does not exist: `apt-get install dataset-fashion-mnist` or pass a path"
        )

    def find(stem: str) -> Path:
        for cand in (root / f"{stem}.gz", root / stem):
            if cand.exists():
                return cand
        raise NotFound(f"{root} has no {stem}[.gz]: point at a directory with the four Fashion-MNIST IDX files")

    return import_idx(
        ws,
        find("train-images-idx3-ubyte"),
        find("train-labels-idx1-ubyte"),
        test_images=find("t10k-images-idx3-ubyte"),
        test_labels=find("t10k-labels-idx1-ubyte"),
        classes=FASHION_CLASSES,
        name="fashion-mnist",
        seed=seed,
    )


def _load_image(path: Path, size: tuple[int, int] | None, mode: str):
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    im: Image.Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = im.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInput(f"image {path} is too large (over {MAX_PIXELS} pixels): resize it first") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInput(f"image {path} is truncated or corrupt ({e}): remove or re-export it") from None
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)


def import_folder(
    ws: Workspace,
    path: str | Path,
    *,
    name: str | None = None,
    size: tuple[int, int] | None = None,
    grayscale: bool | None = None,
    seed: int = 0,
    val: float = 0.15,
    test: float = 0.15,
) -> Dataset:
    """Import a folder with one subfolder of PNG/JPEG images per class.

    Images are resized to `size` (H, W), by default the first image's size, and
    kept grayscale when every image is grayscale (or as `grayscale` says).
    """
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise NotFound(f"image folder {root} does not exist: pass a folder with one subfolder per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [[f for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()] for d in class_dirs]
    pairs = [(d, fs) for d, fs in zip(class_dirs, files) if fs]
    if not pairs:
        raise BadInput(
            f"{root} has no class subfolders with .png/.jpg images: make one subfolder per class, or add "
            "unlabeled images to a dataset's pool (`datamoat data pool FOLDER --into DATASET`)"
        )
    if size is None or grayscale is None:
        first = pairs[0][1][0]
        try:
            with Image.open(first) as im:
                first_size, first_mode = (im.size[1], im.size[0]), im.mode
        except (OSError, SyntaxError) as e:
            raise BadInput(f"image {first} is truncated or corrupt ({e}): remove or re-export it") from None
        size = size or first_size
        if grayscale is None:
            grayscale = first_mode in ("L", "1", "I;16", "I")
    mode = "L" if grayscale else "RGB"
    xs, ys = [], []
    for label, (_, fs) in enumerate(pairs):
        for f in fs:
            xs.append(_load_image(f, size, mode))
            ys.append(label)
    classes = [d.name for d, _ in pairs]
    source = {"kind": "folder", "path": str(root)}
    return make_dataset(
        ws, np.stack(xs), np.array(ys), classes, name=name or root.name, source=source, val=val, test=test, seed=seed
    )


def import_digits(ws: Workspace, *, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), scaled to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    classes = [str(c) for c in d.target_names]
    return make_dataset(ws, x, d.target, classes, name="digits", source={"kind": "sklearn-digits"}, seed=seed)


def fashion_mnist_missing(used: str) -> str:
    """The one line that says Fashion-MNIST is absent, what was used instead,
    and how to get the real data.

    >>> fashion_mnist_missing("digits")[:40]
    'Fashion-MNIST is not installed (no /usr/'
    """
    return (
        f"Fashion-MNIST is not installed (no {FASHION_MNIST_DIR}): used scikit-learn's {used} (8x8) instead; "
        "`sudo apt-get install dataset-fashion-mnist` gets the real data (`make demo` does it as root)"
    )


def import_default(ws: Workspace) -> Dataset:
    """Fashion-MNIST where installed, else the bundled digits."""
    if FASHION_MNIST_DIR.is_dir():
        return import_fashion_mnist(ws)
    return import_digits(ws)
