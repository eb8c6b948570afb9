"""STAND-IN for the lead's unlabeled-pool interface (replaced when "Unlabeled pools" lands on main)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from datamoat.data.dataset import Dataset, load_dataset
from datamoat.workspace import Workspace, short_hash

__all__ = ["POOL", "UNLABELED", "ORIGINS", "pool_rows", "make_pool", "with_pool", "origins"]

POOL = 3
UNLABELED = -1
ORIGINS = ("import", "human", "gate", "model")


def pool_rows(ds: Dataset) -> np.ndarray:
    """The global row indices of the unlabeled items, ascending."""
    return np.flatnonzero(ds.split == POOL)


def origins(ds: Dataset) -> np.ndarray:
    """Per-row origin codes into ORIGINS."""
    sha = ds.manifest.get("blobs", {}).get("origins")
    if sha and ds.workspace is not None:
        return ds.workspace.get_array(sha)
    return np.zeros(len(ds.y), np.uint8)


def _store(
    ws: Workspace,
    x: np.ndarray,
    y: np.ndarray,
    split: np.ndarray,
    classes: list[str],
    name: str,
    source: dict[str, Any],
    preprocess: dict[str, Any] | None,
    parent_id: str | None = None,
) -> Dataset:
    if preprocess is None:
        f = x.astype(np.float64) / 255.0
        preprocess = {
            "scale": 1 / 255,
            "mean": f.mean(axis=(0, 2, 3)).tolist(),
            "std": (f.std(axis=(0, 2, 3)) + 1e-8).tolist(),
        }
    manifest = {
        "format": 1,
        "classes": list(classes),
        "shape": list(x.shape),
        "blobs": {"x": ws.put_array(np.ascontiguousarray(x)), "y": ws.put_array(y), "split": ws.put_array(split)},
        "split_recipe": {"val": 0, "test": 0, "seed": 0, "fixed_test": False},
        "preprocess": preprocess,
    }
    ds_id = short_hash(json.dumps(manifest, sort_keys=True).encode())
    ws.insert("datasets", {"id": ds_id, "name": name, "parent_id": parent_id, "source": source, "manifest": manifest})
    return load_dataset(ws, ds_id)


def make_pool(
    ws: Workspace,
    x: np.ndarray,
    classes: list[str],
    *,
    name: str,
    source: dict[str, Any],
    preprocess: dict[str, Any] | None = None,
) -> Dataset:
    """A version holding only unlabeled images."""
    n = len(x)
    return _store(ws, x, np.full(n, UNLABELED, np.int64), np.full(n, POOL, np.uint8), classes, name, source, preprocess)


def with_pool(
    ws: Workspace, ds: Dataset, x: np.ndarray, *, name: str | None = None, source: dict[str, Any] | None = None
) -> Dataset:
    """`ds` plus unlabeled images appended."""
    return _store(
        ws,
        np.concatenate([ds.x, x]),
        np.concatenate([ds.y, np.full(len(x), UNLABELED, np.int64)]),
        np.concatenate([ds.split, np.full(len(x), POOL, np.uint8)]),
        ds.classes,
        name or ds.name + "+pool",
        source or {},
        dict(ds.preprocess),
        ds.id,
    )
