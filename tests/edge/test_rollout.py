"""Stable-hash selection, baselines, and the abort threshold on the fleet DB."""

from __future__ import annotations

import pytest

from datamoat.edge.bundle import build_bundle
from datamoat.edge.rollout import abort_verdict, assign, baseline_for_next, selected
from datamoat.errors import BadInput
from datamoat.registry.core import AuthError

DEVICES = [f"dev-{i:03d}" for i in range(400)]


def test_selection_is_stable_monotone_and_about_right():
    at20 = {d for d in DEVICES if selected(d, "lab-1", 20)}
    at50 = {d for d in DEVICES if selected(d, "lab-1", 50)}
    assert at20 == {d for d in DEVICES if selected(d, "lab-1", 20)}  # same answer every time
    assert at20 < at50  # raising the percent keeps earlier devices in
    assert 40 <= len(at20) <= 120 and 150 <= len(at50) <= 250  # sha256 buckets are near-uniform
    assert at20 != {d for d in DEVICES if selected(d, "lab-2", 20)}  # another rollout draws another sample
    assert not any(selected(d, "r", 0) for d in DEVICES) and all(selected(d, "r", 100) for d in DEVICES)


def test_assign_baseline_and_abort():
    r = {
        "id": "g-2",
        "bundle_sha": "new",
        "baseline_sha": "old",
        "percent": 20,
        "state": "active",
        "allow_downgrade": False,
    }
    ins = [d for d in DEVICES if selected(d, "g-2", 20)]
    outs = [d for d in DEVICES if not selected(d, "g-2", 20)]
    assert assign(ins[0], r) == {"bundle_sha": "new", "allow_downgrade": False, "rollout_id": "g-2", "selected": True}
    assert assign(outs[0], r)["bundle_sha"] == "old" and assign(outs[0], r)["rollout_id"] is None
    aborted = {**r, "state": "aborted"}
    assert assign(ins[0], aborted) == {
        "bundle_sha": "old",
        "allow_downgrade": True,
        "rollout_id": None,
        "selected": False,
    }
    assert baseline_for_next({**r, "percent": 100}, installed=1) == "new"
    assert baseline_for_next({**r, "percent": 100, "state": "aborted"}, installed=5) == "old"
    assert baseline_for_next(None, 0) is None
    assert abort_verdict(1, 5, 20.0) and not abort_verdict(0, 5, 20.0) and not abort_verdict(4, 5, None)


def test_fleet_rollout_grows_and_aborts_at_threshold(fleet_env):
    fleet, key = fleet_env.fleet, fleet_env.keys["release"].private
    tokens = {d: fleet.enroll(d, "lab", actor="ops") for d in ("a", "b", "c", "d", "e")}
    b1 = fleet.publish(build_bundle(fleet_env.reg, fleet_env.v[0], key, fleet.next_sequence()), actor="ops")
    b2 = fleet.publish(build_bundle(fleet_env.reg, fleet_env.v[1], key, fleet.next_sequence()), actor="ops")
    assert (b1["seq"], b2["seq"]) == (1, 2)
    r1 = fleet.start_rollout(b1["sha"], "lab", 100, actor="ops")
    devs = {d["id"]: d for d in fleet.devices()}
    for d in devs.values():
        assert (
            fleet.sync(d, {"events": [{"n": 1, "kind": "installed", "rollout_id": r1["id"]}]})["bundle"]["sha256"]
            == b1["sha"]
        )
    r2 = fleet.start_rollout(b2["sha"], "lab", 40, actor="ops", abort_percent=50)
    assert r2["baseline_sha"] == b1["sha"] and r2["id"] != r1["id"]
    with pytest.raises(BadInput, match="only grows"):
        fleet.start_rollout(b2["sha"], "lab", 20, actor="ops")
    assert fleet.start_rollout(b2["sha"], "lab", 100, actor="ops")["id"] == r2["id"]  # same rollout, bigger
    # Failures: 2 of 5 is 40% < 50%, the third crosses the threshold.
    for i, d in enumerate(["a", "b", "c"]):
        dev = {**devs[d], "last_event": 1}
        a = fleet.sync(dev, {"events": [{"n": 2, "kind": "rejected", "rollout_id": r2["id"], "reason": "bad sig"}]})
        state = fleet.current_rollout("lab")["state"]
        assert state == ("aborted" if i == 2 else "active")
    assert a["bundle"]["sha256"] == b1["sha"] and a["allow_downgrade"] is True
    assert "3 of 5" in fleet.current_rollout("lab")["reason"]
    kinds = [e["kind"] for e in fleet.events()]
    assert kinds.count("rollout-abort") == 1 and kinds.count("rejected") == 3
    # Device tokens: only their own assignment.
    assert fleet.authenticate(tokens["a"], "a")["id"] == "a"
    with pytest.raises(AuthError) as e:
        fleet.authenticate(tokens["a"], "b")
    assert e.value.http_status == 403
    with pytest.raises(AuthError):
        fleet.authenticate("dm_device_forged", "a")
    status = {s["device_id"]: s for s in fleet.status()}
    assert status["a"]["rollout"].startswith(f"{r2['id']} [aborted") and "rejected (bad sig)" in status["a"]["rollout"]


def test_takedown_reassigns_the_fallback_bundle(fleet_env):
    fleet, key = fleet_env.fleet, fleet_env.keys["release"].private
    fleet.enroll("a", "lab", actor="ops")
    b1 = fleet.publish(build_bundle(fleet_env.reg, fleet_env.v[0], key, 1), actor="ops")
    b2 = fleet.publish(build_bundle(fleet_env.reg, fleet_env.v[1], key, 2), actor="ops")
    fleet.start_rollout(b2["sha"], "lab", 100, actor="ops")
    dev = fleet.devices()[0]
    fleet_env.reg.takedown(fleet_env.v[1], actor="ops", reason="bad", fallback=fleet_env.v[0])
    a = fleet.assignment(dev)
    assert a["bundle"]["sha256"] == b1["sha"] and a["allow_downgrade"] and fleet_env.v[1] in a["policy"]["takedowns"]
