"""Unlabeled pools: the photos users send before anyone labels them, and where each label came from.

A dataset version may hold unlabeled items beside its labelled ones: their split code is `POOL`
and their label `UNLABELED` (-1), so every verb that picks rows by split (train, eval, data
issues, distillation) passes them by. A version made of nothing else is a pool. Labels arrive
later, through the review queue and the gate or, in a benchmark, an oracle: `label_rows` moves the
labelled rows out of the pool as a new version whose source names its parent, who labelled what
and how, so the lineage of every label can be read back.

Each row also records its label's origin (`ORIGINS`): "import" (came with the data), "human" (a
person decided it on /review), "gate" (client feedback the poisoning gate accepted) or "model"
(a model's answer a user chose to keep). Semi-supervised training's pseudo-labels are never
written to a version at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datamoat.data.dataset import POOL, SPLITS, UNLABELED, Dataset, make_dataset
from datamoat.data.photo_index import store_rows
from datamoat.errors import BadInput
from datamoat.workspace import Workspace

__all__ = [
    "POOL",
    "UNLABELED",
    "ORIGINS",
    "pool_rows",
    "origins",
    "origin_counts",
    "make_pool",
    "with_pool",
    "label_rows",
]

ORIGINS = ("import", "human", "gate", "model")


def pool_rows(ds: Dataset) -> np.ndarray:
    """The global row indices of `ds`'s unlabeled items, ascending.

    >>> import numpy as np
    >>> from datamoat.data.dataset import Dataset
    >>> ds = Dataset("v", "v", ["a", "b"], np.zeros((3, 1, 2, 2), np.uint8), np.array([0, -1, -1]),
    ...              np.array([0, 3, 3], np.uint8), {})
    >>> pool_rows(ds).tolist()
    [1, 2]
    """
    return np.flatnonzero(ds.split == POOL)


def origins(ds: Dataset) -> np.ndarray:
    """(N,) uint8 codes into `ORIGINS`, one per row; 0 ("import") where the version records none.

    >>> import numpy as np
    >>> from datamoat.data.dataset import Dataset
    >>> ds = Dataset("v", "v", ["a", "b"], np.zeros((2, 1, 2, 2), np.uint8), np.array([0, 1]),
    ...              np.zeros(2, np.uint8), {"blobs": {}})
    >>> origins(ds).tolist()
    [0, 0]
    """
    sha = ds.manifest.get("blobs", {}).get("origin")
    if sha is None:
        return np.zeros(len(ds.y), np.uint8)
    if ds.workspace is None:
        raise BadInput(f"dataset {ds.id} records label origins in its workspace: load it with load_dataset")
    return np.asarray(ds.workspace.get_array(sha), dtype=np.uint8)


def origin_counts(ds: Dataset) -> dict[str, int]:
    """Labelled rows per origin, e.g. ``{"import": 900, "human": 100, "gate": 0, "model": 0}``."""
    codes = origins(ds)[ds.split != POOL]
    return {name: int((codes == i).sum()) for i, name in enumerate(ORIGINS)}


def make_pool(
    ws: Workspace,
    x: np.ndarray,
    classes: list[str],
    *,
    name: str,
    source: dict[str, Any],
    preprocess: dict[str, Any] | None = None,
) -> Dataset:
    """A version holding only unlabeled images `x` (uint8 (N, C, H, W)) whose labels will come from
    `classes`. Give a model's `preprocess` so the pool is normalised as that model's data was.

    >>> pool = make_pool(ws, x, ["cat", "dog"], name="site-7", source={"kind": "folder"})  # doctest: +SKIP
    """
    x = np.asarray(x)
    if len(x) == 0:
        raise BadInput("the pool is empty: give at least one unlabeled image")
    y = np.full(len(x), UNLABELED, np.int64)
    split = np.full(len(x), POOL, np.uint8)
    return make_dataset(ws, x, y, classes, name=name, source=source, split=split, preprocess=preprocess)


def with_pool(
    ws: Workspace, ds: Dataset, x: np.ndarray, *, name: str | None = None, source: dict[str, Any] | None = None
) -> Dataset:
    """`ds` plus the unlabeled images `x` appended to its pool, as a new version.

    >>> grown = with_pool(ws, ds, uploads, source={"kind": "edge-uploads"})  # doctest: +SKIP
    """
    x = np.asarray(x)
    if len(x) == 0:
        raise BadInput("nothing to add: give at least one unlabeled image")
    if x.dtype != np.uint8 or x.shape[1:] != ds.x.shape[1:]:
        raise BadInput(
            f"pool images are {x.dtype} {x.shape[1:]} but {ds.name} holds uint8 {ds.x.shape[1:]}: "
            "resize them to the dataset's input first"
        )
    src = {"kind": "pool-add", "added": int(len(x)), "x_sha256": ws.put_array(x), "from": source or {}}
    x_all, x_sha = store_rows(ws, [(ds.x, np.arange(len(ds.y))), (x, np.arange(len(x)))])
    return _child(
        ws,
        ds,
        x_all,
        np.concatenate([ds.y, np.full(len(x), UNLABELED, np.int64)]),
        np.concatenate([ds.split, np.full(len(x), POOL, np.uint8)]),
        np.concatenate([origins(ds), np.zeros(len(x), np.uint8)]),
        name=name or f"{ds.name}+pool",
        source=src,
        x_blob=x_sha,
    )


def label_rows(
    ws: Workspace,
    ds: Dataset,
    rows: np.ndarray,
    labels: np.ndarray,
    *,
    origin: str,
    actor: str,
    name: str | None = None,
    source: dict[str, Any] | None = None,
    split: str = "train",
) -> Dataset:
    """A new version of `ds` in which pool rows `rows` carry `labels` and move to `split`; `ds`
    stays as it was. `origin` (one of `ORIGINS`) and `actor` (who labelled: a reviewer's name, the
    gate, "oracle" in a benchmark) go into the version's source with the rows and labels.

    >>> v2 = label_rows(ws, pool, np.array([4, 9]), np.array([1, 0]), origin="human", actor="ana")  # doctest: +SKIP
    """
    if origin not in ORIGINS:
        raise BadInput(f"unknown label origin {origin!r}: choose one of {', '.join(ORIGINS)}")
    if split not in SPLITS:
        raise BadInput(f"unknown split {split!r}: choose train, val or test")
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(rows) == 0:
        raise BadInput("no labels to apply: give at least one labelled row")
    if len(rows) != len(labels):
        raise BadInput(f"{len(rows)} rows but {len(labels)} labels: they must match one to one")
    if len(np.unique(rows)) != len(rows):
        raise BadInput("a row is labelled twice: give one label per row")
    if rows.min() < 0 or rows.max() >= len(ds.y) or (ds.split[rows] != POOL).any():
        raise BadInput(f"rows must be unlabeled items of {ds.name} ({ds.id}): list them with pool_rows")
    if labels.min() < 0 or labels.max() >= ds.num_classes:
        raise BadInput(f"labels must be class indices in 0..{ds.num_classes - 1} (the classes of {ds.name})")
    y, codes, org = ds.y.copy(), ds.split.copy(), origins(ds).copy()
    y[rows], codes[rows], org[rows] = labels, SPLITS[split], ORIGINS.index(origin)
    order = np.argsort(rows)
    src = {
        "kind": "label",
        "origin": origin,
        "actor": actor,
        "split": split,
        "labelled": int(len(rows)),
        "per_class": np.bincount(labels, minlength=ds.num_classes).tolist(),
        "rows_sha256": ws.put_array(rows[order]),
        "labels_sha256": ws.put_array(labels[order]),
        "from": source or {},
    }
    return _child(ws, ds, ds.x, y, codes, org, name=name or f"{ds.name}+{len(rows)}", source=src, kept=True)


def hide_labels(ws: Workspace, ds: Dataset, rows: np.ndarray, *, name: str | None = None) -> Dataset:
    """A version of `ds` whose labelled rows `rows` are back in the pool, labels hidden: what a
    benchmark, or `improve`'s label lever, asks an oracle about as if nobody had labelled them yet.

    >>> held_back = hide_labels(ws, ds, np.arange(100, 500))  # doctest: +SKIP
    """
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if len(rows) == 0:
        raise BadInput("no rows to hide: give at least one labelled row")
    if rows.min() < 0 or rows.max() >= len(ds.y) or (ds.split[rows] == POOL).any():
        raise BadInput(f"rows must be labelled items of {ds.name} ({ds.id}): their labels are what is hidden")
    y, codes = ds.y.copy(), ds.split.copy()
    y[rows], codes[rows] = UNLABELED, POOL
    src = {"kind": "hide-labels", "hidden": int(len(rows)), "rows_sha256": ws.put_array(rows)}
    return _child(ws, ds, ds.x, y, codes, origins(ds), name=name or f"{ds.name}-held", source=src, kept=True)


def _child(
    ws: Workspace,
    base: Dataset,
    x: np.ndarray,
    y: np.ndarray,
    split: np.ndarray,
    origin: np.ndarray,
    *,
    name: str,
    source: dict[str, Any],
    kept: bool = False,
    x_blob: str | None = None,
) -> Dataset:
    """Store a child of `base` with explicit splits and origins, keeping its preprocessing (and, when
    `kept`, its images' blob and a photo dataset's original bytes, row for row). `x_blob`: the sha256
    of `x`, already in the store."""
    photos = base.manifest.get("photos") if kept else None  # the same rows: the same original bytes
    return make_dataset(
        ws,
        x,
        y,
        base.classes,
        name=name,
        source={**source, "parent_id": base.id},
        split=np.asarray(split, dtype=np.uint8),
        parent_id=base.id,
        preprocess=dict(base.preprocess),
        photos=photos,
        origin=origin,
        x_blob=x_blob or (base.manifest["blobs"]["x"] if kept else None),  # the same rows: no copy
    )
