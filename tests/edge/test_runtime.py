"""The runtime in-process: install, refuse, self-test, health rollback,
policy overlay, and recovery from crashes and disk damage."""

from __future__ import annotations

import json

import pytest

from datamoat.edge.config import EdgeConfig
from datamoat.edge.runtime import EdgeRuntime
from datamoat.errors import Unavailable

from .helpers import bad_selftest_bundle, body, bundle, flip_model_byte


def _rt(env, name="dev", **kw) -> EdgeRuntime:
    cfg = EdgeConfig(device_id=name, state_dir=str(env.tmp / name), trust=(env.keys["release"].public,), **kw)
    return EdgeRuntime(cfg)


def _serves(rt, env) -> str:
    return rt.predict(body(env.x[:2]))[0]["model_version"]


def test_install_refuse_downgrade_and_keep_serving(fleet_env):
    env = fleet_env
    rt = _rt(env)
    with pytest.raises(Unavailable, match="no bundle installed"):
        _serves(rt, env)
    assert rt.install_bytes(bundle(env, 0, 1), source="usb")["status"] == "installed"
    assert rt.install_bytes(bundle(env, 1, 2), source="usb")["status"] == "installed"
    assert _serves(rt, env) == env.v[1] and rt.status()["lkg"]["sequence"] == 1
    old = rt.install_bytes(bundle(env, 2, 1), source="usb")  # a validly signed replay of an older sequence
    assert old["status"] == "refused" and "downgrade refused" in old["reason"]
    for bad, why in (
        (bundle(env, 2, 3, key="rogue"), "not signed by a trusted key"),
        (flip_model_byte(bundle(env, 2, 3)), "tampered"),
        (bundle(env, 2, 3)[:-500], "truncated"),
    ):
        out = rt.install_bytes(bad, source="usb")
        assert out["status"] == "rejected" and why in out["reason"]
        assert _serves(rt, env) == env.v[1]  # the old model never stopped
    assert rt.install_bytes(bundle(env, 0, 1), source="usb", allow_downgrade=True)["status"] == "installed"
    assert _serves(rt, env) == env.v[0]
    kinds = [e["kind"] for e in rt.state["events"]]
    assert kinds == ["installed", "installed", "refused", "rejected", "rejected", "rejected", "installed"]
    rt.close()


def test_self_test_failure_rolls_back_and_a_crash_mid_install_is_undone(fleet_env):
    env = fleet_env
    rt = _rt(env)
    rt.install_bytes(bundle(env, 0, 1), source="usb")
    out = rt.install_bytes(bad_selftest_bundle(env, 1, 2, other=0), source="usb")
    assert out["status"] == "rolled_back" and out["reason"].startswith("self-test failed")
    assert _serves(rt, env) == env.v[0] and not rt.store.path("staged").exists()
    # Crash while self-testing: the bundle is staged and pending, nothing committed.
    data = bundle(env, 1, 3)
    rt.store.stage(data)
    rt.state["pending"] = __import__("hashlib").sha256(data).hexdigest()
    rt.store.save_state(rt.state)
    rt.close()
    rt = _rt(env)
    assert _serves(rt, env) == env.v[0] and rt.state["events"][-1]["kind"] == "rolled_back"
    assert rt.state["pending"] is None and not rt.store.path("staged").exists()
    rt.close()


def test_post_swap_abstain_rate_rolls_back(fleet_env):
    env = fleet_env
    rt = _rt(env, health_window=8, max_abstain_rate=0.5)
    rt.install_bytes(bundle(env, 0, 1), source="usb")
    rt.install_bytes(bundle(env, 1, 2, abstain_threshold=0.999), source="usb")  # abstains on nearly everything
    verdicts = [rt.predict(body(env.x[i : i + 1]))[1] for i in range(8)]
    assert verdicts[:7] == [None] * 7 and "abstain rate" in verdicts[7]
    rt.rollback(verdicts[7])
    assert _serves(rt, env) == env.v[0]
    assert rt.state["events"][-1]["kind"] == "rolled_back" and rt.status()["lkg"] is None
    # Over the air it is never fetched again; a hand install is the operator's explicit call.
    assert rt.state["rejected"][rt.state["events"][-1]["sha256"]].startswith("abstain rate")
    again = rt.install_bytes(bundle(env, 1, 2, abstain_threshold=0.999), source="usb")
    assert again["status"] == "installed"
    rt.close()


