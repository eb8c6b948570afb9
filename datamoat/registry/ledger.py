"""The ledger: every prediction, the feedback on it, and the review queue,
in the registry database. This module owns those tables: every other module
reads and writes them through its functions.

- ``serve_predictions``: each answer (input hash, output, model version,
  alias, server or device, time), for audit and for the data flywheel.
- ``serve_feedback``: the correct label a client sent for a logged prediction.
- ``serve_review``: answers that need a person (below the policy threshold,
  or abstained), with their pixels, until someone decides their label.

``input_sha256`` hashes the raw pixels the model saw, float32 (C, H, W) in
0..255 after decoding and resizing, so a PNG and the same pixels sent as
JSON hash alike; the server always computes it from pixels it holds. The
rows themselves are built in `datamoat.registry.answer_rows`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import sqlalchemy as sa

from datamoat.errors import Conflict, NotFound, TooMany, Unprocessable
from datamoat.registry.answer_rows import AUDIT_REASON, input_hash
from datamoat.registry.core import Registry
from datamoat.registry.schema import begin_write, ensure_schema

__all__ = [
    "REVIEW_SOURCE",
    "audit_decisions",
    "predictions",
    "feedback",
    "review",
    "ensure_ledger",
    "open_reviews",
    "write_predictions",
    "record_feedback",
    "known_labels",
    "logged_inputs",
    "pixel_coverage",
    "POOL_PREFIX",
    "queue_pool_items",
    "pool_reviews",
]

REVIEW_SOURCE = "review"  # the quarantine source of /review decisions; trust comes from the token's role
POOL_PREFIX = "pool:"  # prediction ids of unlabeled pool items: "pool:<dataset id>:<row>", written only here

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


def ensure_ledger(engine: sa.Engine) -> None:
    """Create the ledger's tables if missing (every reader and writer calls it first)."""
    ensure_schema(engine, "ledger", meta)


def write_predictions(
    engine: sa.Engine, rows: list[dict[str, Any]], queued: list[dict[str, Any]], max_open: int, may_exist: bool = False
) -> int:
    """Write log rows and as many review rows as `max_open` allows; returns how many were not queued.

    `may_exist`: a retry of rows whose earlier commit failed without saying whether it happened (the
    connection dropped at COMMIT). Rows already there are skipped, with their review items, instead of
    failing the whole batch on their ids."""
    with begin_write(engine) as conn:  # one transaction: a queued item's prediction is logged
        if may_exist:
            ids, have = [r["id"] for r in rows], set()
            for i in range(0, len(ids), 500):  # IN lists within every database's parameter limit
                have.update(
                    conn.execute(sa.select(predictions.c.id).where(predictions.c.id.in_(ids[i : i + 500]))).scalars()
                )
            rows = [r for r in rows if r["id"] not in have]
            queued = [q for q in queued if q["prediction_id"] not in have]
        if rows:
            conn.execute(predictions.insert(), rows)
        if not queued:
            return 0
        room = max(0, max_open - open_reviews(conn))
        if room:
            conn.execute(review.insert(), queued[:room])
        return len(queued) - min(room, len(queued))


def record_feedback(
    registry: Registry,
    prediction_id: str,
    label: str,
    source: str,
    actor: str,
    max_per_hour: int = 1000,
    logging_on: bool = True,
) -> dict[str, Any]:
    """Store the correct label for a logged prediction (blocking: call in a thread).

    One label per token per prediction, and at most `max_per_hour` from one
    token across every server (L2): the client-chosen `source` describes the
    label, it does not make room for more of them.
    """
    if prediction_id.startswith(POOL_PREFIX):  # its id is guessable: only a /review decision labels it
        raise Unprocessable(f"{prediction_id} is an unlabeled pool item, not an answer: it is labelled on /review")
    with registry.engine.connect() as conn:
        row = conn.execute(sa.select(predictions.c.model_version).where(predictions.c.id == prediction_id)).first()
    if row is None:
        why = "" if logging_on else " (this server does not log predictions)"
        raise NotFound(
            f"unknown prediction id {prediction_id!r}{why}: send the prediction_id a /v1/predict answer gave"
        )
    classes = [str(c) for c in registry.version(row.model_version)["info"]["classes"]]
    if label not in classes:
        raise Unprocessable(f"label {label!r} is not one of the model's classes: choose one of {', '.join(classes)}")
    entry = {
        "prediction_id": prediction_id,
        "source": source,
        "label": label,
        "model_version": row.model_version,
        "actor": actor,
        "ts": time.time(),
    }
    try:
        with registry.transaction() as conn:  # serialised: the count and the check hold until commit
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


