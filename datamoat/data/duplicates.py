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

__all__ = ["near_duplicates", "exact_twins", "twin_pairs", "pixel_digests", "MAX_NEAR_PAIRS"]

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


def twin_pairs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every image of `x` equal to an earlier one, as columns: (first (P,), other (P,)) int64, `first`
    the lowest index of its group, in the order of the groups' digests. 16 bytes a pair, so a dataset
    made mostly of copies (burst shots, re-uploads) still costs a column, not an object a pair.

    >>> x = np.array([[[[1]]], [[[2]]], [[[1]]], [[[1]]]], dtype=np.uint8)
    >>> [a.tolist() for a in twin_pairs(x)]
    [[0, 0], [2, 3]]
    """
    digests = pixel_digests(x)  # (N,)
    order = np.argsort(digests, kind="stable")  # (N,) equal images side by side, in index order
    d = digests[order]
    del digests
    starts = np.ones(len(d), dtype=bool)  # (N,) the first of each group of equal digests
    starts[1:] = d[1:] != d[:-1]
    del d
    first = order[np.maximum.accumulate(np.where(starts, np.arange(len(starts)), 0))]  # (N,) its group's first
    later = np.flatnonzero(~starts)  # (P,)
    return first[later].astype(np.int64), order[later].astype(np.int64)


def exact_twins(x: np.ndarray) -> Iterator[tuple[int, int]]:
    """(first, other) for every image of `x` equal to an earlier one, `first` the lowest index of
    its group (`twin_pairs`, a pair at a time).

    >>> x = np.array([[[[1]]], [[[2]]], [[[1]]], [[[1]]]], dtype=np.uint8)
    >>> list(exact_twins(x))
    [(0, 2), (0, 3)]
    """
    first, other = twin_pairs(x)
    yield from zip(first.tolist(), other.tolist(), strict=True)


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
    # Ranked as columns and only the kept pairs made into dicts: every exact twin is a candidate, and a
    # dataset of copies can have nearly as many twins as images.
    ta, tb = twin_pairs(data.x)  # (T,), (T,): ta < tb
    near: list[tuple[int, int, float]] = []  # at most one per examined sample, so at most max_samples
    pool = examined
    if max_samples and len(pool) > max_samples:
        pool = np.sort(np.random.default_rng(seed).choice(pool, size=max_samples, replace=False))
    if max_samples and len(pool) > 1:
        with tempfile.TemporaryDirectory(prefix="dm-near-") as tmp:
            for i, j, similarity in _nearest(data.x, pool, threshold, Path(tmp)):
                lo, hi = sorted((int(pool[i]), int(pool[j])))
                near.append((lo, hi, min(1.0, similarity)))
    na = np.array([p[0] for p in near], np.int64)  # (M,)
    nb = np.array([p[1] for p in near], np.int64)  # (M,)
    nsim = np.array([p[2] for p in near], np.float64)  # (M,)
    n = max(len(data.y), 1)
    keys = na * n + nb  # (M,) one key a pair
    _, first_seen = np.unique(keys, return_index=True)  # a pair found from both of its ends: the first
    keep = np.zeros(len(near), bool)
    keep[first_seen] = True
    keep &= ~np.isin(keys, ta * n + tb)  # an exact twin is listed once, as a twin
    a = np.concatenate([ta, na[keep]])  # (P,)
    b = np.concatenate([tb, nb[keep]])  # (P,)
    sim = np.concatenate([np.ones(len(ta)), nsim[keep]])  # (P,)
    exact = np.arange(len(a)) < len(ta)  # (P,) equal pixels: the same sha256 of their bytes
    ya, yb = data.y[a].astype(np.int64), data.y[b].astype(np.int64)  # (P,), (P,)
    conflict = (ya != yb) & (np.minimum(ya, yb) >= 0)  # (P,)
    # Conflicting labels first, then exact twins, then by similarity; ties by index.
    top = np.lexsort((b, a, -sim, ~exact, ~conflict))[:MAX_NEAR_PAIRS]
    return [
        {
            "a": int(a[k]),
            "b": int(b[k]),
            "similarity": round(float(sim[k]), 6),
            "exact": bool(exact[k]) and _same(data, int(a[k]), int(b[k])),
            "labels": [int(ya[k]), int(yb[k])],
            "conflict": bool(conflict[k]),
            "splits": [_split_name(data, int(a[k])), _split_name(data, int(b[k]))],
        }
        for k in top
    ]


def _same(data: Dataset, a: int, b: int) -> bool:
    # Read, not indexed: a page touched through the mapping stays this process's memory, and with
    # the kernel's fault-around a thousand scattered pairs map far more than their pixels.
    pair = read_rows(data.x, np.array([a, b]))  # (2, C, H, W)
    return bool(np.array_equal(pair[0], pair[1]))


def _split_name(data: Dataset, i: int) -> str:
    return {c: n for n, c in SPLITS.items()}.get(int(data.split[i]), "pool" if data.split[i] == POOL else "?")
