"""The ledger's writes on SQLite and, where DATAMOAT_TEST_PG_URL is set (CI sets it), PostgreSQL."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import sqlalchemy as sa
from dmtest import SERVED_STATE, served_answers

from datamoat.registry.answer_rows import log_rows, review_rows
from datamoat.registry.core import Registry
from datamoat.registry.ledger import ensure_ledger, predictions, review, write_predictions


def test_a_retry_that_may_repeat_stored_rows_writes_the_rest_once_past_one_id_list(url):
    # 1,203 rows, 700 of them already stored. Stored ids are looked up in lists of 500: here one list
    # all stored, one partly, one all new.
    reg = Registry(url)
    ensure_ledger(reg.engine)
    ids = [str(uuid.uuid4()) for _ in range(1203)]
    answers = served_answers(ids)
    rows = log_rows(SERVED_STATE, "srv", answers, ["0" * 64] * len(ids))
    queued = review_rows(SERVED_STATE, answers, np.zeros((len(ids), 1, 2, 2), np.float32))
    write_predictions(reg.engine, rows[:700], queued[:3], max_open=10_000)
    assert write_predictions(reg.engine, rows, queued[:3] + queued[700:702], max_open=10_000, may_exist=True) == 0
    with reg.engine.connect() as conn:
        logged = list(conn.execute(sa.select(predictions.c.id)).scalars())
        reviewed = list(conn.execute(sa.select(review.c.prediction_id)).scalars())
    assert sorted(logged) == sorted(ids)
    assert sorted(reviewed) == sorted(ids[:3] + ids[700:702])  # each once
    # Without may_exist a repeated id is refused, and nothing of that batch is written.
    fresh = log_rows(SERVED_STATE, "srv", served_answers(["new"]), ["0" * 64])
    with pytest.raises(sa.exc.IntegrityError):
        write_predictions(reg.engine, fresh + rows[:1], [], max_open=10_000)
    with reg.engine.connect() as conn:
        assert conn.execute(sa.select(predictions.c.id).where(predictions.c.id == "new")).first() is None
