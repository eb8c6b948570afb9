"""M4: one request could stall a server and fill the review queue (60,000
inputs in one .npy: 5.75 s of work, 60,000 log rows, the global review queue
full), the batcher's queue was unbounded, and nothing limited a token.
L2: feedback had no quota per token, and a client-chosen `source` let one
token store any number of labels for one prediction."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import sqlalchemy as sa
from serve.serve_util import Live, auth

from datamoat.errors import Overloaded
from datamoat.registry.core import Registry
from datamoat.registry.ledger import open_reviews, predictions
from datamoat.serve import ServeConfig, create_app
from datamoat.serve.batcher import Batcher


@pytest.fixture
def served(fresh):
    reg, vid = fresh.reg, fresh.vid
    tokens = {name: reg.create_token("predict", name, actor="t") for name in ("app", "other")}
    return reg, vid, tokens


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def rows(reg: Registry) -> int:
    with reg.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one()


def test_m4_a_request_with_too_many_inputs_is_refused_before_inference(world, served):
    reg, _, tokens = served
    x = np.zeros((60_000, 1, 8, 8), np.uint8)  # 3.8 MB: under the raised body limit, over the inputs cap
    cfg = ServeConfig(poll_interval_s=0.02, ort_threads=1, max_upload_bytes=8 << 20)
    with Live(create_app(reg, cfg)) as srv:
        r = srv.post(
            "/v1/predict", content=npy(x), headers={**auth(tokens["app"]), "Content-Type": "application/x-npy"}
        )
        assert r.status_code == 413 and "split the batch" in r.json()["error"]
        srv.run(srv.ctx.plog.flush)
    assert rows(reg) == 0


def test_m4_the_model_queue_is_bounded():
    batcher = Batcher(lambda: None, max_batch_size=4, max_wait_ms=1, max_queued=8)  # its thread never runs

    async def flood() -> None:
        waiting = asyncio.ensure_future(batcher.submit(lambda shape: None, np.zeros((8, 1, 8, 8))))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="retry in a moment"):
            await batcher.submit(lambda shape: None, np.zeros((1, 1, 8, 8)))
        waiting.cancel()

    asyncio.run(flood())
    assert batcher.queued == 0  # a cancelled request gives its room back


def test_m4_one_token_over_its_predict_quota_is_refused_and_others_are_not(world, served):
    reg, _, tokens = served
    cfg = ServeConfig(poll_interval_s=0.02, ort_threads=1, predict_rate_per_token=0.5)  # burst 5
    body = {"inputs": world.x[:1].tolist()}
    with Live(create_app(reg, cfg)) as srv:
        codes = [srv.post("/v1/predict", json=body, headers=auth(tokens["app"])).status_code for _ in range(7)]
        assert codes[:5] == [200] * 5 and codes[-1] == 429
        assert srv.post("/v1/predict", json=body, headers=auth(tokens["other"])).status_code == 200


def test_m4_one_token_cannot_fill_the_review_queue(world, served):
    reg, vid, tokens = served
    reg.set_policy(vid, {"threshold": 0.999999}, actor="t")  # every answer needs review
    cfg = ServeConfig(poll_interval_s=0.02, ort_threads=1, review_rate_per_token=0.01, open_paths=("/metrics",))
    with Live(create_app(reg, cfg)) as srv:
        for token, n in (("app", 150), ("other", 40)):
            r = srv.post("/v1/predict", json={"inputs": world.x[:n].tolist()}, headers=auth(tokens[token]))
            assert r.status_code == 200 and all(p["needs_review"] for p in r.json()["predictions"])
        srv.run(srv.ctx.plog.flush)
        assert srv.metric("datamoat_review_skipped_total") == 150
    with reg.engine.connect() as conn:
        assert open_reviews(conn) == 40  # the other token's items still got in


def test_l2_feedback_is_one_label_per_token_per_prediction_and_capped_per_hour(world, served):
    reg, _, tokens = served
    cfg = ServeConfig(poll_interval_s=0.02, ort_threads=1, feedback_max_per_hour=3)
    h = auth(tokens["app"])
    with Live(create_app(reg, cfg)) as srv:
        preds = srv.post("/v1/predict", json={"inputs": world.x[:5].tolist()}, headers=h).json()["predictions"]
        pids = [p["prediction_id"] for p in preds]
        assert srv.post("/v1/feedback", json={"prediction_id": pids[0], "label": "1"}, headers=h).status_code == 201
        for source in ("alice", "bob", "carol"):  # new source names buy no new rows
            r = srv.post("/v1/feedback", json={"prediction_id": pids[0], "label": "2", "source": source}, headers=h)
            assert r.status_code == 409
        for pid in pids[1:3]:
            assert srv.post("/v1/feedback", json={"prediction_id": pid, "label": "1"}, headers=h).status_code == 201
        r = srv.post("/v1/feedback", json={"prediction_id": pids[3], "label": "1"}, headers=h)
        assert r.status_code == 429 and "in the last hour" in r.json()["error"]
        other = srv.post("/v1/feedback", json={"prediction_id": pids[3], "label": "1"}, headers=auth(tokens["other"]))
        assert other.status_code == 201
