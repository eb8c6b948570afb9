"""Crafting feedback: server predictions logged as the server logs them."""

from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace

import numpy as np

from datamoat.feedback import Quarantine, input_hash
from datamoat.registry.answer_rows import log_rows, review_rows
from datamoat.registry.ledger import predictions, write_predictions
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


def answered(reg, x, *, review=True, alias="production"):
    """Log answers on images `x` (N, C, H, W) as a server does; with `review`, each in the queue."""
    vid = reg.snapshot()["aliases"]["production"]
    state = SimpleNamespace(alias=alias, generation=1, model=SimpleNamespace(version_id=vid))
    answers = [
        {
            "prediction_id": str(uuid.uuid4()),
            "label": None,
            "abstained": True,
            "needs_review": review,
            "reason": "below the threshold",
            "top_k": [{"label": "0", "probability": 0.2}],
        }
        for _ in x
    ]
    rows = log_rows(state, "s1", answers, [input_hash(xi) for xi in x])
    write_predictions(reg.engine, rows, review_rows(state, answers, x.astype(np.float32)) if review else [], 10_000)
    return [a["prediction_id"] for a in answers]
