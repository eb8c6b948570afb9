"""The prediction log, feedback and the review queue, in the registry database.

Every answer is logged (input hash, output, model version, alias, server,
time) for audit and for the data flywheel; feedback attaches the correct
label to a logged prediction. An answer that needs review (below the
policy threshold, or abstained) also enters the review queue with its
pixels, so a person can see it in /review and decide its label
(`ReviewQueue`). Rows of both are buffered and written in batches, in one
transaction, by a background task, so a slow database does not slow
serving; `flush()` lets feedback see a prediction made a moment ago.

``input_sha256`` hashes the raw pixels the model saw, float32 (C, H, W) in
0..255 after decoding and resizing, so a PNG and the same pixels sent as
JSON hash alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa

from datamoat.errors import NotFound
from datamoat.registry import Registry
from datamoat.serve.errors import Conflict, TooMany, Unprocessable
from datamoat.serve.inputs import as_uint8

__all__ = [
    "PredictionLog",
    "ReviewQueue",
    "log_rows",
    "review_rows",
    "open_reviews",
    "predictions",
    "feedback",
    "review",
    "REVIEW_SOURCE",
]

REVIEW_SOURCE = "review"  # the quarantine source of /review decisions; trust comes from the token's role

log = logging.getLogger("datamoat.serve")

meta = sa.MetaData()
predictions = sa.Table(
    "serve_predictions",
    meta,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("server_id", sa.String(100), nullable=False),
    sa.Column("alias", sa.String(100), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("input_sha256", sa.String(64), nullable=False),
    sa.Column("label", sa.String(200)),  # NULL when it abstained
    sa.Column("abstained", sa.Boolean, nullable=False),
    sa.Column("needs_review", sa.Boolean, nullable=False),
    sa.Column("output", sa.Text, nullable=False),  # JSON: the whole answer
)
feedback = sa.Table(
    "serve_feedback",
    meta,
    sa.Column("prediction_id", sa.String(36), primary_key=True),
    sa.Column("source", sa.String(100), primary_key=True),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
)
review = sa.Table(
    "serve_review",
    meta,
    sa.Column("prediction_id", sa.String(36), primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("alias", sa.String(100), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("label", sa.String(200)),  # the model's answer, NULL when it abstained
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("top", sa.Text, nullable=False),  # JSON: the answer's top labels (at most 3) with probabilities
    sa.Column("pixels", sa.LargeBinary, nullable=False),  # uint8 (C, H, W)
    sa.Column("shape", sa.String(40), nullable=False),  # JSON [C, H, W]
    sa.Column("exact", sa.Boolean, nullable=False),  # the uint8 pixels are exactly the logged input
    sa.Column("status", sa.String(16), nullable=False),  # open | decided
    sa.Column("decided_label", sa.String(200)),
    sa.Column("decided_by", sa.String(200)),
    sa.Column("decided_ts", sa.Float),
    sa.Column("feedback_item", sa.Integer),  # the quarantine item the decision became
    sa.Index("serve_review_open", "status", "ts"),
)


def open_reviews(conn: sa.Connection) -> int:
    """How many review items are open, in `conn`'s transaction (the servers' and the fleet's bound)."""
    return int(
        conn.execute(sa.select(sa.func.count()).select_from(review).where(review.c.status == "open")).scalar_one()
    )


