"""Helpers shared by tests (a uniquely named module: tests/serve has its own conftest)."""

import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, arr: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (the inverse of read_idx)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.tobytes())
    return path
