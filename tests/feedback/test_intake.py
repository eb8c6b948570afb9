"""Pools from the prediction log: the review queue's pixels (the only ones the log keeps) become
unlabeled items, de-duplicated, with their prediction ids in the lineage, row for row."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamoat.data.dataset import POOL
from datamoat.data.intake import pool_target
from datamoat.data.pool import pool_rows
from datamoat.errors import BadInput
from datamoat.feedback.intake import LogPoolConfig, pool_from_log
from datamoat.feedback.review import ReviewQueue

from .helpers_fb import answered


def test_the_logs_pixels_join_the_pool_with_their_prediction_ids(q, ws, digits):
    reg = q.registry
    x = 255 - digits.subset("test")[0]  # images the dataset does not hold yet
    with pytest.raises(BadInput, match="keeps the pixels of review-queue items only"):
        pool_from_log(ws, reg, into=digits)  # nothing logged yet
    pids = answered(reg, x[:4])
    twin = answered(reg, x[:1])[0]  # the same image answered twice
    answered(reg, x[4:10], review=False)  # confident answers: logged by their hash alone
    odd = answered(reg, np.zeros((1, 1, 4, 4), np.uint8))[0]  # another model's input shape
    ReviewQueue(reg).decide(pids[3], "7", "ana")  # a person's label: it reaches data through the gate
    grown, report = pool_from_log(ws, reg, into=digits)
    assert report["added"] == 3 and report["duplicates"] == 1 and report["other_shape"] == 1 and report["read"] == 5
    assert report["log"] == {"answers": 12, "with_pixels": 6}
    src = ws.resolve("datasets", grown.id)["source"]["from"]
    assert src["kind"] == "log" and src["first_row"] == len(digits.y) and src["config"]["status"] == "open"
    assert set(src["prediction_ids"]) <= set(pids[:3]) | {twin} and odd not in src["prediction_ids"]
    by_id = dict(zip(pids + [twin], [*x[:4], x[0]]))
    for row, pid in zip(pool_rows(grown), src["prediction_ids"]):  # row i is the i-th prediction id
        assert np.array_equal(grown.x[row], by_id[pid])
    assert json.loads(ws.get_bytes(src["prediction_ids_sha256"])) == src["prediction_ids"]
    with pytest.raises(BadInput, match="already in"):
        pool_from_log(ws, reg, into=grown)
    decided, out = pool_from_log(ws, reg, into=digits, config=LogPoolConfig(status="decided"))
    assert out["added"] == 1 and np.array_equal(decided.x[-1], x[3])
    alone, out = pool_from_log(ws, reg, like=pool_target(ws, digits.id), config=LogPoolConfig(status="all"))
    assert (alone.split == POOL).all() and out["added"] == 4 and alone.classes == digits.classes
    with pytest.raises(BadInput, match="no open logged answers"):
        pool_from_log(ws, reg, into=digits, config=LogPoolConfig(alias="edge:lab"))
    with pytest.raises(BadInput, match="unknown status"):
        LogPoolConfig(status="closed")


def test_pages_of_the_log_are_read_oldest_first(q, ws, digits):
    from datamoat.registry.ledger import logged_inputs

    reg = q.registry
    first = [answered(reg, xi[None])[0] for xi in digits.x[:3]]  # one request each: increasing receive times
    many = answered(reg, digits.x[3:303])  # one request: one receive time, then by prediction id
    lots = list(logged_inputs(reg.engine))
    assert [len(lot) for lot in lots] == [256, 47]
    assert [r.prediction_id for lot in lots for r in lot] == first + sorted(many)
    assert [r.prediction_id for lot in logged_inputs(reg.engine, ids=first[1:]) for r in lot] == first[1:]
    assert list(logged_inputs(reg.engine, ids=[])) == [] and list(logged_inputs(reg.engine, status="decided")) == []


def test_pool_items_on_the_review_queue_are_no_logged_answers(q, ws, digits):
    from datamoat.registry.ledger import queue_pool_items

    reg = q.registry
    vid = reg.snapshot()["aliases"]["production"]
    x = 255 - digits.x[:2]
    item = {"dataset_id": digits.id, "row": 0, "model_version": vid, "pixels": x[0], "top": [], "reason": "margin"}
    assert queue_pool_items(reg.engine, [item], "production")  # suggest's: already in a pool
    answered(reg, x[1:])
    grown, report = pool_from_log(ws, reg, into=digits)
    assert report["added"] == report["read"] == 1 and report["log"] == {"answers": 1, "with_pixels": 1}
    assert np.array_equal(grown.x[-1], x[1])