class PredictionLog:
    """Buffered writer of `serve_predictions`, and the feedback store.

    >>> plog = PredictionLog(Registry("sqlite://"))
    >>> plog.add([])
    """

    def __init__(
        self,
        registry: Registry,
        enabled: bool = True,
        flush_s: float = 0.2,
        max_pending: int = 512,
        review_max_open: int = 10_000,
        on_review_skipped: Any = lambda n: None,
    ):
        self.registry, self.enabled, self.flush_s, self.max_pending = registry, enabled, flush_s, max_pending
        # A bound on open review items, across every server on this registry: a flood of low-confidence
        # inputs (or an attack) must not grow the database without end. Items over it are not queued,
        # and counted (datamoat_review_skipped); their predictions are still logged. Servers writing at the
        # same moment can each see the same room, so the bound may be passed by one write batch per server.
        self.review_max_open, self.on_review_skipped = review_max_open, on_review_skipped
        for attempt in range(3):  # servers starting together race to create the tables: the loser retries
            try:
                meta.create_all(registry.engine)
                break
            except sa.exc.DBAPIError:
                if attempt == 2:
                    raise
                time.sleep(0.2)
        self._pending: list[dict[str, Any]] = []
        self._review: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def add(self, rows: list[dict[str, Any]], review_items: Sequence[dict[str, Any]] = ()) -> None:
        """Buffer prediction-log rows and review-queue rows (`review_rows`) of those predictions."""
        if not self.enabled or not rows:
            return
        self._pending.extend(rows)
        self._review.extend(review_items)
        if len(self._pending) >= self.max_pending:
            self._wake.set()

    async def flush(self) -> None:
        """Write everything added so far (waits for a write already under way)."""
        async with self._lock:
            (rows, self._pending), (queued, self._review) = (self._pending, []), (self._review, [])
            if rows:
                skipped = await asyncio.to_thread(self._write, rows, queued)
                if skipped:
                    self.on_review_skipped(skipped)
                    log.warning("review queue full (%d open items): %d not queued", self.review_max_open, skipped)

    def _write(self, rows: list[dict[str, Any]], queued: list[dict[str, Any]]) -> int:
        """Write log rows and as many review rows as the bound allows; returns how many were not queued."""
        with self.registry.engine.begin() as conn:  # one transaction: a queued item's prediction is logged
            conn.execute(predictions.insert(), rows)
            if not queued:
                return 0
            room = max(0, self.review_max_open - open_reviews(conn))
            if room:
                conn.execute(review.insert(), queued[:room])
            return len(queued) - min(room, len(queued))

    async def run(self) -> None:
        """Background writer; runs until cancelled, then the owner calls `flush()`."""
        while True:
            with contextlib.suppress(TimeoutError):  # a timeout is the periodic flush
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # keep serving; the rows of a failed write are lost, and said so
                log.exception("writing the prediction log failed")

    def record_feedback(
        self, prediction_id: str, label: str, source: str, actor: str, max_per_hour: int = 1000
    ) -> dict[str, Any]:
        """Store the correct label for a logged prediction (blocking: call in a thread).

        One label per token per prediction, and at most `max_per_hour` from one
        token across every server (L2): the client-chosen `source` describes the
        label, it does not make room for more of them.
        """
        with self.registry.engine.connect() as conn:
            row = conn.execute(sa.select(predictions.c.model_version).where(predictions.c.id == prediction_id)).first()
        if row is None:
            why = "" if self.enabled else " (this server does not log predictions)"
            raise NotFound(
                f"unknown prediction id {prediction_id!r}{why}: send the prediction_id a /v1/predict answer gave"
            )
        classes = [str(c) for c in self.registry.version(row.model_version)["info"]["classes"]]
        if label not in classes:
            raise Unprocessable(
                f"label {label!r} is not one of the model's classes: choose one of {', '.join(classes)}"
            )
        entry = {
            "prediction_id": prediction_id,
            "source": source,
            "label": label,
            "model_version": row.model_version,
            "actor": actor,
            "ts": time.time(),
        }
        try:
            with self.registry.transaction() as conn:  # serialised: the count and the check hold until commit
                mine = feedback.c.actor == actor
                if conn.execute(
                    sa.select(feedback.c.source).where(mine & (feedback.c.prediction_id == prediction_id))
                ).first():
                    raise Conflict(
                        f"feedback from token {actor!r} for prediction {prediction_id} is already recorded: send it once"
                    )
                recent = conn.execute(
                    sa.select(sa.func.count()).where(mine & (feedback.c.ts > entry["ts"] - 3600))
                ).scalar_one()
                if recent >= max_per_hour:
                    raise TooMany(
                        f"token {actor!r} sent {recent} feedback labels in the last hour, the limit is "
                        f"{max_per_hour}: send the rest later"
                    )
                conn.execute(feedback.insert().values(**entry))
        except sa.exc.IntegrityError:
            raise Conflict(
                f"feedback from source {source!r} for prediction {prediction_id} is already recorded: send it once"
            ) from None
        return entry


def log_rows(state: Any, server_id: str, answers: list[dict[str, Any]], hashes: list[str]) -> list[dict[str, Any]]:
    """Prediction-log rows for one request's answers."""
    now = time.time()
    return [
        {
            "id": a["prediction_id"],
            "ts": now,
            "server_id": server_id,
            "alias": state.alias,
            "model_version": state.model.version_id,
            "generation": state.generation,
            "input_sha256": h,
            "label": a["label"],
            "abstained": a["abstained"],
            "needs_review": a["needs_review"],
            "output": json.dumps(a, sort_keys=True),
        }
        for a, h in zip(answers, hashes, strict=True)
    ]


def review_rows(state: Any, answers: list[dict[str, Any]], x: np.ndarray) -> list[dict[str, Any]]:
    """Review-queue rows for the answers that need review, with their raw pixels `x` (N, C, H, W)."""
    now, out = time.time(), []
    for a, xi in zip(answers, x, strict=True):
        if not a["needs_review"]:
            continue
        u, exact = as_uint8(xi)  # (C, H, W)
        out.append(
            {
                "prediction_id": a["prediction_id"],
                "ts": now,
                "alias": state.alias,
                "model_version": state.model.version_id,
                "label": a["label"],
                "reason": a["reason"] or "",
                "top": json.dumps(a["top_k"][:3]),
                "pixels": u.tobytes(),
                "shape": json.dumps(list(u.shape)),
                "exact": exact,
                "status": "open",
            }
        )
    return out


