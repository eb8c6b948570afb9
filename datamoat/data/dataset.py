"""An immutable, content-addressed dataset version.

A version holds images as uint8 ``(N, C, H, W)``, integer labels ``(N,)``,
and a split code per sample (0 train, 1 val, 2 test, 3 the unlabeled pool,
whose label is -1: see `datamoat.data.pool`). Its id is the hash of
a manifest that names the content hashes of those arrays plus the class
names and split recipe, so the same data imported twice gets the same id.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
from typing import Any

import numpy as np

from datamoat.data.file_rows import pread_rows
from datamoat.errors import BadInput
from datamoat.workspace import Workspace, short_hash

__all__ = [
    "Dataset",
    "SPLITS",
    "POOL",
    "UNLABELED",
    "make_dataset",
    "load_dataset",
    "read_rows",
    "channel_stats",
    "chunk_rows",
    "drop_pages",
    "release_freed_memory",
    "stratified_splits",
]

SPLITS = {"train": 0, "val": 1, "test": 2}
POOL = 3  # the split code of unlabeled items; every verb that selects a split by code passes them by
UNLABELED = -1  # their label


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A loaded dataset version. Arrays are read-only views."""

    id: str
    name: str
    classes: list[str]
    x: np.ndarray  # (N, C, H, W) uint8
    y: np.ndarray  # (N,) int64
    split: np.ndarray  # (N,) uint8 codes, see SPLITS
    manifest: dict[str, Any]
    # where the version lives: a photo dataset's training reads its original bytes from there
    workspace: Workspace | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.manifest["preprocess"]

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of one split: 'train', 'val' or 'test'."""
        if split not in SPLITS:
            raise BadInput(f"unknown split {split!r}: choose train, val or test")
        mask = self.split == SPLITS[split]
        return self.x[mask], self.y[mask]

    def stats(self) -> dict[str, Any]:
        """Counts per split and class, shape, and pixel statistics."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "samples": int(len(self.y)),
            "input_shape": list(self.input_shape),
            "classes": self.classes,
            "splits": {},
            "unlabeled": int((self.split == POOL).sum()),
            "pixel_mean": [round(m, 4) for m in self.preprocess["mean"]],
            "pixel_std": [round(s, 4) for s in self.preprocess["std"]],
        }
        for name, code in SPLITS.items():
            ys = self.y[self.split == code]
            counts = np.bincount(ys, minlength=self.num_classes)
            out["splits"][name] = {"samples": int(len(ys)), "per_class": counts.tolist()}
        return out


def stratified_splits(
    y: np.ndarray, val: float, test: float, seed: int, fixed_test: np.ndarray | None = None
) -> np.ndarray:
    """Seeded stratified split codes. With `fixed_test` (a boolean mask, e.g.
    Fashion-MNIST's official test set) only val is carved out of the rest."""
    rng = np.random.default_rng(seed)
    split = np.zeros(len(y), dtype=np.uint8)
    pool = np.ones(len(y), dtype=bool)
    if fixed_test is not None:
        split[fixed_test] = SPLITS["test"]
        pool &= ~fixed_test
        test = 0.0
    for c in np.unique(y):
        idx = np.flatnonzero(pool & (y == c))
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test))
        n_val = int(round(len(idx) * val))
        if len(idx) - n_test - n_val < 1 or (val > 0 and n_val < 1) or (test > 0 and n_test < 1):
            raise BadInput(
                f"class {int(c)} has only {len(idx)} sample(s), too few to split into train/val/test: "
                "add samples or lower the val/test fractions"
            )
        split[idx[:n_test]] = SPLITS["test"]
        split[idx[n_test : n_test + n_val]] = SPLITS["val"]
    return split


