"""The prediction log and feedback, in the registry database.

Every answer is logged (input hash, output, model version, alias, server,
time) for audit and for the data flywheel; feedback attaches the correct
label to a logged prediction. Rows are buffered and written in batches by a
background task, so a slow database does not slow serving; `flush()` lets
feedback see a prediction made a moment ago.

``input_sha256`` hashes the raw pixels the model saw, float32 (C, H, W) in
0..255 after decoding and resizing, so a PNG and the same pixels sent as
JSON hash alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import sqlalchemy as sa

from datamoat.errors import NotFound
from datamoat.registry import Registry
from datamoat.serve.errors import Conflict, Unprocessable

__all__ = ["PredictionLog", "log_rows", "predictions", "feedback"]

log = logging.getLogger("datamoat.serve")

meta = sa.MetaData()
predictions = sa.Table(
    "serve_predictions", meta,
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
)  # fmt: skip
feedback = sa.Table(
    "serve_feedback", meta,
    sa.Column("prediction_id", sa.String(36), primary_key=True),
    sa.Column("source", sa.String(100), primary_key=True),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
)  # fmt: skip


class PredictionLog:
    """Buffered writer of `serve_predictions`, and the feedback store.

    >>> plog = PredictionLog(Registry("sqlite://"))
    >>> plog.add([])
    """

    def __init__(self, registry: Registry, enabled: bool = True, flush_s: float = 0.2, max_pending: int = 512):
        self.registry, self.enabled, self.flush_s, self.max_pending = registry, enabled, flush_s, max_pending
        for attempt in range(3):  # servers starting together race to create the tables: the loser retries
            try:
                meta.create_all(registry.engine)
                break
            except sa.exc.DBAPIError:
                if attempt == 2:
                    raise
                time.sleep(0.2)
        self._pending: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def add(self, rows: list[dict[str, Any]]) -> None:
        if not self.enabled or not rows:
            return
        self._pending.extend(rows)
        if len(self._pending) >= self.max_pending:
            self._wake.set()

    async def flush(self) -> None:
        """Write everything added so far (waits for a write already under way)."""
        async with self._lock:
            rows, self._pending = self._pending, []
            if rows:
                await asyncio.to_thread(self._write, rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        with self.registry.engine.begin() as conn:
            conn.execute(predictions.insert(), rows)

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

    def record_feedback(self, prediction_id: str, label: str, source: str, actor: str) -> dict[str, Any]:
        """Store the correct label for a logged prediction (blocking: call in a thread)."""
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
        entry = {"prediction_id": prediction_id, "source": source, "label": label,
                 "model_version": row.model_version, "actor": actor, "ts": time.time()}  # fmt: skip
        try:
            with self.registry.engine.begin() as conn:
                conn.execute(feedback.insert().values(**entry))
        except sa.exc.IntegrityError:
            raise Conflict(
                f"feedback from source {source!r} for prediction {prediction_id} is already recorded: "
                "send it once, or use another source"
            ) from None
        return entry


def log_rows(state: Any, server_id: str, answers: list[dict[str, Any]], hashes: list[str]) -> list[dict[str, Any]]:
    """Prediction-log rows for one request's answers."""
    now = time.time()
    return [
        {"id": a["prediction_id"], "ts": now, "server_id": server_id, "alias": state.alias,
         "model_version": state.model.version_id, "generation": state.generation, "input_sha256": h,
         "label": a["label"], "abstained": a["abstained"], "needs_review": a["needs_review"],
         "output": json.dumps(a, sort_keys=True)}
        for a, h in zip(answers, hashes, strict=True)
    ]  # fmt: skip