def test_policy_overlay_suppresses_takes_down_and_survives_restart(fleet_env):
    env = fleet_env
    rt = _rt(env)
    rt.install_bytes(bundle(env, 0, 1), source="usb")
    rt.install_bytes(bundle(env, 1, 2), source="usb")
    top = rt.predict(body(env.x[:1]))[0]["predictions"][0]["label"]
    rt.apply_policy({"generation": 50, "suppressed": {top: "abstain"}, "takedowns": {}})
    p = rt.predict(body(env.x[:1]))[0]
    assert p["predictions"][0]["abstained"] and p["generation"] == 50
    # Takedown of the active version with the lkg as fallback: served from the lkg.
    rt.apply_policy(
        {"generation": 51, "suppressed": {}, "takedowns": {env.v[1]: {"fallback": env.v[0], "reason": "x"}}}
    )
    assert _serves(rt, env) == env.v[0] and rt.status()["health"] == "fallback"
    # Without a fallback: 503, and still after a restart with no server (offline boot).
    rt.apply_policy({"generation": 52, "suppressed": {}, "takedowns": {env.v[1]: {"fallback": None, "reason": "leak"}}})
    with pytest.raises(Unavailable, match="taken down: leak"):
        _serves(rt, env)
    rt.close()
    rt = _rt(env)
    with pytest.raises(Unavailable, match="taken down: leak"):
        _serves(rt, env)
    rt.close()


def test_a_bundle_damaged_on_disk_is_dropped_for_the_lkg(fleet_env):
    env = fleet_env
    rt = _rt(env)
    rt.install_bytes(bundle(env, 0, 1), source="usb")
    rt.install_bytes(bundle(env, 1, 2), source="usb")
    rt.close()
    p = env.tmp / "dev" / "active.dmb"
    p.write_bytes(flip_model_byte(p.read_bytes()))
    rt = _rt(env)
    assert _serves(rt, env) == env.v[0]
    assert [e["kind"] for e in rt.state["events"]][-1] == "disk_rejected"
    assert json.loads((env.tmp / "dev" / "state.json").read_text())["events"][-1]["slot"] == "active"
    rt.close()


@pytest.mark.parametrize("sha", ["../../../escaped", "/tmp/abs", "a" * 63 + "/", "A" * 64, 123])
def test_an_assignment_hash_is_never_used_as_a_path(fleet_env, sha):
    # A compromised control server chooses the assignment's sha256; it names
    # the partial download on the device, so anything but hex is refused.
    from datamoat.edge.agent import SyncAgent, SyncError
    from datamoat.errors import BadInput

    rt = _rt(fleet_env, server="http://127.0.0.1:9", token="t", control_trust=(fleet_env.keys["control"].public,))
    try:
        assignment = {"bundle": {"sha256": sha, "size": 4, "url": "http://127.0.0.1:9/b", "sequence": 1}}
        with pytest.raises(SyncError, match="is not 64 lowercase hex digits"):
            SyncAgent(rt).follow({**assignment, "allow_downgrade": False})
        if isinstance(sha, str):
            with pytest.raises(BadInput, match="not a plain file name"):
                rt.store.part(sha)
        assert sorted(p.name for p in (fleet_env.tmp / "dev" / "downloads").iterdir()) == []
        assert not (fleet_env.tmp / "escaped").exists()
    finally:
        rt.close()


def test_status_reports_the_latency_memory_and_model_of_recent_predictions(fleet_env):
    env = fleet_env
    rt = _rt(env)
    assert rt.status()["perf"]["latency_ms"] is None and rt.status()["perf"]["model"] is None
    assert rt.install_bytes(bundle(env, 0, 1), source="usb")["status"] == "installed"
    for _ in range(3):
        _serves(rt, env)
    perf = rt.heartbeat()["perf"]
    lat = perf["latency_ms"]
    assert lat["n"] == 3 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert perf["model"] == {"name": rt.serving.model.name, "version": env.v[0]}
    assert perf["rss_mb"] > 10 and perf["latency_path"] == "in-process predict"
    rt.close()
