"""The review queue, seen by people: the oldest open item, and their decisions.

Items enter the queue from the servers' and the devices' low-confidence
answers (the ledger's ``serve_review``). A decision goes into the feedback
quarantine as server feedback from source ``review`` under the reviewer's
token name, which the gate trusts by the token's role
(`GateConfig.trusted_roles`), with the pixels when they reproduce the logged
input exactly (always, except for JSON inputs with fractional values, which
the gate then holds for "no pixels").
"""

from __future__ import annotations

import json
import threading
from typing import Any

from datamoat.errors import Conflict, NotFound, Unprocessable
from datamoat.feedback.guarantee import enforce_guarantee
from datamoat.feedback.store import Quarantine
from datamoat.registry.answer_rows import AUDIT_REASON
from datamoat.registry.core import Registry
from datamoat.registry.ledger import (
    REVIEW_SOURCE,
    claim_review,
    ensure_ledger,
    oldest_open_review,
    release_review,
    review_item,
    review_items,
    review_pixels,
)

__all__ = ["ReviewQueue"]


class ReviewQueue:
    """The open items of the review queue, and people's decisions on them (blocking: call in a thread).

    >>> ReviewQueue(Registry("sqlite://")).next()
    {'queue_length': 0, 'item': None}
    """

    def __init__(self, registry: Registry, guarantee_action: str = "review_all"):
        self.registry, self.guarantee_action = registry, guarantee_action
        ensure_ledger(registry.engine)
        self._classes: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._q: Quarantine | None = None

    def classes(self, version_id: str) -> list[str]:
        if version_id not in self._classes:  # version info is immutable: cache it
            self._classes[version_id] = [str(c) for c in self.registry.version(version_id)["info"]["classes"]]
        return self._classes[version_id]

    def quarantine(self) -> Quarantine:
        with self._lock:
            if self._q is None:  # opened on first use: a server that nobody reviews on never creates its tables
                self._q = Quarantine(self.registry)
            return self._q

    def next(self) -> dict[str, Any]:
        """{"queue_length": open items, "item": the oldest open one (pixels uint8 (C, H, W)) or None}."""
        n, row = oldest_open_review(self.registry.engine)
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
            "pixels": review_pixels(row),
        }
        return {"queue_length": n, "item": item}

    def items(self, status: str | None = None) -> list[dict[str, Any]]:
        """Queue rows without pixels, oldest first."""
        return review_items(self.registry.engine, status)

    def decide(self, prediction_id: str, label: str, actor: str) -> dict[str, Any]:
        """Record a person's label for an open item: into quarantine, and out of the queue."""
        row = review_item(self.registry.engine, prediction_id)
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
        if not claim_review(self.registry.engine, prediction_id, label, actor):  # two reviewers cannot both decide it
            raise taken
        try:
            pixels = review_pixels(row) if row.exact else None
            item = self.quarantine().submit(
                source=REVIEW_SOURCE, kind="serve", label=label, prediction_id=prediction_id, pixels=pixels, actor=actor
            )
        except BaseException:
            release_review(self.registry.engine, prediction_id)  # the claim is undone: the item stays open
            raise
        release_review(self.registry.engine, prediction_id, item)
        guarantee = None
        if row.reason == AUDIT_REASON:  # a labelled sample of what was automated: test the guarantee
            guarantee = enforce_guarantee(
                self.registry, row.model_version, actor="guarantee-check", action=self.guarantee_action
            )
        return {
            "guarantee": guarantee,
            "prediction_id": prediction_id,
            "label": label,
            "model_label": row.label,
            "decided_by": actor,
            "feedback_item": item,
            "model_version": row.model_version,
        }
