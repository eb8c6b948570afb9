"""Rows for the ledger's tables built from a server's answers, before any database sees them: the
input hash every route shares, the prediction-log rows, and the review-queue rows with their pixels.
`datamoat.registry.ledger` owns the tables and writes these rows; nothing here touches a database.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np

__all__ = ["AUDIT_REASON", "as_uint8", "input_hash", "is_audited", "log_rows", "review_rows"]

AUDIT_REASON = "audit sample of automated answers: checks the guarantee"


def input_hash(pixels: np.ndarray) -> str:
    """The input hash every route shares: sha256 of one image's float32 (C, H, W) pixels in 0..255.

    >>> input_hash(np.zeros((1, 2, 2), np.uint8))[:12]
    '374708fff771'
    """
    return hashlib.sha256(np.ascontiguousarray(pixels, np.float32).tobytes()).hexdigest()


def as_uint8(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """One image (C, H, W) as uint8 for storage, and whether that is exactly the input (JSON may hold fractions).

    >>> as_uint8(np.array([[[1.0, 2.5]]]))[1]
    False
    """
    u = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)  # (C, H, W)
    return u, bool(np.array_equal(u, pixels))


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


def is_audited(prediction_id: str, fraction: float) -> bool:
    """Whether an automated answer joins the audit sample: decided by its id (a random UUID), so
    the sample is random, and the same on every server.

    >>> is_audited("00000000-aaaa", 0.01), is_audited("ffffffff-aaaa", 0.99)
    (True, False)
    """
    return int(prediction_id.replace("-", "")[:8], 16) < fraction * 2**32


def review_rows(state: Any, answers: list[dict[str, Any]], x: np.ndarray, audit: float = 0.0) -> list[dict[str, Any]]:
    """Review-queue rows for the answers that need review, with their raw pixels `x` (N, C, H, W),
    and for an `audit` share of the automated answers (`AUDIT_REASON`): people's labels on those are
    a random sample of what was automated, which the live guarantee check tests."""
    now, out = time.time(), []
    for a, xi in zip(answers, x, strict=True):
        if not a["needs_review"]:
            if a["abstained"] or not audit or not is_audited(a["prediction_id"], audit):
                continue
            a = {**a, "reason": AUDIT_REASON}
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
