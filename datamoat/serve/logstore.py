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
        return write_predictions(self.registry.engine, rows, queued, self.review_max_open)

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
        """Store the correct label for a logged prediction (see `datamoat.registry.ledger.record_feedback`)."""
        return record_feedback(self.registry, prediction_id, label, source, actor, max_per_hour, self.enabled)
