"""The quarantine: every feedback item lands here, and nothing leaves it for
training data without passing the gate (`datamoat.feedback.gate`).

Items come from three places, all into one table (``fb_items``) in the
registry database, next to the prediction log:

- the server's ``/v1/feedback`` (``serve_feedback``), copied by `sync()`;
- labels given on edge devices, through `submit(kind="edge")` (a device's
  low-confidence samples carry no label: they wait in the review queue, see
  `datamoat.edge.fleet`, and enter here once a person labels them);
- labelled files, through `import_items()` (``datamoat feedback import``).

Each item keeps its source, time, prediction id, model version, label and
input hash; the hash is the server's (sha256 of float32 (C, H, W) pixels in
0..255), so one image matches across every route. The prediction log keeps
only that hash, not the pixels: a server item has no pixels until a client
submits them (`submit(kind="serve", pixels=...)`) or `attach_pixels()` finds
them by hash, and the gate holds it ("no pixels") until then.

Every status change, by the gate or a person, is appended to ``fb_decisions``,
which the database itself keeps append-only.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import sqlalchemy as sa

from datamoat.configs import check, check_choice
from datamoat.errors import BadInput, Conflict, NotFound
from datamoat.registry.answer_rows import input_hash
from datamoat.registry.chain import append_only_ddl
from datamoat.registry.core import Registry
from datamoat.registry.ledger import ensure_ledger, feedback_rows, logged_prediction
from datamoat.registry.schema import begin_write, ensure_schema

__all__ = ["Quarantine", "input_hash", "KINDS", "STATUSES"]

KINDS = ("serve", "edge", "import")
STATUSES = ("pending", "accepted", "held", "rejected")

meta = sa.MetaData()
items = sa.Table(
    "fb_items",
    meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("source", sa.String(100), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),  # who sent it: a token name for server feedback
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("prediction_id", sa.String(64)),
    sa.Column("model_version", sa.String(32)),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("input_sha256", sa.String(64), nullable=False),
    sa.Column("dedup", sa.String(80), nullable=False),  # "p:<prediction id>" or "h:<input hash>"
    sa.Column("pixels", sa.LargeBinary),  # uint8 (C, H, W) bytes, NULL when unknown
    sa.Column("shape", sa.String(40)),  # JSON [C, H, W]
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reasons", sa.Text, nullable=False),  # JSON list
    sa.Column("decided_by", sa.String(200)),  # "gate", or the person who accepted/rejected it
    sa.UniqueConstraint("source", "dedup", name="fb_items_once_per_source"),
)
decisions = sa.Table(
    "fb_decisions",
    meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("item_id", sa.Integer, nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)


def _append_only(conn: sa.Connection) -> None:
    for stmt in append_only_ddl(conn.dialect.name, decisions.name):  # a decision, once made, stays on record
        conn.exec_driver_sql(stmt)


class Quarantine:
    """Feedback items and decisions, in the registry database.

    >>> q = Quarantine(Registry("sqlite://"))
    >>> q.items()
    []
    """

    def __init__(self, registry: Registry):
        self.registry = registry
        ensure_ledger(registry.engine)  # sync() reads it even before a server ran
        ensure_schema(registry.engine, "feedback", meta, after=_append_only)

    # -- intake ------------------------------------------------------------------
    def _classes(self, model_version: str | None) -> tuple[str, list[str], list[int]]:
        """(version id, classes, input shape) of `model_version`, else of production."""
        if model_version is None:
            model_version = self.registry.snapshot()["aliases"].get("production")
            if model_version is None:
                raise BadInput("no model version to check labels against: pass one, or promote a model to production")
        info = self.registry.version(model_version)
        return info["id"], [str(c) for c in info["info"]["classes"]], info["info"].get("input_shape")

    def _row(
        self,
        *,
        source: str,
        kind: str,
        label: str,
        model_version: str | None,
        prediction_id: str | None,
        pixels: np.ndarray | None,
        ts: float | None,
        actor: str = "",
    ) -> dict[str, Any]:
        check(bool(source) and len(source) <= 100, f"source must be 1..100 characters, got {source!r}")
        check_choice("feedback kind", kind, KINDS)
        logged = None
        if prediction_id is not None:
            logged = logged_prediction(self.registry.engine, prediction_id)
            if logged is None and kind == "serve":
                raise NotFound(
                    f"unknown prediction id {prediction_id!r}: send the prediction_id a /v1/predict answer gave"
                )
        if logged is not None:
            model_version = logged.model_version
        vid, classes, shape = self._classes(model_version)
        if label not in classes:
            raise BadInput(f"label {label!r} is not one of the model's classes: choose one of {', '.join(classes)}")
        digest = logged.input_sha256 if logged is not None else None
        blob = None
        if pixels is not None:
            pixels = np.asarray(pixels)
            if pixels.dtype != np.uint8 or (shape and list(pixels.shape) != list(shape)):
                raise BadInput(
                    f"pixels must be uint8 {tuple(shape or ())} for model {vid}, got {pixels.dtype} {pixels.shape}"
                )
            own = input_hash(pixels)
            if digest is not None and own != digest:
                raise BadInput(
                    f"the pixels do not match the input logged for prediction {prediction_id}: send the "
                    "image that prediction was made on"
                )
            digest, blob = own, pixels.tobytes()
        if digest is None:
            raise BadInput("feedback needs the image: pass pixels, or a prediction_id the server logged")
        return {
            "ts": time.time() if ts is None else ts,
            "source": source,
            "actor": actor,
            "kind": kind,
            "prediction_id": prediction_id,
            "model_version": vid,
            "label": label,
            "input_sha256": digest,
            "dedup": f"p:{prediction_id}" if prediction_id else f"h:{digest}",
            "pixels": blob,
            "shape": json.dumps(list(pixels.shape)) if pixels is not None else None,  # iff blob is not None
            "status": "pending",
            "reasons": "[]",
            "decided_by": None,
        }

    def _insert(self, rows: list[dict[str, Any]], skip_duplicates: bool = False) -> list[int]:
        ids = []
        with begin_write(self.registry.engine) as conn:
            for row in rows:
                dup = conn.execute(
                    sa.select(items.c.id).where((items.c.source == row["source"]) & (items.c.dedup == row["dedup"]))
                ).first()
                if dup is not None:
                    if skip_duplicates:
                        continue
                    what = f"prediction {row['prediction_id']}" if row["prediction_id"] else "this image"
                    raise Conflict(
                        f"source {row['source']!r} already sent feedback for {what} (item {dup.id}): "
                        "send each item once"
                    )
                pk = conn.execute(items.insert().values(**row)).inserted_primary_key
                assert pk is not None  # a single-row insert has one
                ids.append(pk[0])
        return ids

    def submit(
        self,
        *,
        source: str,
        label: str,
        pixels: np.ndarray | None = None,
        prediction_id: str | None = None,
        model_version: str | None = None,
        kind: str = "edge",
        ts: float | None = None,
        actor: str = "",
    ) -> int:
        """Put one item in quarantine; returns its id. An edge upload passes its
        pixels (uint8 (C, H, W)) and the version that predicted; a server
        prediction passes its logged `prediction_id` (kind "serve").

        >>> q.submit(source="cam-7", label="3", pixels=img, model_version="3f2a9c")  # doctest: +SKIP
        12
        """
        row = self._row(
            source=source,
            kind=kind,
            label=label,
            model_version=model_version,
            prediction_id=prediction_id,
            pixels=pixels,
            ts=ts,
            actor=actor,
        )
        return self._insert([row])[0]

    def import_items(
        self,
        x: np.ndarray,
        labels: list[str],
        *,
        source: str,
        model_version: str | None = None,
        skip_duplicates: bool = False,
    ) -> list[int]:
        """Put labelled images (uint8 (N, C, H, W)) in quarantine, all or none.

        >>> q.import_items(x, ["3", "8"], source="vendor-a")  # doctest: +SKIP
        [13, 14]
        """
        check(len(x) == len(labels) and len(x) > 0, f"{len(x)} images but {len(labels)} labels: give one label each")
        now = time.time()
        rows = [
            self._row(
                source=source,
                kind="import",
                label=str(lab),
                model_version=model_version,
                prediction_id=None,
                pixels=img,
                ts=now,
            )
            for img, lab in zip(x, labels)
        ]
        return self._insert(rows, skip_duplicates)

    def sync(self) -> int:
        """Copy new ``/v1/feedback`` rows into quarantine; returns how many."""
        with self.registry.engine.connect() as conn:
            have = {
                (r.source, r.prediction_id)
                for r in conn.execute(
                    sa.select(items.c.source, items.c.prediction_id).where(items.c.prediction_id.is_not(None))
                )
            }
            new = [r for r in feedback_rows(conn) if (r.source, r.prediction_id) not in have]
        rows = [
            {
                "ts": r.ts,
                "source": r.source,
                "actor": r.actor,
                "kind": "serve",
                "prediction_id": r.prediction_id,
                "model_version": r.model_version,
                "label": r.label,
                "input_sha256": r.input_sha256,
                "dedup": f"p:{r.prediction_id}",
                "pixels": None,
                "shape": None,
                "status": "pending",
                "reasons": "[]",
                "decided_by": None,
            }
            for r in new
        ]
        return len(self._insert(rows, skip_duplicates=True))

    def attach_pixels(self, x: np.ndarray) -> int:
        """Give pixels to items that only have a hash (server feedback), from
        images a caller still has (uint8 (N, C, H, W)); returns how many."""
        by_hash = {input_hash(img): img for img in np.asarray(x)}
        n = 0
        with begin_write(self.registry.engine) as conn:
            for r in conn.execute(sa.select(items.c.id, items.c.input_sha256).where(items.c.pixels.is_(None))).all():
                img = by_hash.get(r.input_sha256)
                if img is not None:
                    conn.execute(
                        items.update()
                        .where(items.c.id == r.id)
                        .values(pixels=img.tobytes(), shape=json.dumps(list(img.shape)))
                    )
                    n += 1
        return n

    # -- reading -----------------------------------------------------------------
    def items(self, status: str | None = None, ids: list[int] | None = None) -> list[dict[str, Any]]:
        """Items (without pixels), oldest first; `has_pixels` says whether they are stored."""
        q = sa.select(*[c for c in items.c if c.name != "pixels"], items.c.pixels.is_not(None).label("has_pixels"))
        if status is not None:
            check_choice("status", status, STATUSES)
            q = q.where(items.c.status == status)
        if ids is not None:
            q = q.where(items.c.id.in_(ids))
        with self.registry.engine.connect() as conn:
            rows = conn.execute(q.order_by(items.c.ts, items.c.id)).mappings().all()
        return [{**r, "reasons": json.loads(r["reasons"]), "has_pixels": bool(r["has_pixels"])} for r in rows]

    def pixels(self, ids: list[int]) -> dict[int, np.ndarray]:
        """uint8 (C, H, W) images of the items that have them."""
        with self.registry.engine.connect() as conn:
            rows = conn.execute(
                sa.select(items.c.id, items.c.pixels, items.c.shape).where(
                    items.c.id.in_(ids) & items.c.pixels.is_not(None)
                )
            ).all()
        return {r.id: np.frombuffer(r.pixels, np.uint8).reshape(json.loads(r.shape)) for r in rows}

    def decisions(self) -> list[dict[str, Any]]:
        with self.registry.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(decisions).order_by(decisions.c.seq)).mappings()]

    # -- deciding ------------------------------------------------------------------
    def set_status(self, changes: dict[int, tuple[str, list[str]]], actor: str) -> None:
        """Apply {item id: (status, reasons)} and log each change (used by the gate)."""
        now = time.time()
        with begin_write(self.registry.engine) as conn:
            for item_id, (status, reasons) in changes.items():
                conn.execute(
                    items.update()
                    .where(items.c.id == item_id)
                    .values(status=status, reasons=json.dumps(reasons), decided_by=actor)
                )
                conn.execute(
                    decisions.insert().values(
                        ts=now, item_id=item_id, decision=status, actor=actor, reason="; ".join(reasons)
                    )
                )

    def decide(self, ids: list[int], decision: str, *, actor: str, reason: str = "") -> list[dict[str, Any]]:
        """A person accepts or rejects items; final, the gate does not revisit them.

        >>> q.decide([12, 13], "rejected", actor="ana", reason="not a digit")  # doctest: +SKIP
        """
        check_choice("decision", decision, ("accepted", "rejected"))
        check(bool(actor) and actor != "gate", f"actor {actor!r} is reserved or empty: name the person deciding")
        check(bool(ids), "name at least one item id: `datamoat feedback review` lists them")
        found = {r["id"]: r for r in self.items(ids=list(ids))}
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"unknown feedback item(s) {', '.join(map(str, missing))}: `datamoat feedback review --all`")
        self.set_status({i: (decision, [f"{actor}: {reason}" if reason else actor]) for i in ids}, actor)
        return self.items(ids=list(ids))
