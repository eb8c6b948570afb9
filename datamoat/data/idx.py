"""Reading IDX files (the MNIST / Fashion-MNIST format), plain or gzipped.

Format: 2 zero bytes, a type code, the number of dimensions, then one
big-endian uint32 per dimension, then the data. We only need unsigned bytes.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from datamoat.errors import BadInput, NotFound

__all__ = ["read_idx"]

_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes into a uint8 array.

    >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape  # doctest: +SKIP
    (10000,)
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"IDX file {path} does not exist: check the path")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise BadInput(f"IDX file {path} is a truncated or corrupt gzip ({e}): re-copy the file") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise BadInput(f"{path} is not an IDX file (bad magic number): pass an IDX images or labels file")
    dtype, ndim = raw[2], raw[3]
    if dtype != _UBYTE:
        raise BadInput(f"IDX file {path} holds type 0x{dtype:02x}; only unsigned bytes (0x08) are supported")
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise BadInput(f"IDX file {path} has a truncated header: re-copy the file")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    expected = int(np.prod(shape))
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise BadInput(
            f"IDX file {path} is truncated or corrupt: header says {expected} bytes of data, found {len(body)}; re-copy the file"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)
