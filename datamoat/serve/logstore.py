"""The prediction log's buffered writer: rows of every answer and review
item are gathered and written in batches, in one transaction, by a
background task, so a slow database does not slow serving; `flush()` lets
feedback see a prediction made a moment ago. The tables are the ledger's
(`datamoat.registry.ledger`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from datamoat.registry.core import Registry
from datamoat.registry.ledger import ensure_ledger, record_feedback, write_predictions

__all__ = ["PredictionLog"]

log = logging.getLogger("datamoat.serve")


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
        ensure_ledger(registry.engine)
        self._pending: list[dict[str, Any]] = []
        self._review: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._unsure = False  # rows held from a failed write are pending: that write may have committed

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
            unsure, self._unsure = self._unsure, False
            if rows:
                try:
                    skipped = await asyncio.to_thread(self._write, rows, queued, unsure)
                except sa.exc.OperationalError:  # the database is down or locked: keep them for the next flush
                    self._hold(rows, queued)
                    raise
                if skipped:
                    self.on_review_skipped(skipped)
                    log.warning("review queue full (%d open items): %d not queued", self.review_max_open, skipped)

    def _hold(self, rows: list[dict[str, Any]], queued: list[dict[str, Any]]) -> None:
        """Put unwritten rows back in front of the newer ones, within a bound: an outage of the
        database costs its oldest rows past `8 x max_pending` (review items past `max_pending`, as
        they hold pixels), never the server's memory."""
        self._pending[:0], self._review[:0] = rows, queued
        self._unsure = True
        n_rows, n_review = len(self._pending), len(self._review)
        if n_rows > 8 * self.max_pending:
            gone = {r["id"] for r in self._pending[: n_rows - 8 * self.max_pending]}
            del self._pending[: len(gone)]
            self._review = [q for q in self._review if q["prediction_id"] not in gone]  # each cites its log row
        del self._review[: max(0, len(self._review) - self.max_pending)]
        if len(self._pending) < n_rows or len(self._review) < n_review:
            log.warning(
                "the prediction log could not be written: its %d oldest rows and %d review items dropped",
                n_rows - len(self._pending),
                n_review - len(self._review),
            )

    def _write(self, rows: list[dict[str, Any]], queued: list[dict[str, Any]], may_exist: bool) -> int:
        return write_predictions(self.registry.engine, rows, queued, self.review_max_open, may_exist)

    async def run(self) -> None:
        """Background writer; runs until cancelled, then the owner calls `flush()`."""
        while True:
            with contextlib.suppress(TimeoutError):  # a timeout is the periodic flush
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # keep serving; rows the database refused are lost and said so, an outage's are held
                log.exception("writing the prediction log failed")
                await asyncio.sleep(self.flush_s)  # held rows keep waking the writer: one try per flush_s

    def record_feedback(
        self, prediction_id: str, label: str, source: str, actor: str, max_per_hour: int = 1000
    ) -> dict[str, Any]:
        """Store the correct label for a logged prediction (see `datamoat.registry.ledger.record_feedback`)."""
        return record_feedback(self.registry, prediction_id, label, source, actor, max_per_hour, self.enabled)