class ReviewQueue:
    """The open items of the review queue, and people's decisions on them (blocking: call in a thread).

    A decision goes into the feedback quarantine as server feedback from
    source ``review`` under the reviewer's token name, which the gate
    trusts by the token's role (`GateConfig.trusted_roles`), with the pixels
    when they reproduce the logged input exactly (always, except for JSON
    inputs with fractional values, which the gate then holds for "no pixels").

    >>> ReviewQueue(Registry("sqlite://")).next()
    {'queue_length': 0, 'item': None}
    """

    def __init__(self, registry: Registry):
        self.registry = registry
        meta.create_all(registry.engine)
        self._classes: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._q: Any = None

    def classes(self, version_id: str) -> list[str]:
        if version_id not in self._classes:  # version info is immutable: cache it
            self._classes[version_id] = [str(c) for c in self.registry.version(version_id)["info"]["classes"]]
        return self._classes[version_id]

    def quarantine(self) -> Any:
        with self._lock:
            if self._q is None:
                # Imported here: the feedback package loads torch, which serving otherwise never needs.
                from datamoat.feedback.store import Quarantine

                self._q = Quarantine(self.registry)
            return self._q

    def next(self) -> dict[str, Any]:
        """{"queue_length": open items, "item": the oldest open one (pixels uint8 (C, H, W)) or None}."""
        with self.registry.engine.connect() as conn:
            n = open_reviews(conn)
            row = conn.execute(
                sa.select(review)
                .where(review.c.status == "open")
                .order_by(review.c.ts, review.c.prediction_id)
                .limit(1)
            ).first()
        if row is None:
            return {"queue_length": n, "item": None}
        item = {
            "prediction_id": row.prediction_id,
            "ts": row.ts,
            "alias": row.alias,
            "model_version": row.model_version,
            "label": row.label,
            "reason": row.reason,
            "top_k": json.loads(row.top),
            "classes": self.classes(row.model_version),
            "pixels": np.frombuffer(row.pixels, np.uint8).reshape(json.loads(row.shape)),
        }
        return {"queue_length": n, "item": item}

    def items(self, status: str | None = None) -> list[dict[str, Any]]:
        """Queue rows without pixels, oldest first."""
        q = sa.select(*[c for c in review.c if c.name != "pixels"]).order_by(review.c.ts, review.c.prediction_id)
        with self.registry.engine.connect() as conn:
            rows = conn.execute(q if status is None else q.where(review.c.status == status)).mappings().all()
        return [{**r, "top": json.loads(r["top"])} for r in rows]

    def decide(self, prediction_id: str, label: str, actor: str) -> dict[str, Any]:
        """Record a person's label for an open item: into quarantine, and out of the queue."""
        with self.registry.engine.connect() as conn:
            row = conn.execute(sa.select(review).where(review.c.prediction_id == prediction_id)).first()
        if row is None:
            raise NotFound(f"no review item {prediction_id!r}: GET /v1/review/next gives the oldest open one")
        taken = Conflict(f"review item {prediction_id} is already decided: GET /v1/review/next gives an open one")
        if row.status != "open":
            raise taken
        classes = self.classes(row.model_version)
        if label not in classes:
            raise Unprocessable(
                f"label {label!r} is not one of the model's classes: choose one of {', '.join(classes)}"
            )
        mark = review.update().where(review.c.prediction_id == prediction_id)
        with self.registry.engine.begin() as conn:  # claim it first, so two reviewers cannot both decide it
            done = dict(status="decided", decided_label=label, decided_by=actor, decided_ts=time.time())
            if conn.execute(mark.where(review.c.status == "open").values(**done)).rowcount == 0:
                raise taken
        try:
            pixels = np.frombuffer(row.pixels, np.uint8).reshape(json.loads(row.shape)) if row.exact else None
            item = self.quarantine().submit(
                source=REVIEW_SOURCE, kind="serve", label=label, prediction_id=prediction_id, pixels=pixels, actor=actor
            )
        except BaseException:
            with self.registry.engine.begin() as conn:  # the claim is undone: the item stays open
                conn.execute(mark.values(status="open", decided_label=None, decided_by=None, decided_ts=None))
            raise
        with self.registry.engine.begin() as conn:
            conn.execute(mark.values(feedback_item=item))
        return {
            "prediction_id": prediction_id,
            "label": label,
            "model_label": row.label,
            "decided_by": actor,
            "feedback_item": item,
            "model_version": row.model_version,
        }
