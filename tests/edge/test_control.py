"""The control server in-process (ASGI), with a real `SyncAgent` and
runtime talking to it: auth, ranges, resumable downloads, reports."""

from __future__ import annotations

import httpx
import pytest

from datamoat.edge.agent import SyncAgent
from datamoat.edge.config import EdgeConfig
from datamoat.edge.control import ControlConfig, create_control_app
from datamoat.edge.runtime import EdgeRuntime

from .helpers import Served, body, bundle


def _setup(env):
    app = create_control_app(env.reg, ControlConfig(chunk_size=4096), env.keys["control"].private)
    fleet = app.state.edge.fleet
    tokens = {d: fleet.enroll(d, "lab", actor="ops") for d in ("a", "b")}
    b1 = fleet.publish(bundle(env, 0, 1), actor="ops")
    r1 = fleet.start_rollout(b1["sha"], "lab", 100, actor="ops")
    return app, fleet, tokens, b1, r1


def _auth(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow
def test_device_auth_and_ranges(fleet_env):
    app, fleet, tokens, b1, _ = _setup(fleet_env)
    with Served(app) as srv, httpx.Client(base_url=srv.url) as c:
        _check_auth_and_ranges(fleet_env, c, fleet, tokens, b1)


def _check_auth_and_ranges(fleet_env, c, fleet, tokens, b1):
    assert c.get("/v1/edge/devices/a/assignment").status_code == 401
    assert c.get("/v1/edge/devices/b/assignment", headers=_auth(tokens["a"])).status_code == 403
    a = c.get("/v1/edge/devices/a/assignment", headers=_auth(tokens["a"])).json()
    assert a["bundle"]["sha256"] == b1["sha"] and a["policy"]["generation"] == fleet_env.reg.generation()
    data = fleet.bundle_bytes(b1["sha"])
    url = a["bundle"]["url"]
    full = c.get(url, headers=_auth(tokens["a"]))
    assert full.status_code == 200 and full.content == data
    part = c.get(url, headers={**_auth(tokens["a"]), "Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == data[1000:]
    assert part.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert c.get(url, headers={**_auth(tokens["a"]), "Range": "bytes=-10"}).content == data[-10:]
    assert c.get(url, headers={**_auth(tokens["a"]), "Range": f"bytes={len(data)}-"}).status_code == 416
    b2 = fleet.publish(bundle(fleet_env, 1, 2), actor="ops")  # published, but assigned to nobody
    assert c.get(f"/v1/edge/bundles/{b2['sha']}", headers=_auth(tokens["a"])).status_code == 403
    assert c.get("/v1/edge/fleet", headers=_auth(tokens["a"])).status_code == 401  # device tokens are not admin


@pytest.mark.slow
def test_agent_installs_resumes_reports_and_refuses_downgrade(fleet_env):
    env = fleet_env
    app, fleet, tokens, b1, r1 = _setup(env)
    with Served(app) as srv:
        cfg = EdgeConfig(
            device_id="a",
            group="lab",
            state_dir=str(env.tmp / "a"),
            trust=(env.keys["release"].public,),
            server=srv.url,
            token=tokens["a"],
            control_trust=(env.keys["control"].public,),
        )
        rt = EdgeRuntime(cfg)
        agent = SyncAgent(rt)
        try:
            _check_agent(env, fleet, rt, agent, b1)
        finally:
            agent.stop()
            rt.close()


def _check_agent(env, fleet, rt, agent, b1):
    agent.sync_once()
    assert rt.predict(body(env.x[:1]))[0]["model_version"] == env.v[0]
    # A half-downloaded bundle on disk (the server died mid-transfer): the next poll resumes it.
    b2 = fleet.publish(bundle(env, 1, 2), actor="ops")
    data = fleet.bundle_bytes(b2["sha"])
    rt.store.part(b2["sha"]).write_bytes(data[: len(data) // 2])
    fleet.start_rollout(b2["sha"], "lab", 100, actor="ops")
    agent.sync_once()
    assert rt.status()["bundle_sequence"] == 2 and rt.counters["resumed_downloads"] == 1
    resumed = next(e for e in rt.state["events"] if e["kind"] == "download_resumed")
    assert resumed["offset"] == len(data) // 2
    agent.sync_once()  # reports the install
    row = next(s for s in fleet.status() if s["device_id"] == "a")
    assert row["sequence"] == 2 and row["health"] == "ok" and "]: installed" in row["rollout"]
    # The heartbeat carries the device's own figures: the latency of its predictions, memory, model.
    perf = row["perf"]
    assert perf["latency_ms"]["n"] == 1 and perf["latency_ms"]["p50"] == perf["latency_ms"]["p99"] > 0
    assert perf["model"]["version"] == env.v[1] and perf["rss_mb"] > 0 and row["counters"]["predictions"] == 1
    # An operator pointing the group back at sequence 1 without allowing it: refused, reported.
    fleet.start_rollout(b1["sha"], "lab", 100, actor="ops")
    agent.sync_once()
    agent.sync_once()
    assert rt.status()["bundle_sequence"] == 2
    assert any(e["kind"] == "refused" and e["device_id"] == "a" for e in fleet.events())
    # Allowed explicitly: installed from the device's own last known good copy, no download.
    fleet.start_rollout(b1["sha"], "lab", 100, actor="ops", allow_downgrade=True)
    downloads = rt.counters["downloads"]
    agent.sync_once()
    assert rt.status()["bundle_sequence"] == 1 and rt.counters["downloads"] == downloads
