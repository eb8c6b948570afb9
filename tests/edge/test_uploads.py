"""Edge devices upload their low-confidence samples: a real `EdgeRuntime`
and `SyncAgent` against the control server on loopback. The samples reach
the review queue with their exact pixels and the device's identity, survive
an outage in the device's outbox, and none becomes training data without a
person's label."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from datamoat.edge.agent import SyncAgent
from datamoat.edge.config import EdgeConfig
from datamoat.edge.control import ControlConfig, create_control_app
from datamoat.edge.runtime import EdgeRuntime
from datamoat.feedback import GateConfig, Quarantine, evaluate_gate
from datamoat.feedback.review import ReviewQueue
from datamoat.registry.ledger import predictions, review

from .helpers import Served, body, bundle

# The fixture's 2-epoch MLPs answer the 20 test digits with top probabilities of
# about 0.2 to 0.66: at 0.5 most abstain and a few do not, so both cases are covered.
THRESHOLD = 0.5


def _setup(env, **control):
    app = create_control_app(env.reg, ControlConfig(**control), env.keys["control"].private)
    fleet = app.state.edge.fleet
    tokens = {d: fleet.enroll(d, "lab", actor="ops") for d in ("a", "b")}
    b = fleet.publish(bundle(env, 0, 1, abstain_threshold=THRESHOLD), actor="ops")
    fleet.start_rollout(b["sha"], "lab", 100, actor="ops")
    return app, fleet, tokens


def _runtime(env, name: str, url: str = "", token: str = "", **kw) -> EdgeRuntime:
    # Most answers abstain on purpose here: that must not roll the bundle back.
    cfg = EdgeConfig(
        device_id=name,
        group="lab",
        state_dir=str(env.tmp / name),
        trust=(env.keys["release"].public,),
        server=url,
        token=token,
        max_abstain_rate=1.0,
        control_trust=(env.keys["control"].public,) if url else (),
        **kw,
    )
    return EdgeRuntime(cfg)


def _offline(env, name: str, **kw) -> EdgeRuntime:
    rt = _runtime(env, name, **kw)
    assert rt.install_bytes(bundle(env, 0, 1, abstain_threshold=THRESHOLD), source="usb")["status"] == "installed"
    return rt


def _low(rt: EdgeRuntime, x: np.ndarray) -> dict[str, int]:
    """Answer each image alone; {prediction id: image index} of the low-confidence ones, oldest first."""
    low = {}
    for i, xi in enumerate(x):
        p = rt.predict(body(xi[None]))[0]["predictions"][0]
        if p["needs_review"] or p["abstained"]:
            low[p["prediction_id"]] = i
    return low


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _outbox_ids(rt: EdgeRuntime) -> list[str]:
    return [item["prediction_id"] for _, item in rt.outbox.peek(1000)]


@pytest.mark.slow
def test_low_confidence_samples_reach_the_review_queue_and_wait_for_a_person(fleet_env):
    env = fleet_env
    app, fleet, tokens = _setup(env)
    with Served(app) as srv:
        rt = _runtime(env, "a", srv.url, tokens["a"])
        agent = SyncAgent(rt)
        try:
            agent.sync_once()  # installs the bundle
            out = rt.predict(body(env.x))[0]["predictions"]
            low = {p["prediction_id"]: i for i, p in enumerate(out) if p["needs_review"]}
            assert 2 <= len(low) < len(out)
            assert _outbox_ids(rt) == list(low)  # only the low-confidence ones, in answer order
            agent.sync_once()
            assert rt.outbox.stats() == {
                "uploaded": len(low),
                "dropped": 0,
                "rejected": 0,
                "pending": 0,
                "pending_bytes": 0,
            }
            agent.sync_once()  # the next heartbeat carries the counters
            row = next(s for s in fleet.status() if s["device_id"] == "a")
            assert row["uploads"]["uploaded"] == len(low) and row["uploads"]["pending"] == 0
        finally:
            agent.stop()
            rt.close()

    # Every sample is an open review item, with the device's exact pixels, answer and identity.
    with env.reg.engine.connect() as conn:
        queued = {r.prediction_id: r for r in conn.execute(sa.select(review))}
        logged = {r.id: r for r in conn.execute(sa.select(predictions))}
    assert set(queued) == set(low) == set(logged)
    for pid, i in low.items():
        q, lg, answer = queued[pid], logged[pid], out[i]
        assert np.array_equal(np.frombuffer(q.pixels, np.uint8).reshape(json.loads(q.shape)), env.x[i])
        assert q.exact and q.status == "open" and q.model_version == env.v[0] and q.alias == "edge:lab"
        assert q.label == answer["label"] and json.loads(q.top) == answer["top_k"][:3]
        assert q.reason == f"from device a: {answer['reason']}"
        assert lg.server_id == "device:a" and lg.needs_review
    assert [u["device_id"] for u in fleet.uploads()] == ["a"] * len(low)

    # Nothing is training data yet: the quarantine is empty, and the gate accepts nothing.
    quarantine = Quarantine(env.reg)
    assert quarantine.items() == []
    assert evaluate_gate(quarantine, GateConfig())["counts"] == {}

    # A person labels one, overruling the model's suggestion: that label, and only it, passes.
    env.reg.create_token("review", "ana", actor="ops")
    pid, i = next(iter(low.items()))
    suggested = out[i]["top_k"][0]["label"]
    person = next(c for c in map(str, range(10)) if c != suggested)
    ReviewQueue(env.reg).decide(pid, person, "ana")
    evaluate_gate(quarantine, GateConfig())
    accepted = quarantine.items(status="accepted")
    assert [(r["prediction_id"], r["label"], r["source"], r["actor"]) for r in accepted] == [
        (pid, person, "review", "ana")
    ]
    assert np.array_equal(quarantine.pixels([accepted[0]["id"]])[accepted[0]["id"]], env.x[i])
    assert len(quarantine.items()) == 1 and len(ReviewQueue(env.reg).items(status="open")) == len(low) - 1


@pytest.mark.slow
def test_uploads_are_authenticated_validated_and_limited(fleet_env):
    env = fleet_env
    app, fleet, tokens = _setup(env, upload_max_items=4, upload_max_bytes=4000, upload_max_per_hour=3)
    rt = _offline(env, "dev")
    _low(rt, env.x)
    items = [item for _, item in rt.outbox.peek(6)]
    assert len(items) == 6
    rt.close()
    url = "/v1/edge/devices/a/uploads"

    def post(c, token, payload, path=url):
        r = c.post(path, headers=_auth(token), content=payload if isinstance(payload, bytes) else json.dumps(payload))
        assert r.headers["content-type"] == "application/json"
        assert (r.status_code == 200) != ("error" in r.json())  # every refusal says why, in JSON
        return r

    with Served(app) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.post(url, json={"items": items[:1]}).status_code == 401
        r = post(c, tokens["b"], {"items": items[:1]})  # b's token cannot upload as a
        assert r.status_code == 403 and "belongs to device 'b'" in r.json()["error"]
        r = post(c, tokens["a"], {"items": items[:1]})
        assert r.json() == {"acked": [items[0]["prediction_id"]], "stored": 1, "duplicates": 0, "rate_limited": False}
        again = post(c, tokens["a"], {"items": items[:1]}).json()  # the ack was lost: acknowledged again
        assert again["acked"] == [items[0]["prediction_id"]] and again["duplicates"] == 1 and again["stored"] == 0
        r = post(c, tokens["b"], {"items": items[:1]}, "/v1/edge/devices/b/uploads")  # a's answer, sent by b
        assert r.status_code == 409 and r.json()["item"] == 0

        pixels = bytearray(base64.b64decode(items[1]["pixels"]))
        pixels[0] ^= 1
        bad = [
            ({"shape": [1, 4, 4]}, "does not match model"),
            ({"label": "cat"}, "not one of model"),
            ({"top_k": [{"label": "7", "probability": 1.5}]}, "must be in 0..1"),
            ({"pixels": base64.b64encode(b"\0" * 10).decode()}, "base64 of 64 uint8"),
            ({"pixels": base64.b64encode(bytes(pixels)).decode()}, "does not match the pixels"),
            ({"model_version": "0" * 12}, "not in this registry"),
            ({"needs_review": False, "abstained": False}, "only answers that need review"),
            ({"prediction_id": "x"}, "UUID"),
        ]
        for change, why in bad:
            r = post(c, tokens["a"], {"items": [items[1], {**items[2], **change}]})
            assert r.status_code == 422 and r.json()["item"] == 1 and why in r.json()["error"], (change, r.json())
        assert len(fleet.uploads()) == 1  # all or nothing: the valid item beside a bad one was not stored
        assert post(c, tokens["a"], b"{not json").status_code == 422
        assert post(c, tokens["a"], {"samples": []}).status_code == 422
        assert post(c, tokens["a"], {"items": items[1:6]}).status_code == 413  # over 4 items a request
        assert post(c, tokens["a"], {"items": items[1:2], "pad": "x" * 4000}).status_code == 413  # over 4000 bytes

        # Three an hour: two more fit, the third is left unacknowledged, then 429.
        r = post(c, tokens["a"], {"items": items[1:4]}).json()
        assert r["acked"] == [items[1]["prediction_id"], items[2]["prediction_id"]] and r["rate_limited"]
        r = post(c, tokens["a"], {"items": items[3:4]})
        assert r.status_code == 429 and "limit is 3" in r.json()["error"] and r.headers["retry-after"]
    assert [u["prediction_id"] for u in fleet.uploads()] == [items[i]["prediction_id"] for i in range(3)]


@pytest.mark.slow
def test_the_outbox_survives_an_outage_and_a_restart_and_is_flushed_after(fleet_env):
    env = fleet_env
    app, fleet, tokens = _setup(env)
    with Served(app) as srv:
        rt = _runtime(env, "a", srv.url, tokens["a"])
        agent = SyncAgent(rt)
        agent.sync_once()
    # The server is gone: the device keeps answering and keeping samples.
    low = _low(rt, env.x)
    with pytest.raises(httpx.HTTPError):
        agent.sync_once()
    assert rt.outbox.stats()["pending"] == len(low) and fleet.uploads() == []
    agent.stop()
    rt.close()
    # The device restarts, and the server comes back (on another port, same database).
    with Served(app) as srv:
        rt = _runtime(env, "a", srv.url, tokens["a"])
        agent = SyncAgent(rt)
        try:
            assert _outbox_ids(rt) == list(low)
            agent.sync_once()
            assert rt.outbox.stats()["pending"] == 0 and rt.outbox.stats()["uploaded"] == len(low)
        finally:
            agent.stop()
            rt.close()
    assert sorted(u["prediction_id"] for u in fleet.uploads("a")) == sorted(low)
    assert {r["prediction_id"] for r in ReviewQueue(env.reg).items(status="open")} == set(low)


def test_the_outbox_cap_drops_the_oldest_first_and_uploads_can_be_turned_off(fleet_env):
    env = fleet_env
    rt = _offline(env, "dev", upload_max_items=3)
    low = list(_low(rt, env.x))
    assert len(low) > 3
    assert _outbox_ids(rt) == low[-3:]
    assert rt.outbox.stats()["dropped"] == len(low) - 3
    sizes = [p.stat().st_size for p in sorted(rt.outbox.dir.glob("0*.json"))]
    rt.close()
    # A byte cap that holds only the newest two: the oldest is dropped at boot, and counted.
    rt = _runtime(env, "dev", upload_max_items=3, upload_max_bytes=sizes[-1] + sizes[-2])
    assert _outbox_ids(rt) == low[-2:] and rt.outbox.stats()["dropped"] == len(low) - 2
    rt.close()
    rt = _runtime(env, "dev", upload_low_confidence=False)
    assert _low(rt, env.x) and _outbox_ids(rt) == low[-2:]  # still low confidence, but nothing kept
    rt.close()


@pytest.mark.slow
def test_the_agent_drops_what_the_server_refuses_and_shrinks_its_batches(fleet_env):
    env = fleet_env
    app, fleet, tokens = _setup(env, upload_max_items=2)
    with Served(app) as srv:
        rt = _runtime(env, "a", srv.url, tokens["a"], upload_batch=8)
        agent = SyncAgent(rt)
        try:
            agent.sync_once()
            low = list(_low(rt, env.x[:8]))
            assert len(low) >= 3
            # A sample of a version this registry never had (e.g. a bundle from elsewhere, carried in by hand).
            _, item = rt.outbox.peek(1)[0]
            rt.outbox.add({**item, "prediction_id": "00000000-0000-4000-8000-000000000000", "model_version": "f" * 12})
            agent.sync_once()
            assert rt.outbox.stats() == {
                "uploaded": len(low),
                "dropped": 0,
                "rejected": 1,
                "pending": 0,
                "pending_bytes": 0,
            }
            assert agent.upload_batch <= 2  # the first batches were too big for this server
            refused = next(e for e in rt.state["events"] if e["kind"] == "upload_rejected")
            assert "not in this registry" in refused["reason"]
        finally:
            agent.stop()
            rt.close()
    assert sorted(u["prediction_id"] for u in fleet.uploads("a")) == sorted(low)


@pytest.mark.slow
def test_a_full_review_queue_leaves_uploads_on_the_device(fleet_env):
    env = fleet_env
    app, fleet, tokens = _setup(env, review_max_open=2)
    rt = _offline(env, "dev")
    _low(rt, env.x)
    items = [item for _, item in rt.outbox.peek(4)]
    rt.close()
    url = "/v1/edge/devices/a/uploads"
    with Served(app) as srv, httpx.Client(base_url=srv.url) as c:
        r = c.post(url, headers=_auth(tokens["a"]), json={"items": items[:3]}).json()
        assert r["acked"] == [items[0]["prediction_id"], items[1]["prediction_id"]] and r["rate_limited"]
        r = c.post(url, headers=_auth(tokens["a"]), json={"items": items[2:3]})
        assert r.status_code == 429 and "review queue is full (2 open items" in r.json()["error"]
        # A person's decision frees room, and the sample the device kept goes in.
        ReviewQueue(env.reg).decide(items[0]["prediction_id"], "3", "ops")
        r = c.post(url, headers=_auth(tokens["a"]), json={"items": items[2:3]}).json()
        assert r["acked"] == [items[2]["prediction_id"]] and not r["rate_limited"]
    assert len(ReviewQueue(env.reg).items(status="open")) == 2
