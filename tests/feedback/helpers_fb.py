"""Crafting feedback: server predictions logged as the server logs them."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np

from datamoat.feedback import Quarantine, input_hash
from datamoat.registry.ledger import predictions
from datamoat.serve.logstore import PredictionLog


def served(q: Quarantine, img: np.ndarray, label: str = "0") -> str:
    """Log a prediction on `img` as the server would; returns its id."""
    vid = q.registry.snapshot()["aliases"]["production"]
    pid = str(uuid.uuid4())
    answer = {"prediction_id": pid, "label": label, "abstained": False, "needs_review": False}
    row = {
        "id": pid,
        "ts": time.time(),
        "server_id": "s1",
        "alias": "production",
        "model_version": vid,
        "generation": 1,
        "input_sha256": input_hash(img),
        "label": label,
        "abstained": False,
        "needs_review": False,
        "output": json.dumps(answer),
    }
    with q.registry.engine.begin() as conn:
        conn.execute(predictions.insert(), [row])
    return pid


def server_feedback(q: Quarantine, pid: str, label: str, source: str, actor: str | None = None) -> None:
    """POST /v1/feedback's storage path, without the HTTP layer."""
    # Each source speaks through its own token unless the test says otherwise.
    PredictionLog(q.registry).record_feedback(pid, label, source, actor or f"token-{source}")