def _validate(x: np.ndarray, y: np.ndarray, classes: list[str], split: np.ndarray | None) -> None:
    if x.ndim != 4 or x.dtype != np.uint8:
        raise BadInput(f"images must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
    if len(x) != len(y):
        raise BadInput(f"{len(x)} images but {len(y)} labels: images and labels must match one to one")
    if len(y) == 0:
        raise BadInput("the dataset is empty: give at least two classes of images")
    pool = y == UNLABELED  # (N,) unlabeled items: they belong to the pool split and nowhere else
    if split is not None and not np.array_equal(pool, split == POOL):
        raise BadInput("unlabeled items (label -1) and the pool split (code 3) must coincide: label an item to move it")
    if pool.all():
        if len(classes) < 2:
            raise BadInput("an unlabeled pool needs the class names its labels will come from (two or more)")
        return
    y = y[~pool]
    if y.min() < 0 or y.max() >= len(classes):
        raise BadInput(
            f"labels out of range: found labels {int(y.min())}..{int(y.max())} but {len(classes)} class names; "
            "give one class name per label"
        )
    present = np.unique(y)
    if len(present) < 2:
        raise BadInput(
            f"the dataset has a single class ({classes[int(present[0])]!r}): a classifier needs at least two classes"
        )


def make_dataset(
    ws: Workspace,
    x: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    *,
    name: str,
    source: dict[str, Any],
    split: np.ndarray | None = None,
    val: float = 0.1,
    test: float = 0.15,
    seed: int = 0,
    fixed_test: np.ndarray | None = None,
    parent_id: str | None = None,
    preprocess: dict[str, Any] | None = None,
    photos: dict[str, Any] | None = None,
    x_blob: str | None = None,
    origin: np.ndarray | None = None,
) -> Dataset:
    """Validate, split, store and catalog a dataset version; returns it.

    Importing the same content again returns the existing version. `preprocess` None computes the
    mean and std of the train split; a photo dataset gives its transform's instead (see
    `datamoat.data.photo_render`), and `photos` says where its samples' original bytes lie.
    `x_blob` is the sha256 of `x` already in the store (`put_array`'s bytes), written there by a
    caller that streamed it. Labels of -1 are unlabeled items, kept in the pool split (`POOL`);
    `origin` (N,) uint8 says where each label came from (`datamoat.data.pool.ORIGINS`).
    """
    y = np.asarray(y, dtype=np.int64)
    _validate(x, y, classes, split)
    if split is None:
        labelled = y != UNLABELED
        split = np.full(len(y), POOL, np.uint8)
        if labelled.any():
            fixed = None if fixed_test is None else np.asarray(fixed_test)[labelled]
            split[labelled] = stratified_splits(y[labelled], val, test, seed, fixed)
    if preprocess is None:
        rows = split == SPLITS["train"] if (split == SPLITS["train"]).any() else split == POOL
        mean, std = channel_stats(x, np.flatnonzero(rows))
        preprocess = {"scale": 1 / 255, "mean": mean, "std": std}
    manifest: dict[str, Any] = {
        "format": 1,
        "classes": list(classes),
        "shape": list(x.shape),
        "blobs": {"x": x_blob or ws.put_array(x), "y": ws.put_array(y), "split": ws.put_array(split)},
        "split_recipe": {"val": val, "test": test, "seed": seed, "fixed_test": fixed_test is not None},
        "preprocess": preprocess,
    }
    if photos is not None:  # only then, so array datasets keep their ids
        manifest["photos"] = photos
    if origin is not None and np.any(origin):  # only then: versions of imported labels keep their ids
        manifest["blobs"]["origin"] = ws.put_array(np.asarray(origin, dtype=np.uint8))
    # The id hashes content only (not the name or the source path).
    ds_id = short_hash(json.dumps(manifest, sort_keys=True).encode())
    ws.insert(
        "datasets",
        {"id": ds_id, "name": name, "parent_id": parent_id, "source": source, "manifest": manifest},
    )
    row = ws.resolve("datasets", ds_id)
    return Dataset(ds_id, row["name"], list(classes), _ro(x), _ro(y), _ro(split), manifest, ws)


def load_dataset(ws: Workspace, ref: str) -> Dataset:
    """Load a dataset version by id, id prefix or name.

    >>> ds = load_dataset(Workspace.open(), "digits")  # doctest: +SKIP
    """
    row = ws.resolve("datasets", ref)
    m = row["manifest"]
    # The images are mapped, not read: a command that streams batches (predict, a photo dataset's
    # training) holds only what it touches, however large the version. Labels and splits are small.
    x = ws.get_array(m["blobs"]["x"], mmap=True)
    y, split = (ws.get_array(m["blobs"][k]) for k in ("y", "split"))
    return Dataset(row["id"], row["name"], m["classes"], _ro(x), _ro(y), _ro(split), m, ws)


def read_rows(x: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
    """``x[rows]`` as an array of its own. Where `x` is mapped from a file (`load_dataset` maps a
    version's images), the rows are read from the file (`file_rows.pread_rows`), so they pass through
    the operating system's page cache without ever becoming this process's memory; a mapping of
    another kind is indexed and the pages just read are then dropped. Either way a pass over a large
    version holds one batch, not the pages it touched, so resident memory does not grow with the data.

    >>> x = np.arange(12, dtype=np.uint8).reshape(4, 1, 1, 3)
    >>> read_rows(x, np.array([2, 0]))[:, 0, 0, 0].tolist()
    [6, 0]
    """
    out = pread_rows(x, rows)
    if out is not None:
        return out
    out = np.array(x[rows])  # a copy: fancy indexing copies, a slice would be a view of the mapping
    drop_pages(x)
    return out


def chunk_rows(x: np.ndarray, mib: int = 8) -> int:
    """How many of `x`'s rows make about `mib` MiB: a pass over a large version reads this many at a time.

    >>> chunk_rows(np.zeros((10, 3, 32, 32), np.uint8), mib=1)
    341
    """
    return max(1, (mib << 20) // max(1, x[:1].nbytes))


def channel_stats(x: np.ndarray, rows: np.ndarray, chunk: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (+1e-8) of the uint8 images ``x[rows]`` (N, C, H, W),
    scaled to [0, 1]: what a version normalises by. Each channel's counts of its 256 values are
    summed exactly over chunks of rows, so memory is one chunk's and the result does not depend on
    the chunking or the order of the rows.

    >>> x = np.array([[[[0, 255]]], [[[255, 255]]]], np.uint8)  # (2, 1, 1, 2)
    >>> channel_stats(x, np.arange(2))
    ([0.75], [0.43301271...])
    """
    c = x.shape[1]
    counts = np.zeros((c, 256), np.int64)  # (C, 256): how often each value occurs, per channel
    step = chunk or chunk_rows(x, 2)  # bincount counts through an int64 copy: 8 bytes a pixel
    for i in range(0, len(rows), step):
        part = read_rows(x, rows[i : i + step])  # (B, C, H, W)
        for ch in range(c):
            counts[ch] += np.bincount(part[:, ch].reshape(-1), minlength=256)
    v = np.arange(256) / 255.0  # (256,)
    n = counts.sum(1)  # (C,)
    mean = counts @ v / n  # (C,)
    var = (counts * (v[None] - mean[:, None]) ** 2).sum(1) / n  # (C,), ddof 0
    return mean.tolist(), (np.sqrt(var) + 1e-8).tolist()


def drop_pages(x: np.ndarray) -> None:
    """Where `x` is mapped from a file, hand the pages it touched back (a no-op otherwise). A shared
    file mapping loses nothing: pages read come back from the page cache if touched again, and pages
    written are in the page cache already, bound for the file.

    >>> drop_pages(np.zeros(3))
    """
    base: Any = x
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is not None and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


_LIBC: list[Any] = []  # glibc, once looked up: [handle] or [None] where there is none


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    A batch loop frees large tensors each batch; glibc keeps freed memory of that size on its heap
    once it has seen such frees, and the heap's free pages, scattered between live ones, grew with
    the number of batches, so a pass over a large split took memory by its size. Called once a
    batch, this keeps what a pass holds at what one batch needs.

    >>> release_freed_memory()
    """
    if not _LIBC:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        lib = ctypes.CDLL(name) if name else None
        _LIBC.append(lib if lib is not None and hasattr(lib, "malloc_trim") else None)
    if _LIBC[0] is not None:
        _LIBC[0].malloc_trim(0)


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a).view()  # a view, so the caller's array stays writable
    a.flags.writeable = False
    return a
