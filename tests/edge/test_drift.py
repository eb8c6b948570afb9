"""Drift on devices: the bundle carries the version's profile, the device tests windows of its own
traffic, only the results travel in heartbeats, and the fleet records them per device and site."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys

import numpy as np

from datamoat.data import SPLITS, load_dataset
from datamoat.edge.config import EdgeConfig
from datamoat.edge.drift import fleet_metrics
from datamoat.edge.runtime import EdgeRuntime
from datamoat.evaluate.drift import RESULT_KEYS, TESTS, DriftConfig
from datamoat.registry.register import profile_version

from .helpers import body, bundle


def _device(env, models, window=40):
    prof = profile_version(models.ws, env.reg, env.v[0], actor="test", config=DriftConfig(permutations=100))
    ds = load_dataset(models.ws, prof["dataset_id"])
    # (80, 1, 8, 8) uint8. Test images 40-119: the first 40 are a window the MMD test tells apart from
    # the validation split (p at its floor), as 1 clean window in 100 may be (bench/results/drift.md).
    x = np.asarray(ds.x[ds.split == SPLITS["test"]])[40:120]
    cfg = EdgeConfig(
        device_id="cam-1", group="lab", state_dir=str(env.tmp / "cam-1"), trust=(env.keys["release"].public,),
        drift_window=window,
    )  # fmt: skip
    rt = EdgeRuntime(cfg)
    assert rt.install_bytes(bundle(env, 0, 1), source="usb")["status"] == "installed"
    return rt, x


def _run(rt, batches):
    for b in batches:
        rt.predict(body(b))
    concurrent.futures.wait(rt.drift.pending, timeout=60)
    return [e for e in rt.state["events"] if e["kind"] == "drift_window"]


def test_a_device_tests_its_windows_and_sends_only_results(fleet_env, models):
    env = fleet_env
    rt, x = _device(env, models)
    clean = _run(rt, np.split(x[:40], 4))
    dimmed = _run(rt, np.split((x[40:] * 0.4 + 40).astype(np.uint8), 4))
    assert [e["alarm"] for e in dimmed] == [False, True]  # the clean window, then the dimmed one
    assert clean[0]["version"] == env.v[0] and clean[0]["n"] == 40
    assert "brightness KS" in dimmed[1]["fired"]
    for e in dimmed:  # a result, never an input: no sketch, no confidence, no pixel leaves the device
        assert set(e) <= {*RESULT_KEYS, "n", "ts", "kind", "version"} and len(json.dumps(e)) < 2000
    hb = rt.heartbeat()
    assert hb["drift"]["alarm"] and hb["drift"]["version"] == env.v[0]

    token = env.fleet.enroll("cam-1", "lab", actor="test")
    env.fleet.sync(env.fleet.authenticate(token, "cam-1"), hb)
    rows = env.reg.drift_windows()
    assert [(r["server_id"], r["alias"], r["alarm"]) for r in rows] == [
        ("device:cam-1", "edge:lab", True),
        ("device:cam-1", "edge:lab", False),
    ]
    text = fleet_metrics(env.reg)[0].decode()
    assert f'datamoat_device_drift_alarm{{device="cam-1",site="lab",version="{env.v[0]}"}} 1.0' in text
    rt.close()


def test_malformed_windows_from_a_device_are_skipped(fleet_env):
    env = fleet_env
    token = env.fleet.enroll("cam-2", "lab", actor="test")
    good = {
        "n": 50, "alarm": False, "fired": [], "p_values": dict.fromkeys(TESTS, 0.5), "level": 0.01, "mmd2": 0.0,
        "brightness_shift": 0.0, "contrast_shift": 0.0, "class_mix": [0.5, 0.5],
        "estimate": {"estimate": 0.9, "low": 0.8, "high": 0.95},
    }  # fmt: skip
    bad = [
        {**good, "p_values": {"embedding MMD": 0.1}},  # tests missing
        {**good, "n": -5},
        {**good, "mmd2": float("nan")},
        {**good, "class_mix": [0.0] * 20_000},  # too long
        {**good, "fired": ["made-up test"]},
        {**good, "version": "x" * 100},
    ]
    events = [{"n": i + 1, "kind": "drift_window", "version": env.v[0], **b} for i, b in enumerate(bad)]
    events.append({"n": 99, "kind": "drift_window", "version": env.v[0], **good})
    hb = {"health": "ok", "events": events}
    env.fleet.sync(env.fleet.authenticate(token, "cam-2"), hb)
    (row,) = env.reg.drift_windows()  # only the well-formed one
    assert row["n"] == 50 and row["server_id"] == "device:cam-2"


def test_without_a_profile_the_device_runs_no_drift_test(fleet_env):
    env = fleet_env
    cfg = EdgeConfig(device_id="cam-3", state_dir=str(env.tmp / "cam-3"), trust=(env.keys["release"].public,))
    rt = EdgeRuntime(cfg)
    rt.install_bytes(bundle(env, 1, 1), source="usb")  # v1 has no profile: the bundle carries none
    assert rt.active.model.run(env.x[:2])[1] is None  # no embedding output opened
    for _ in range(25):
        rt.predict(body(env.x[:10]))
    assert not [e for e in rt.state["events"] if e["kind"] == "drift_window"] and rt.heartbeat()["drift"] is None
    rt.close()


def test_the_edge_runtime_does_not_load_torch():
    code = "import sys, datamoat.edge.runtime, datamoat.edge.fleet; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
