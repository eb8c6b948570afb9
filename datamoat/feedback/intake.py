"""Unlabeled pools from what the servers and devices saw: the prediction log's inputs.

The prediction log (`datamoat.registry.ledger`) keeps every answer's input hash, but the pixels only
of the answers in the review queue: those below the policy threshold, abstentions, the audit sample
of automated answers, and edge devices' uploads (`datamoat.edge.uploads.pool_from_uploads`). Those
are the inputs a person would be asked about anyway; the rest cannot be rebuilt from a hash, and the
report says how many answers that leaves out (`pixel_coverage`).

`pool_from_log` reads them oldest first (`logged_inputs`), leaves out those of another input shape
than the target's (another model version's input) and counts them, de-duplicates by pixel hash
among themselves and against the dataset they join (`datamoat.data.intake.new_images`), and stores
the rest as unlabeled items. The version's source lists the prediction ids of its new rows in
order, so a person's later decision on /review for one of them can be matched to its row. The
pixels are the server's own (a device's upload is checked against its shape and its hash replaced
by the server's when it arrives), never a client's say-so.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np

from datamoat.configs import Config, check, check_choice
from datamoat.data.dataset import Dataset
from datamoat.data.intake import PoolTarget, lineage, new_images, pool_report, store_pool
from datamoat.errors import BadInput
from datamoat.registry.core import Registry
from datamoat.registry.ledger import logged_inputs, pixel_coverage, review_pixels
from datamoat.workspace import Workspace

__all__ = ["LogPoolConfig", "STATUSES", "pool_from_log"]

STATUSES = ("open", "decided", "all")


@dataclasses.dataclass
class LogPoolConfig(Config):
    """Which logged inputs join a pool.

    >>> LogPoolConfig(status="closed")
    Traceback (most recent call last):
    datamoat.errors.BadInput: unknown status 'closed': choose one of open, decided, all
    """

    status: str = "open"  # open: no person has decided it yet (decided ones reach data through the gate)
    alias: str = ""  # only answers under this alias ("edge:<group>": a device group's); "": every one
    max_pool_bytes: int = 2 << 30  # pixels held at once

    def validate(self) -> None:
        check_choice("status", self.status, STATUSES)
        check(self.max_pool_bytes >= 1, f"max_pool_bytes must be positive, got {self.max_pool_bytes}")


def pool_from_log(
    ws: Workspace,
    registry: Registry,
    *,
    like: PoolTarget | None = None,
    into: Dataset | None = None,
    config: LogPoolConfig | None = None,
    name: str | None = None,
    devices: dict[str, str] | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """The logged inputs with pixels (see the module) as unlabeled items: a pool of their own shaped
    like `like`, or the dataset `into` plus them. With `devices` ({prediction id: device id}) only
    those predictions are read, and the source counts the new rows per device. Returns the version
    and a report.

    >>> ds, report = pool_from_log(ws, reg, into=load_dataset(ws, "digits"))  # doctest: +SKIP
    """
    cfg = config or LogPoolConfig()
    if (like is None) == (into is None):
        raise BadInput("give a dataset to add the images to (--into) or one to shape a pool of its own like (--like)")
    target = like or PoolTarget.of(into)  # type: ignore[arg-type]
    per_image = int(np.prod(target.input_shape))
    xs: list[np.ndarray] = []
    ids: list[str] = []
    read = other_shape = 0
    status = None if cfg.status == "all" else cfg.status
    for lot in logged_inputs(registry.engine, status=status, alias=cfg.alias or None, ids=_ids(devices)):
        for r in lot:
            read += 1
            pixels = review_pixels(r)  # (C, H, W) uint8, as the server stored them
            if tuple(pixels.shape) != target.input_shape:
                other_shape += 1
                continue
            xs.append(pixels)
            ids.append(r.prediction_id)
        if len(xs) * per_image > cfg.max_pool_bytes:
            raise BadInput(
                f"the log holds over max_pool_bytes {cfg.max_pool_bytes} of such pixels: narrow it (--alias, --status)"
            )
    what = "uploads" if devices is not None else "logged answers"
    if not xs:
        why = f", {other_shape} of another input shape than {list(target.input_shape)}" if other_shape else ""
        raise BadInput(
            f"no {cfg.status} {what} with pixels to pool ({read} read{why}): the log keeps the pixels of review-queue "
            "items only (below the policy threshold, abstained, audited, or uploaded by a device)"
        )
    x = np.stack(xs)  # (N, C, H, W) uint8
    keep = new_images(x, into)
    if not keep.any():
        where = f"{into.name} ({into.id})" if into is not None else "the log"
        raise BadInput(f"all {len(xs)} {what} are already in {where}: there is nothing new to add")
    kept = [p for p, k in zip(ids, keep) if k]
    source: dict[str, Any] = {
        "kind": "edge-uploads" if devices is not None else "log",
        "target": target.ref(),
        "read": read,
        "other_shape": other_shape,
        "duplicates": int((~keep).sum()),
        "config": cfg.to_dict(),
        **lineage(ws, "prediction_ids", kept, len(into.y) if into is not None else 0),
    }
    if devices is not None:
        source["devices"] = dict(sorted(collections.Counter(devices[p] for p in kept).items()))
    ds = store_pool(ws, x[keep], like=like, into=into, name=name, source=source)
    report = pool_report(ds, int(keep.sum()), int((~keep).sum()))
    extra = {"devices": source["devices"]} if devices is not None else {}
    log = pixel_coverage(registry.engine)
    return ds, {**report, **extra, "read": read, "other_shape": other_shape, "target": target.ref(), "log": log}


def _ids(devices: dict[str, str] | None) -> list[str] | None:
    return None if devices is None else list(devices)