def known_labels(engine: sa.Engine, ids: list[str]) -> dict[str, tuple[str, str]]:
    """People's label for each of the predictions `ids` that has one: {id: (label, source)}, a
    review decision before feedback (source "review"), feedback by its source otherwise."""
    ensure_ledger(engine)
    out: dict[str, tuple[str, str]] = {}
    with engine.connect() as conn:
        for i in range(0, len(ids), 500):  # bounded IN lists: SQLite caps bound parameters
            chunk = ids[i : i + 500]
            q = sa.select(feedback.c.prediction_id, feedback.c.label, feedback.c.source)
            for r in conn.execute(q.where(feedback.c.prediction_id.in_(chunk)).order_by(feedback.c.ts)):
                out.setdefault(r.prediction_id, (r.label, r.source))
            decided = (review.c.status == "decided") & review.c.prediction_id.in_(chunk)
            for pid, label in conn.execute(sa.select(review.c.prediction_id, review.c.decided_label).where(decided)):
                out[pid] = (label, REVIEW_SOURCE)
    return out


# -- the review queue ---------------------------------------------------------------------
def oldest_open_review(engine: sa.Engine) -> tuple[int, Any]:
    """(open items, the oldest open row or None); the queue is ordered by the server's receive time."""
    with engine.connect() as conn:
        n = open_reviews(conn)
        row = conn.execute(
            sa.select(review).where(review.c.status == "open").order_by(review.c.ts, review.c.prediction_id).limit(1)
        ).first()
    return n, row


def review_items(engine: sa.Engine, status: str | None = None) -> list[dict[str, Any]]:
    """Queue rows without pixels, oldest first."""
    q = sa.select(*[c for c in review.c if c.name != "pixels"]).order_by(review.c.ts, review.c.prediction_id)
    with engine.connect() as conn:
        rows = conn.execute(q if status is None else q.where(review.c.status == status)).mappings().all()
    return [{**r, "top": json.loads(r["top"])} for r in rows]


def review_item(engine: sa.Engine, prediction_id: str) -> Any:
    """One review row (with pixels), or None."""
    with engine.connect() as conn:
        return conn.execute(sa.select(review).where(review.c.prediction_id == prediction_id)).first()


def review_pixels(row: Any) -> np.ndarray:
    """A review row's pixels, uint8 (C, H, W)."""
    return np.frombuffer(row.pixels, np.uint8).reshape(json.loads(row.shape))


def claim_review(engine: sa.Engine, prediction_id: str, label: str, actor: str) -> bool:
    """Mark an open item decided; False when someone else decided it first."""
    mark = review.update().where((review.c.prediction_id == prediction_id) & (review.c.status == "open"))
    with begin_write(engine) as conn:
        done = dict(status="decided", decided_label=label, decided_by=actor, decided_ts=time.time())
        return conn.execute(mark.values(**done)).rowcount > 0


def release_review(engine: sa.Engine, prediction_id: str, feedback_item: int | None = None) -> None:
    """Finish a claim: link the quarantine item it became, or (None) reopen the item."""
    mark = review.update().where(review.c.prediction_id == prediction_id)
    with begin_write(engine) as conn:
        if feedback_item is None:
            conn.execute(mark.values(status="open", decided_label=None, decided_by=None, decided_ts=None))
        else:
            conn.execute(mark.values(feedback_item=feedback_item))


def audit_decisions(engine: sa.Engine, version_id: str) -> list[bool]:
    """Per decided audit item of a version, in decision order, whether the automated answer was right."""
    ensure_ledger(engine)  # a registry no server has used yet has no queue: then there are none
    q = (
        sa.select(review.c.label, review.c.decided_label)
        .where((review.c.model_version == version_id) & (review.c.reason == AUDIT_REASON))
        .where(review.c.status == "decided")
        .order_by(review.c.decided_ts, review.c.prediction_id)
    )
    with engine.connect() as conn:
        return [r.label == r.decided_label for r in conn.execute(q)]


# -- what the feedback quarantine and the fleet read and write -----------------------------------
def logged_prediction(engine: sa.Engine, prediction_id: str) -> Any:
    """The prediction-log row of `prediction_id`, or None."""
    with engine.connect() as conn:
        return conn.execute(sa.select(predictions).where(predictions.c.id == prediction_id)).first()


def feedback_rows(conn: sa.Connection) -> list[Any]:
    """Every ``/v1/feedback`` row with its prediction's input hash, oldest first."""
    j = feedback.join(predictions, feedback.c.prediction_id == predictions.c.id)
    return list(conn.execute(sa.select(feedback, predictions.c.input_sha256).select_from(j).order_by(feedback.c.ts)))


def logged_ids(conn: sa.Connection, ids: list[str]) -> set[str]:
    """Which of `ids` are in the prediction log."""
    return set(conn.execute(sa.select(predictions.c.id).where(predictions.c.id.in_(ids))).scalars())


