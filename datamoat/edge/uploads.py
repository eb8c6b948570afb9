"""What a device may upload: the per-item checks behind `Fleet.record_uploads`.

Each item is one low-confidence answer the device kept (pixels, its top-k,
the model version that answered). An item that can never be stored raises
`UploadRefused` naming its index, so the device drops that one and sends
the rest again; `RateLimited` (429) tells it to keep them and retry later.
"""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from typing import Any

import numpy as np

from datamoat.registry import Registry
from datamoat.serve.errors import Unprocessable
from datamoat.serve.inputs import input_hash

__all__ = ["RateLimited", "UploadRefused", "parse_upload"]


class UploadRefused(Unprocessable):
    """An uploaded item the server will never take; `item` is its index in
    the batch, so the device drops that one and sends the rest again."""

    def __init__(self, message: str, item: int, http_status: int = 422):
        super().__init__(f"items[{item}]: {message}")
        self.item, self.http_status = item, http_status


class RateLimited(Unprocessable):
    """A device sent more samples than its hourly allowance, or the review queue is full."""

    http_status = 429


def parse_upload(i: int, it: Any, versions: dict[str, Any], registry: Registry, now: float) -> dict[str, Any]:
    """Item `i` of an upload batch, checked against its model version (`versions`
    caches the registry's for the batch): the fields `Fleet.record_uploads` stores.

    >>> parse_upload(0, "not an object", {}, Registry("sqlite://"), 0.0)
    Traceback (most recent call last):
    ...
    datamoat.edge.uploads.UploadRefused: items[0]: each item must be a JSON object
    """

    def need(ok: bool, why: str) -> None:
        if not ok:
            raise UploadRefused(why, i)

    need(isinstance(it, dict), "each item must be a JSON object")
    pid = it.get("prediction_id")
    need(isinstance(pid, str) and _is_uuid(pid), f"prediction_id must be the answer's UUID, got {pid!r}")
    vid = it.get("model_version")
    need(isinstance(vid, str) and 0 < len(vid) <= 32, f"model_version must be a version id, got {vid!r}")
    if not versions:  # once per batch; exact ids only (a device reports the id its bundle carries)
        versions.update({r["id"]: r for r in registry.versions()})
    info = versions.get(vid)
    need(info is not None, f"model version {vid!r} is not in this registry: upload samples of registered versions")
    assert info is not None
    classes, shape = [str(c) for c in info["info"]["classes"]], info["info"].get("input_shape")
    need(
        isinstance(shape, list) and it.get("shape") == shape,
        f"shape {it.get('shape')} does not match model {vid}'s input {shape}",
    )
    try:
        raw = base64.b64decode(it.get("pixels") or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        raw = None
    need(raw is not None and len(raw) == math.prod(shape), f"pixels must be base64 of {math.prod(shape)} uint8 values")
    assert raw is not None
    pixels = np.frombuffer(raw, np.uint8).reshape(shape)  # (C, H, W)
    label = it.get("label")
    need(label is None or label in classes, f"label {label!r} is not one of model {vid}'s classes")
    top = it.get("top_k")
    need(isinstance(top, list) and 0 < len(top) <= 10, "top_k must list 1..10 {label, probability}")
    for t in top:
        p = t.get("probability") if isinstance(t, dict) else None
        need(isinstance(t, dict) and t.get("label") in classes, f"top_k label {t!r} is not one of the classes")
        need(isinstance(p, (int, float)) and 0 <= p <= 1, f"top_k probability {p!r} must be in 0..1")
    flags = [it.get(k) for k in ("abstained", "needs_review")]
    need(all(isinstance(f, bool) for f in flags), "abstained and needs_review must be true or false")
    need(any(flags), "only answers that need review or abstained are uploaded")
    ts = it.get("ts")
    need(isinstance(ts, (int, float)) and 0 < ts < math.inf, f"ts must be the answer's unix time, got {ts!r}")
    exact, digest = it.get("exact", True), it.get("input_sha256")
    need(isinstance(exact, bool), "exact must be true or false")
    own = input_hash(pixels)
    if exact:
        need(digest in (None, own), "input_sha256 does not match the pixels: send the image the model answered")
    # Whatever the device says, the hash stored is the server's own, of the pixels
    # it holds: a reviewer's label is filed under what the reviewer saw (H2).
    digest = own
    reason, gen = it.get("reason") or "", it.get("generation", -1)
    need(isinstance(reason, str) and len(reason) <= 500, "reason must be text of at most 500 characters")
    need(isinstance(gen, int), "generation must be an integer")
    return {
        "prediction_id": pid,
        "model_version": vid,
        "pixels": pixels,
        "label": label,
        "top_k": [{"label": t["label"], "probability": float(t["probability"])} for t in top],
        "abstained": flags[0],
        "ts": min(float(ts), now),
        "exact": exact,
        "input_sha256": digest,
        "reason": reason,
        "generation": gen,
    }


def _is_uuid(s: str) -> bool:
    try:
        return str(uuid.UUID(s)) == s
    except ValueError:
        return False
