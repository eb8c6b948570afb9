"""The release log: answers that a canary's or a shadow's counterpart gave off the request path, each
paired with the answer that was returned for the same input. This module owns the
``serve_pairs`` table.

For a shadow, the candidate ran on a production request; for a canary, the production version ran
on a canary request. Either way one row holds both answers to one input, so `datamoat compare` can
measure agreement and, with people's labels on the returned answer (the ledger's feedback and
reviews), a paired accuracy difference.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from datamoat.registry.ledger import known_labels
from datamoat.registry.schema import begin_write, ensure_schema

__all__ = ["ROLES", "pairs", "ensure_pairs", "pair_row", "write_pairs", "paired_answers"]

ROLES = ("shadow", "canary")

meta = sa.MetaData()
pairs = sa.Table(
    "serve_pairs",
    meta,
    sa.Column("prediction_id", sa.String(36), primary_key=True),  # the returned answer's id
    sa.Column("model_version", sa.String(32), primary_key=True),  # the version that ran off the path
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("alias", sa.String(100), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # shadow | canary
    sa.Column("served_version", sa.String(32), nullable=False),
    sa.Column("served_label", sa.String(200)),  # NULL: abstained
    sa.Column("served_confidence", sa.Float, nullable=False),
    sa.Column("label", sa.String(200)),  # the off-path answer, NULL: abstained
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Index("serve_pairs_versions", "served_version", "model_version", "ts"),
)


def ensure_pairs(engine: sa.Engine) -> None:
    """Create the release log's table if missing."""
    ensure_schema(engine, "pairs", meta)


def _confidence(answer: dict[str, Any]) -> float:
    return float(answer["top_k"][0]["probability"]) if answer["top_k"] and not answer["abstained"] else 0.0


def pair_row(
    role: str,
    alias: str,
    served_version: str,
    served: dict[str, Any],
    version: str,
    label: str | None,
    confidence: float,
) -> dict[str, Any]:
    """One release-log row: the returned answer `served` and the off-path answer (`label`, None when
    it abstained, and its `confidence`) to the same input.

    >>> a = {"prediction_id": "p1", "label": "cat", "abstained": False, "top_k": [{"label": "cat", "probability": 0.9}]}
    >>> pair_row("shadow", "production", "v1", a, "v2", "dog", 0.6)["served_confidence"]
    0.9
    """
    return {
        "prediction_id": served["prediction_id"],
        "model_version": version,
        "ts": time.time(),
        "alias": alias,
        "role": role,
        "served_version": served_version,
        "served_label": served["label"],
        "served_confidence": _confidence(served),
        "label": label,
        "confidence": float(confidence),
    }


def write_pairs(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """Append release-log rows in one transaction (each answer is run off the path once, so a row's
    key, a fresh prediction id and a version, is new)."""
    if rows:
        with begin_write(engine) as conn:
            conn.execute(pairs.insert(), rows)


def paired_answers(engine: sa.Engine, a: str, b: str, alias: str | None = None) -> list[dict[str, Any]]:
    """Every logged pair of versions `a` and `b`, oldest first, oriented so `a_*` is A's answer
    whichever one was returned, with people's label on the input where one exists (`truth`,
    `truth_source`: review before feedback)."""
    ensure_pairs(engine)
    both = ((pairs.c.served_version == a) & (pairs.c.model_version == b)) | (
        (pairs.c.served_version == b) & (pairs.c.model_version == a)
    )
    q = sa.select(pairs).where(both).order_by(pairs.c.ts, pairs.c.prediction_id)
    if alias is not None:
        q = q.where(pairs.c.alias == alias)
    with engine.connect() as conn:
        rows = conn.execute(q).mappings().all()
    labels = known_labels(engine, [r["prediction_id"] for r in rows])
    out = []
    for r in rows:
        served = (r["served_label"], r["served_confidence"])
        other = (r["label"], r["confidence"])
        (la, ca), (lb, cb) = (served, other) if r["served_version"] == a else (other, served)
        truth, source = labels.get(r["prediction_id"], (None, None))
        out.append(
            {
                "prediction_id": r["prediction_id"],
                "role": r["role"],
                "served_version": r["served_version"],
                "a_label": la,
                "a_confidence": ca,
                "b_label": lb,
                "b_confidence": cb,
                "truth": truth,
                "truth_source": source,
            }
        )
    return out
