"""Rows of a file-mapped array read with ``pread``, not through the mapping.

A read through a mapping makes the pages it touched part of the process's resident memory until
they are dropped, and the kernel maps more than was asked: around each fault it maps what the page
cache holds nearby, and where the file system caches large folios (recent Linux) a whole folio, up
to megabytes for one row. A batch of random rows from a large version then maps hundreds of MiB
for an instant, so a process's peak grew with the version it sampled. ``pread`` copies the bytes
from the page cache into the batch and maps nothing.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

__all__ = ["mapped_file", "pread_rows"]


def mapped_file(x: np.ndarray) -> tuple[str, int] | None:
    """(path, byte offset of ``x[0]`` in it) where `x` is a C-contiguous view of a shared file
    mapping made by `np.memmap` (``np.load(..., mmap_mode="r")``); None for anything else, whose
    rows are read by indexing.

    >>> mapped_file(np.zeros(3)) is None
    True
    """
    if not x.flags.c_contiguous or x.ndim == 0:
        return None
    base: Any = x
    while base is not None:
        if isinstance(base, np.memmap) and isinstance(base.base, mmap.mmap):
            # The memmap that made the mapping: its first byte is the file's byte `offset`. A
            # private ("c") mapping may hold writes the file does not.
            if base.mode == "c" or base.filename is None:
                return None
            at = x.__array_interface__["data"][0] - base.__array_interface__["data"][0]
            return str(base.filename), int(base.offset) + at
        base = getattr(base, "base", None)
    return None


def pread_rows(x: np.ndarray, rows: np.ndarray | slice) -> np.ndarray | None:
    """``x[rows]`` read from the file `x` maps (`mapped_file`) with one ``preadv`` per run of
    consecutive rows; None where `x` is not such a mapping, the rows are not a 1-D selection this
    reads (a strided slice, a nested list), or the file cannot be opened: the caller then indexes.
    Out-of-range rows raise IndexError, as indexing does.

    >>> import tempfile
    >>> path = tempfile.mktemp(suffix=".npy")
    >>> np.save(path, np.arange(12, dtype=np.uint8).reshape(4, 3))
    >>> pread_rows(np.load(path, mmap_mode="r"), np.array([3, 0, 1])).tolist()
    [[9, 10, 11], [0, 1, 2], [3, 4, 5]]
    """
    src = mapped_file(x)
    if src is None or not hasattr(os, "preadv"):  # preadv: POSIX systems only
        return None
    n = len(x)
    if isinstance(rows, slice):
        start, stop, step = rows.indices(n)
        if step != 1:
            return None
        # One run, and no index array: a chunk of a byte column is millions of rows, and an int64
        # index of each (with its diff) took 16 bytes of memory for every byte read.
        return _read_runs(x, src, max(0, stop - start), [(0, max(0, stop - start), start)])
    at = np.asarray(rows)
    if at.dtype == bool:
        if at.shape != (n,):
            return None
        at = np.flatnonzero(at)
    if at.ndim != 1 or not np.issubdtype(at.dtype, np.integer):
        return None
    at = np.where(at < 0, at + n, at).astype(np.int64)  # (R,)
    bad = (at < 0) | (at >= n)
    if bad.any():
        raise IndexError(f"index {int(np.asarray(rows)[bad][0])} is out of bounds for axis 0 with size {n}")
    # Runs of consecutive rows are one read each: a sorted split is a few reads.
    cuts = np.flatnonzero(np.diff(at) != 1) + 1  # (runs - 1,)
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(at)]
    return _read_runs(
        x, src, len(at), [(int(lo), int(hi), int(at[lo])) for lo, hi in zip(starts, ends, strict=True) if hi > lo]
    )


def _read_runs(x: np.ndarray, src: tuple[str, int], count: int, runs: list[tuple[int, int, int]]) -> np.ndarray | None:
    """(count, ...) rows of `x` read from its file: each run (lo, hi, first row) fills out[lo:hi]."""
    out = np.empty((count, *x.shape[1:]), dtype=x.dtype)  # (R, ...)
    if not count:
        return out
    path, first = src
    row_bytes = x.strides[0]
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None  # removed or renamed since it was mapped: the mapping still reads it
    try:
        view = out.reshape(count, -1).view(np.uint8)  # (R, row_bytes)
        for lo, hi, row in runs:
            _read_fully(fd, memoryview(view[lo:hi].data).cast("B"), first + row * row_bytes, path)
    finally:
        os.close(fd)
    return out


def _read_fully(fd: int, buf: memoryview, offset: int, path: str) -> None:
    done = 0
    while done < len(buf):
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got == 0:
            raise OSError(f"{path} ends before the rows its header promises: the file was truncated")
        done += got
