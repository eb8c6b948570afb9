"""Exact twins and near duplicates among a dataset's images, in memory that follows a block.

Exact twins are images with the same sha256 of their pixels, found by sorting a (N,) column of
32-byte digests rather than a dict of Python strings, so the cost is 32 bytes a sample. Near
duplicates are nearest neighbours by cosine similarity of centred, downsampled images: the unit
vectors are written once to a temporary file and mapped, and similarities are taken block against
block, so a process holds two blocks of vectors and one block of similarities however many samples
are compared.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datamoat.data.dataset import POOL, SPLITS, Dataset, read_rows

__all__ = ["near_duplicates", "exact_twins", "pixel_digests", "MAX_NEAR_PAIRS"]

MAX_NEAR_PAIRS = 1000  # keep the issues file readable; the ranking puts the useful pairs first
# Samples per block of queries and of the vectors they are compared with: a block of similarities is
# BLOCK x KEYS float32, 8 MiB; wider blocks of keys make fewer, faster matrix products.
BLOCK, KEYS = 1024, 2048


def pixel_digests(x: np.ndarray) -> np.ndarray:
    """(N,) sha256 digests (bytes, dtype S32) of each image's pixels, read in chunks (`read_rows`).

    >>> d = pixel_digests(np.zeros((3, 1, 2, 2), dtype=np.uint8))
    >>> d.dtype, bool(d[0] == d[2])
    (dtype('S32'), True)
    """
    out = np.empty(len(x), dtype="S32")  # (N,)
    for i in range(0, len(x), 4096):
        for j, img in enumerate(read_rows(x, slice(i, i + 4096)), start=i):
            out[j] = hashlib.sha256(img.tobytes()).digest()
    return out


def exact_twins(x: np.ndarray) -> Iterator[tuple[int, int]]:
    """(first, other) for every image of `x` equal to an earlier one, `first` the lowest index of
    its group.

    >>> x = np.array([[[[1]]], [[[2]]], [[[1]]], [[[1]]]], dtype=np.uint8)
    >>> list(exact_twins(x))
    [(0, 2), (0, 3)]
    """
    digests = pixel_digests(x)  # (N,)
    order = np.argsort(digests, kind="stable")  # (N,) equal images side by side, in index order
    d = digests[order]
    starts = np.ones(len(d), dtype=bool)  # (N,) the first of each group of equal digests
    starts[1:] = d[1:] != d[:-1]
    first = order[np.maximum.accumulate(np.where(starts, np.arange(len(d)), 0))]  # (N,) its group's first
    for p in np.flatnonzero(~starts):
        yield int(first[p]), int(order[p])


def _downsampled(x: np.ndarray) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, D) unit vectors of centred, <=14x14 images."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float32))  # (N, C, H, W)
    factor = max(1, min(t.shape[2], t.shape[3]) // 14)
    if factor > 1:
        t = F.avg_pool2d(t, factor)  # (N, C, H/f, W/f)
    v = t.flatten(1)
    v = v - v.mean(1, keepdim=True)  # centred: cosine becomes correlation, so a blank background does not dominate
    return F.normalize(v, dim=1)


def _nearest(x: np.ndarray, pool: np.ndarray, threshold: float, tmp: Path) -> Iterator[tuple[int, int, float]]:
    """(position in `pool`, position of its nearest other image, cosine similarity) for each of
    `pool`'s images of `x` whose nearest neighbour is at least `threshold` alike. The unit vectors go to a mapped file under `tmp`, read back a block at
    a time, so neither the pool's pixels nor all of its vectors are held at once."""
    n = len(pool)
    dim = int(_downsampled(read_rows(x, pool[:1])).shape[1])
    vec = np.lib.format.open_memmap(tmp / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, dim))  # (n, D)
    for s in range(0, n, BLOCK):
        vec[s : s + BLOCK] = _downsampled(read_rows(x, pool[s : s + BLOCK])).numpy()
    vec.flush()
    del vec
    vec = np.load(tmp / "vectors.npy", mmap_mode="r")  # read-only, so read_rows can drop what it read
    for s in range(0, n, BLOCK):
        q = torch.from_numpy(read_rows(vec, slice(s, s + BLOCK)))  # (b, D)
        best = torch.full((len(q),), -2.0)  # (b,) below any cosine
        at = torch.zeros(len(q), dtype=torch.long)  # (b,)
        for t in range(0, n, KEYS):
            sim = q @ torch.from_numpy(read_rows(vec, slice(t, t + KEYS))).T  # (b, k)
            if t <= s < t + KEYS:
                rows = torch.arange(len(q))
                sim[rows, rows + s - t] = -1.0  # not yourself
            b2, j2 = sim.max(1)  # (b,), (b,)
            better = b2 > best  # strict: on a tie the earlier block keeps its neighbour
            best, at = torch.where(better, b2, best), torch.where(better, j2 + t, at)
        for r in torch.nonzero(best >= threshold).flatten().tolist():
            yield s + r, int(at[r]), float(best[r])


def near_duplicates(
    data: Dataset, examined: np.ndarray, threshold: float, max_samples: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Exact twins anywhere in `data`, then nearest neighbours with cosine
    similarity >= `threshold` among (at most `max_samples` of) `examined`.
    Conflicting labels first, then by similarity. An unlabeled pool item (label -1) conflicts with
    nothing: its twin of a labelled image is listed, as a sample already seen, not as a label error.

    >>> pairs = near_duplicates(ds, np.flatnonzero(ds.split == 0), 0.99, 5000)  # doctest: +SKIP
    """
    pairs: dict[tuple[int, int], float] = dict.fromkeys(exact_twins(data.x), 1.0)
    pool = examined
    if max_samples and len(pool) > max_samples:
        pool = np.sort(np.random.default_rng(seed).choice(pool, size=max_samples, replace=False))
    if max_samples and len(pool) > 1:
        with tempfile.TemporaryDirectory(prefix="dm-near-") as tmp:
            for i, j, sim in _nearest(data.x, pool, threshold, Path(tmp)):
                a, b = sorted((int(pool[i]), int(pool[j])))
                pairs.setdefault((a, b), min(1.0, sim))
    out: list[dict[str, Any]] = []
    for (a, b), s in pairs.items():
        ya, yb = int(data.y[a]), int(data.y[b])
        out.append(
            {
                "a": a,
                "b": b,
                "similarity": round(s, 6),
                "exact": s == 1.0 and _same(data, a, b),
                "labels": [ya, yb],
                "conflict": ya != yb and min(ya, yb) >= 0,
                "splits": [_split_name(data, a), _split_name(data, b)],
            }
        )
    out.sort(key=lambda p: (not p["conflict"], not p["exact"], -p["similarity"], p["a"], p["b"]))
    return out[:MAX_NEAR_PAIRS]


def _same(data: Dataset, a: int, b: int) -> bool:
    return bool(np.array_equal(data.x[a], data.x[b]))


def _split_name(data: Dataset, i: int) -> str:
    return {c: n for n, c in SPLITS.items()}.get(int(data.split[i]), "pool" if data.split[i] == POOL else "?")