def add_logged_review(conn: sa.Connection, log_row: dict[str, Any], review_row: dict[str, Any]) -> None:
    """One prediction and its review item, in the caller's transaction (a device's upload)."""
    conn.execute(predictions.insert().values(log_row))
    conn.execute(review.insert().values(review_row))


# -- what the unlabeled pools read (`datamoat.feedback.intake`) ----------------------------------
def logged_inputs(
    engine: sa.Engine, *, status: str | None = None, alias: str | None = None, ids: list[str] | None = None
) -> Iterator[list[Any]]:
    """Review rows, 256 a read, oldest first (`review_pixels` reads each image): the only answers whose
    pixels the log keeps (no pool item: `queue_pool_items`'s are in a pool already). `status` ("open",
    "decided"), `alias` and `ids` (prediction ids, 500 a read) narrow them."""
    ensure_ledger(engine)
    keep = [~review.c.prediction_id.like(f"{POOL_PREFIX}%")] + ([review.c.status == status] if status else [])
    q = sa.select(review).where(*keep, *([review.c.alias == alias] if alias else [])).order_by(review.c.ts)
    q, some = q.order_by(review.c.prediction_id), list(ids or ())
    by_id = (q.where(review.c.prediction_id.in_(some[i : i + 500])) for i in range(0, len(some), 500))
    for lot in by_id if ids is not None else (q.offset(i).limit(256) for i in itertools.count(0, 256)):
        with engine.connect() as conn:  # a read at a time: one lot of pixels is held, however long the queue
            rows = list(conn.execute(lot))
        if rows:
            yield rows
        elif ids is None:  # past the last page
            return


def pixel_coverage(engine: sa.Engine) -> dict[str, int]:
    """How many answers the log holds, and of how many it keeps the pixels (pool items are no answers)."""
    ensure_ledger(engine)
    count, cols = sa.select(sa.func.count()), (predictions.c.id, review.c.prediction_id)
    with engine.connect() as conn:
        n = [conn.execute(count.where(~c.like(f"{POOL_PREFIX}%"))).scalar_one() for c in cols]
    return {"answers": int(n[0]), "with_pixels": int(n[1])}


# -- unlabeled pool items (`datamoat.feedback.suggest`) ------------------------------------------
def queue_pool_items(engine: sa.Engine, items: list[dict[str, Any]], alias: str) -> list[str]:
    """Put pool items on the review queue, each with a log row (its input hash, which a decision is
    checked against); returns the ids queued. Each item: `dataset_id`, `row`, `model_version`,
    `pixels` uint8 (C, H, W), `top` [{"label", "probability"}], `reason`. An item already logged
    (open, or decided) is skipped: an item is queued once."""
    ensure_ledger(engine)
    now = time.time()
    queued: list[str] = []
    with begin_write(engine) as conn:
        ids = [f"{POOL_PREFIX}{it['dataset_id']}:{int(it['row'])}" for it in items]
        have = set()
        for i in range(0, len(ids), 500):  # bounded IN lists: SQLite caps bound parameters
            have |= logged_ids(conn, ids[i : i + 500])
        for pid, it in zip(ids, items):
            if pid in have:
                continue
            u = np.ascontiguousarray(it["pixels"], np.uint8)  # (C, H, W)
            top = it["top"][:3]
            label = top[0]["label"] if top else None
            answer = {"prediction_id": pid, "label": label, "top_k": top, "reason": it["reason"], "pool": True}
            ts = now + len(queued) * 1e-5  # the queue is ordered by time: the best pick is shown first
            log = dict(id=pid, ts=ts, server_id="pool", alias=alias, model_version=it["model_version"])
            log.update(generation=0, input_sha256=input_hash(u), label=label, abstained=label is None)
            log.update(needs_review=True, output=json.dumps(answer, sort_keys=True))
            rev = dict(prediction_id=pid, ts=ts, alias=alias, model_version=it["model_version"], label=label)
            rev.update(reason=it["reason"], top=json.dumps(top), pixels=u.tobytes(), shape=json.dumps(list(u.shape)))
            add_logged_review(conn, log, {**rev, "exact": True, "status": "open"})
            have.add(pid)
            queued.append(pid)
    return queued


def pool_reviews(engine: sa.Engine, pixels: bool = False) -> list[Any]:
    """Every pool item's review row (open or decided) with its logged input hash, oldest first;
    `pixels` adds the stored image (`review_pixels` reads it)."""
    ensure_ledger(engine)
    cols = [c for c in review.c if pixels or c.name not in ("pixels", "shape")]
    j = review.join(predictions, review.c.prediction_id == predictions.c.id)
    q = (
        sa.select(*cols, predictions.c.input_sha256)
        .select_from(j)
        .where(review.c.prediction_id.like(f"{POOL_PREFIX}%"))
    )
    with engine.connect() as conn:
        return list(conn.execute(q.order_by(review.c.ts, review.c.prediction_id)))
