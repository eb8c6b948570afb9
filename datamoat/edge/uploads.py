"""What a device may upload, and who uploaded what (`edge_uploads`): the checks
and writes behind `Fleet.record_uploads`.

Each item is one low-confidence answer the device kept (pixels, its top-k,
the model version that answered). An item that can never be stored raises
`UploadRefused` naming its index, so the device drops that one and sends
the rest again; `RateLimited` (429) tells it to keep them and retry later.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
import uuid
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from datamoat.errors import Unprocessable
from datamoat.registry.answer_rows import input_hash, log_rows, review_rows
from datamoat.registry.core import Registry
from datamoat.registry.ledger import add_logged_review, logged_ids, open_reviews
from datamoat.registry.schema import ensure_schema
from datamoat.workspace import Workspace

if TYPE_CHECKING:
    from datamoat.data.dataset import Dataset
    from datamoat.data.intake import PoolTarget
    from datamoat.feedback.intake import LogPoolConfig

__all__ = [
    "RateLimited",
    "UploadRefused",
    "parse_upload",
    "record_uploads",
    "uploads",
    "upload_log",
    "pool_from_uploads",
]

meta = sa.MetaData()
uploads = sa.Table(
    "edge_uploads",
    meta,
    sa.Column("prediction_id", sa.String(36), primary_key=True),  # the device's, also the review item's id
    sa.Column("device_id", sa.String(100), nullable=False),
    sa.Column("received", sa.Float, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),  # when the device answered
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),  # pixel bytes
    sa.Index("edge_uploads_by_device", "device_id", "received"),
)


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


def record_uploads(
    conn: sa.Connection,
    device: dict[str, Any],
    parsed: list[dict[str, Any]],
    *,
    max_per_hour: int,
    max_open: int = 10_000,
) -> dict[str, Any]:
    """Store a device's low-confidence samples as review-queue items (see the module docstring).

    All or nothing per item check: an invalid item raises `UploadRefused`
    naming it, and nothing of the batch is stored. Items already sent by
    this device are acknowledged again (an ack lost on the way). Beyond
    `max_per_hour` new items an hour, or beyond `max_open` open items in
    the whole review queue (the bound the servers keep too), the rest are
    left unacknowledged (``rate_limited``), or `RateLimited` (429) when
    none fit: the device keeps them and sends them again later.
    Returns {"acked": prediction ids, "stored": n, "duplicates": n, "rate_limited": bool}.

    `parsed` are the items through `parse_upload`, checked before the
    transaction; call this in a serialised one (`Fleet.record_uploads` does),
    so the room it counts stays true until commit.
    """
    now = time.time()
    ids = [p["prediction_id"] for p in parsed]
    mine = {
        r.prediction_id: r.device_id
        for r in conn.execute(
            sa.select(uploads.c.prediction_id, uploads.c.device_id).where(uploads.c.prediction_id.in_(ids))
        )
    }
    logged = logged_ids(conn, ids)
    recent = conn.execute(
        sa.select(sa.func.count())
        .select_from(uploads)
        .where((uploads.c.device_id == device["id"]) & (uploads.c.received > now - 3600))
    ).scalar_one()
    n_open = open_reviews(conn)
    new: list[dict[str, Any]] = []
    dup: list[dict[str, Any]] = []
    seen = set()
    for i, p in enumerate(parsed):
        pid = p["prediction_id"]
        if mine.get(pid, device["id"]) != device["id"] or (pid in logged and pid not in mine):
            raise UploadRefused(
                f"prediction id {pid} is already used by another source: a device uploads only its own answers",
                i,
                409,
            )
        (dup if pid in mine or pid in seen else new).append(p)
        seen.add(pid)
    room = max(0, min(max_per_hour - recent, max_open - n_open))
    if new and room == 0:
        if n_open >= max_open:
            raise RateLimited(
                f"the review queue is full ({n_open} open items, the limit is {max_open}): "
                "keep the samples and retry later"
            )
        raise RateLimited(
            f"device {device['id']!r} sent {recent} samples in the last hour, its limit is "
            f"{max_per_hour}: keep them and retry later"
        )
    stored = new[:room]
    group = device["device_group"]
    for p in stored:  # in one transaction: each review item has its log row and its upload row
        # The cloud's row builders, with the device in the place of a server and its own time.
        state = SimpleNamespace(
            alias=f"edge:{group}",
            generation=p["generation"],
            model=SimpleNamespace(version_id=p["model_version"]),
        )
        answer = {k: p[k] for k in ("prediction_id", "label", "abstained", "top_k")}
        answer.update(needs_review=True, reason=f"from device {device['id']}: {p['reason']}")
        log_row = log_rows(state, f"device:{device['id']}", [answer], [p["input_sha256"]])[0]
        rev = review_rows(state, [answer], p["pixels"][None])[0]
        # The queue is ordered by when the server received an item, never by the device's clock (L5).
        add_logged_review(conn, {**log_row, "ts": p["ts"]}, {**rev, "ts": now, "exact": p["exact"]})
        conn.execute(
            uploads.insert().values(
                prediction_id=p["prediction_id"],
                device_id=device["id"],
                received=now,
                ts=p["ts"],
                model_version=p["model_version"],
                size=int(p["pixels"].nbytes),
            )
        )
    acked = [p["prediction_id"] for p in [*stored, *dup]]
    return {"acked": acked, "stored": len(stored), "duplicates": len(dup), "rate_limited": len(stored) < len(new)}


def upload_log(engine: sa.Engine, device_id: str | None = None) -> list[dict[str, Any]]:
    """Who uploaded which sample, oldest first."""
    q = sa.select(uploads).order_by(uploads.c.received, uploads.c.ts)
    if device_id:
        q = q.where(uploads.c.device_id == device_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def pool_from_uploads(
    ws: Workspace,
    registry: Registry,
    *,
    like: PoolTarget | None = None,
    into: Dataset | None = None,
    device_id: str | None = None,
    config: LogPoolConfig | None = None,
    name: str | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """The samples devices uploaded (every device's, or `device_id`'s) as unlabeled items, with each
    device's count in the version's source: `datamoat.feedback.intake.pool_from_log` over their
    review items. The uploads were checked when they arrived (the device's token, the model's input
    shape, the size of the pixels); the hash is the server's own, and nothing here reads a client's.

    >>> ds, report = pool_from_uploads(ws, reg, into=load_dataset(ws, "digits"))  # doctest: +SKIP
    """
    from datamoat.errors import BadInput
    from datamoat.feedback.intake import pool_from_log

    ensure_schema(registry.engine, "edge_uploads", meta)  # a registry no device has used yet has none
    devices = {u["prediction_id"]: u["device_id"] for u in upload_log(registry.engine, device_id)}
    if not devices:
        raise BadInput(f"no uploads from {f'device {device_id!r}' if device_id else 'any device'} to pool")
    return pool_from_log(ws, registry, like=like, into=into, config=config, name=name, devices=devices)
