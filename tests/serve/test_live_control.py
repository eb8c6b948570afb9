"""Concurrency: dynamic batching, and the takedown guarantee under load."""

from __future__ import annotations

import asyncio
import time

import pytest

from datamoat.inference.engine import LoadedVersion

from .serve_util import auth, registry_out_of_reach


def _burst(srv, reg, artifacts, n):
    """`n` concurrent single-image predictions; returns their JSON bodies."""
    h = auth(reg.tokens["predict"])

    async def go():
        calls = [
            srv.client.post("/v1/predict", json={"inputs": artifacts.x[i % 40].tolist()}, headers=h) for i in range(n)
        ]
        return [r.json() for r in await asyncio.gather(*calls)]

    return srv.run(go)


def test_concurrent_requests_form_batches(live, reg, artifacts):
    srv = live(max_batch_size=16, max_wait_ms=50.0)
    bodies = _burst(srv, reg, artifacts, 48)
    assert [b["predictions"][0]["label_index"] for b in bodies] == [
        int(reg.ref[reg.v1][i % 40].argmax()) for i in range(48)
    ]
    calls, inputs = srv.metric("datamoat_batch_size_count"), srv.metric("datamoat_batch_size_sum")
    assert inputs == 48 and calls < 48  # some model call served several requests
    text = srv.get("/metrics").text
    assert 'datamoat_batch_size_bucket{le="1.0"}' in text
    singles = float(
        next(line for line in text.splitlines() if line.startswith('datamoat_batch_size_bucket{le="1.0"}')).split()[-1]
    )
    assert singles < calls  # at least one batch had more than one input


def test_the_inference_thread_stops_with_the_app(live, reg, artifacts):
    import threading

    def batchers():
        return [t for t in threading.enumerate() if t.name == "datamoat-batcher"]

    before = len(batchers())
    srv = live(max_batch_size=8, max_wait_ms=5.0)
    _burst(srv, reg, artifacts, 8)
    assert len(batchers()) == before + 1
    srv.__exit__(None, None, None)  # the app's shutdown
    assert len(batchers()) == before


def test_batch_size_one_turns_batching_off(live, reg, artifacts):
    srv = live(max_batch_size=1, max_wait_ms=50.0)
    _burst(srv, reg, artifacts, 12)
    assert srv.metric("datamoat_batch_size_count") == srv.metric("datamoat_batch_size_sum") == 12


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback", "503"])
def test_no_answer_from_a_taken_down_version_after_the_command_returns(live, reg, artifacts, fallback, monkeypatch):
    # Widen the race window: each model call takes 30 ms longer, so batches computed with the
    # old state are still in flight when the change lands (with tiny MLPs they never would be).
    real = LoadedVersion.probabilities

    def slow(self, x):
        time.sleep(0.03)
        return real(self, x)

    monkeypatch.setattr(LoadedVersion, "probabilities", slow)
    srv = live(max_batch_size=8, max_wait_ms=2.0)
    h = auth(reg.tokens["predict"])
    x = artifacts.x[:2].tolist()

    def operator():  # what `datamoat takedown` does: change, then wait for every server's ack
        out = reg.r.takedown(reg.v1, actor="oncall", reason="incident", fallback=reg.v2 if fallback else None)
        acks = reg.r.wait_for_acks(out["generation"], timeout=10)
        return acks, time.monotonic()

    async def scenario():
        records, stop = [], asyncio.Event()

        async def client():
            while not stop.is_set():
                r = await srv.client.post("/v1/predict", json={"inputs": x}, headers=h)
                records.append((time.monotonic(), r.status_code, r.json().get("model_version")))
                # In-process, a fast 503 never suspends; a socket would. Let the loop breathe.
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(client()) for _ in range(8)]
        while sum(1 for _, s, _ in records if s == 200) < 40:  # traffic flowing on v1
            await asyncio.sleep(0.01)
        acks, returned = await asyncio.to_thread(operator)
        n_at_return = len(records)
        while len(records) < n_at_return + 40:  # keep hammering after the command returned
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*tasks)
        return records, acks, returned

    records, acks, returned = srv.run(scenario)
    assert acks == {"acked": [srv.ctx.server_id], "missing": []}
    before = [r for r in records if r[0] <= returned]
    after = [r for r in records if r[0] > returned]
    assert any(v == reg.v1 for _, _, v in before) and len(after) >= 40
    assert [r for r in after if r[2] == reg.v1] == []  # the guarantee
    if fallback:
        assert {(s, v) for _, s, v in after} == {(200, reg.v2)}
    else:
        assert {s for _, s, _ in after} == {503}


def test_server_registers_heartbeats_and_forgets(live, reg):
    srv = live()
    server = {s["id"]: s for s in reg.r.servers()}[srv.ctx.server_id]
    assert server["live"] and server["alias"] == "production" and server["acked_generation"] == reg.r.generation()
    srv.__exit__(None, None, None)
    assert srv.ctx.server_id not in {s["id"] for s in reg.r.servers()}


def _until(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (out := fn()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return out


def test_a_server_cut_off_from_its_registry_stops_answering_until_it_reaches_it_again(live, reg, artifacts, tmp_path):
    srv = live(fence_s=0.5)
    h, x = auth(reg.tokens["predict"]), artifacts.x[:1].tolist()
    pid = srv.post("/v1/predict", json={"inputs": x}, headers=h).json()["predictions"][0]["prediction_id"]
    with registry_out_of_reach(reg.r, tmp_path / "away"):
        # It cannot learn of a takedown now, and operators stop waiting for it after LIVE_WITHIN_S.
        r = _until(lambda: (r := srv.post("/v1/predict", json={"inputs": x}, headers=h)).status_code == 503 and r)
        assert r and "has not reached its registry" in r.json()["error"]
        assert srv.get("/readyz").status_code == 503
        assert "has not reached its registry" in srv.get("/v1/model").json()["fenced"]
        # What needs the database answers 503 with a JSON body, not a 500.
        r = srv.post("/v1/feedback", json={"prediction_id": pid, "label": "3"}, headers=h)
        assert r.status_code == 503 and "registry database is unreachable" in r.json()["error"]
    assert _until(lambda: srv.post("/v1/predict", json={"inputs": x}, headers=h).status_code == 200)
    assert srv.get("/readyz").status_code == 200 and srv.get("/v1/model").json()["fenced"] is None
    assert srv.post("/v1/feedback", json={"prediction_id": pid, "label": "3"}, headers=h).status_code == 201


def test_a_fence_that_would_end_after_operators_stop_waiting_is_refused():
    from datamoat.errors import BadInput
    from datamoat.serve import ServeConfig

    with pytest.raises(BadInput, match="fence_s must be 0 .off. or in"):
        ServeConfig(fence_s=9.5)  # heartbeats 1 s apart: the command may stop waiting 9 s after the last read
    with pytest.raises(BadInput, match="fence_s must be"):
        ServeConfig(poll_interval_s=6.0)  # no read could ever come in time
    assert ServeConfig(fence_s=9.0).fence_s == 9.0 and ServeConfig(fence_s=0, poll_interval_s=6.0).fence_s == 0
