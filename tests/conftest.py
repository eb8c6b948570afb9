import os
import struct
from pathlib import Path

import numpy as np
import pytest

from datamoat.data import import_digits
from datamoat.workspace import Workspace

# Tests use one torch thread: deterministic and polite on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.init(tmp_path / "ws")


@pytest.fixture
def digits(ws: Workspace):
    return import_digits(ws)


def write_idx(path: Path, arr: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (the inverse of read_idx)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.tobytes())
    return path


@pytest.fixture
def idx_pair(tmp_path: Path):
    """A tiny 3-class IDX dataset: 60 images 6x6 whose brightness encodes the class."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20).astype(np.uint8)
    x = (rng.integers(0, 40, (60, 6, 6)) + y[:, None, None] * 80).astype(np.uint8)
    return write_idx(tmp_path / "imgs-idx3-ubyte", x), write_idx(tmp_path / "labels-idx1-ubyte", y), x, y
