"""The prediction log's writer through a database outage: rows are held, within a bound."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from dmtest import SERVED_STATE, served_answers

from datamoat.registry.answer_rows import log_rows, review_rows
from datamoat.registry.core import Registry
from datamoat.registry.ledger import predictions, review, write_predictions
from datamoat.serve.logstore import PredictionLog

from .serve_util import registry_out_of_reach

# The server's own row builders, for answers that need review or not.


def _rows(ids: range) -> list[dict]:
    return log_rows(
        SERVED_STATE, "srv", served_answers([f"p{i}" for i in ids], needs_review=False), ["0" * 64] * len(ids)
    )


def _review(ids: range) -> list[dict]:
    return review_rows(SERVED_STATE, served_answers([f"p{i}" for i in ids]), np.zeros((len(ids), 1, 2, 2), np.float32))


def test_rows_of_an_outage_are_written_after_it_and_only_the_oldest_past_the_bound_are_lost(tmp_path: Path):
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    plog = PredictionLog(reg, max_pending=4)  # holds at most 8 x 4 rows through an outage
    plog.add(_rows(range(3)))
    with registry_out_of_reach(reg, tmp_path / "away"):
        with pytest.raises(sa.exc.OperationalError):
            asyncio.run(plog.flush())
        plog.add(_rows(range(3, 40)))
        with pytest.raises(sa.exc.OperationalError):
            asyncio.run(plog.flush())
    asyncio.run(plog.flush())
    with reg.engine.connect() as conn:
        written = set(conn.execute(sa.select(predictions.c.id)).scalars())
    assert written == {f"p{i}" for i in range(8, 40)}


def test_a_retry_after_a_commit_that_went_through_unseen_writes_the_rest_once(tmp_path: Path):
    # The connection drops at COMMIT after the database wrote the batch: the writer sees an error and
    # holds rows that are already stored. Its retry must not fail on their ids, and lose the newer rows.
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    plog = PredictionLog(reg)
    write_predictions(reg.engine, _rows(range(3)), _review(range(2)), max_open=100)  # what the commit stored
    plog.add(_rows(range(3)), _review(range(2)))
    with registry_out_of_reach(reg, tmp_path / "away"), pytest.raises(sa.exc.OperationalError):
        asyncio.run(plog.flush())  # the error the writer saw
    plog.add(_rows(range(3, 6)), _review(range(4, 6)))
    asyncio.run(plog.flush())
    with reg.engine.connect() as conn:
        logged = list(conn.execute(sa.select(predictions.c.id)).scalars())
        queued = list(conn.execute(sa.select(review.c.prediction_id)).scalars())
    assert sorted(logged) == [f"p{i}" for i in range(6)]
    assert sorted(queued) == ["p0", "p1", "p4", "p5"]
    # Once written, the next batch is not checked again, and a repeated id is still refused.
    plog.add(_rows(range(5, 7)))
    with pytest.raises(sa.exc.IntegrityError):
        asyncio.run(plog.flush())
