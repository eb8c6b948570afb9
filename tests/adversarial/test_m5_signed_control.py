"""M5: a device took the downgrade permission and the takedown/suppression
overlay from the sync answer as sent, so whoever could rewrite or replay
that answer (a proxy, the network without TLS, a copy of an old answer)
chose what the device ran. Answers are now signed with a control key, the
device acts on the signed text only, and it keeps the newest answer's
sequence as a floor, across restarts, so an old permission cannot be replayed."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient

from datamoat.edge.agent import SyncAgent, SyncError
from datamoat.edge.bundle import build_bundle
from datamoat.edge.config import EdgeConfig
from datamoat.edge.control import ControlConfig, create_control_app
from datamoat.edge.keys import generate_keys, load_private_key
from datamoat.edge.runtime import EdgeRuntime
from datamoat.errors import BadInput


class Attacker(TestClient):
    """The real control server, seen through someone who can rewrite or replay sync answers."""

    rewrite = None  # callable(answer) -> answer, applied to the next sync answers
    captured: list[dict]

    def post(self, url, **kw):
        r = super().post(url, **kw)
        if not url.endswith("/sync"):
            return r
        self.captured.append(r.json())
        return r if self.rewrite is None else httpx.Response(200, json=self.rewrite(r.json()))


@pytest.fixture
def setup(world, fresh, tmp_path):
    keys = {n: generate_keys(tmp_path / "keys" / f"{n}.pem") for n in ("control", "stranger")}
    app = create_control_app(fresh.reg, ControlConfig(), load_private_key(keys["control"]["private"]))
    fleet = app.state.edge.fleet
    token = fleet.enroll("cam-1", "lab", actor="ops")
    other = fleet.enroll("cam-2", "lab", actor="ops")
    shas = [fleet.publish(build_bundle(fresh.reg, fresh.vid, world.key, s), actor="ops")["sha"] for s in (1, 2, 3)]
    client = Attacker(app, base_url="http://ctl", headers={"Authorization": f"Bearer {token}"})
    client.captured = []
    cfg = EdgeConfig(
        device_id="cam-1",
        group="lab",
        state_dir=str(tmp_path / "dev"),
        trust=(str(world.pub),),
        server="http://ctl",
        token=token,
        control_trust=(keys["control"]["public"],),
    )
    return fleet, client, cfg, shas, keys, other


def _sequence(rt: EdgeRuntime) -> int:
    return rt.active.bundle.sequence


def test_m5_a_rewritten_or_replayed_answer_cannot_force_a_downgrade_or_a_policy(setup):
    fleet, client, cfg, (b1, b2, b3), _, _ = setup
    rt = EdgeRuntime(cfg)
    agent = SyncAgent(rt, client=client)
    fleet.start_rollout(b1, "lab", 100, actor="ops")
    agent.sync_once()
    agent.sync_once()  # reports the install: b1 becomes the next rollout's baseline
    fleet.start_rollout(b2, "lab", 100, actor="ops")
    agent.sync_once()
    assert _sequence(rt) == 2
    fleet.abort_rollout("lab", actor="ops", reason="bad")  # a real, signed permission back to the baseline
    permit = agent.sync_once()
    assert permit["allow_downgrade"] and _sequence(rt) == 1
    fleet.start_rollout(b3, "lab", 100, actor="ops")
    agent.sync_once()
    assert _sequence(rt) == 3
    replay = next(a for a in client.captured if json.loads(a["control"]["doc"])["allow_downgrade"])

    # 1. The old, genuinely signed permission, replayed: older than the floor.
    client.rewrite = lambda a: replay
    with pytest.raises(SyncError, match="older than"):
        agent.sync_once()
    assert _sequence(rt) == 3

    # 2. The current answer with its plain fields rewritten: the device reads the signed text only.
    running = rt.active.bundle.version_id
    takedown = {running: {"reason": "forged", "fallback": None}}

    def forge(a):
        policy = {**a["policy"], "suppressed": {"3": "abstain"}, "takedowns": takedown}
        return {**a, "allow_downgrade": True, "bundle": replay["bundle"], "policy": policy}

    client.rewrite = forge
    agent.sync_once()
    assert _sequence(rt) == 3 and rt.serving.model is not None and rt.serving.suppressed == {}

    # 3. The signed text itself edited: the signature no longer matches.
    def edit(a):
        doc = json.loads(a["control"]["doc"])
        doc.update(allow_downgrade=True, bundle=json.loads(replay["control"]["doc"])["bundle"])
        return {**a, "control": {**a["control"], "doc": json.dumps(doc)}}

    client.rewrite = edit
    with pytest.raises(SyncError, match="not signed by a control key this device trusts"):
        agent.sync_once()
    # 4. No signature at all.
    client.rewrite = lambda a: {k: v for k, v in a.items() if k != "control"}
    with pytest.raises(SyncError, match="not signed"):
        agent.sync_once()
    assert _sequence(rt) == 3 and rt.state["events"][-1]["kind"] == "control_refused"
    agent.client = httpx.Client()  # keep the TestClient open for the restart below
    rt.close()

    # 5. The floor survives a restart: the replay is still refused.
    rt = EdgeRuntime(cfg)
    agent = SyncAgent(rt, client=client)
    client.rewrite = lambda a: replay
    with pytest.raises(SyncError, match="older than"):
        agent.sync_once()
    assert _sequence(rt) == 3
    client.rewrite = None
    assert not agent.sync_once()["allow_downgrade"]  # the honest answer still works
    rt.close()


def test_m5_answers_signed_for_another_device_or_by_another_key_are_refused(setup, tmp_path):
    fleet, client, cfg, (b1, *_), keys, other = setup
    fleet.start_rollout(b1, "lab", 100, actor="ops")
    rt = EdgeRuntime(cfg)
    agent = SyncAgent(rt, client=client)
    theirs = client.post("/v1/edge/devices/cam-2/sync", json={}, headers={"Authorization": f"Bearer {other}"}).json()
    client.rewrite = lambda a: theirs
    with pytest.raises(SyncError, match="signed for device 'cam-2'"):
        agent.sync_once()
    assert rt.active is None
    stranger = load_private_key(keys["stranger"]["private"])
    fleet.control_key = stranger  # a control server (or an impostor) with a key the device does not trust
    client.rewrite = None
    with pytest.raises(SyncError, match="not signed by a control key this device trusts"):
        agent.sync_once()
    assert rt.active is None
    rt.close()


def test_m5_a_device_that_polls_needs_a_control_key_to_trust(world, tmp_path):
    base = {"device_id": "d", "state_dir": str(tmp_path / "d"), "trust": (str(world.pub),), "token": "t"}
    with pytest.raises(BadInput, match="--control-trust"):
        EdgeConfig(server="https://ctl", **base)
    assert EdgeConfig(server="https://ctl", insecure_control=True, **base).insecure_control
