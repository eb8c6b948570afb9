"""Live drift windows: a server tests every full window of answers against the served version's
reference profile, off the request path, and reports it in /metrics and the registry."""

import concurrent.futures
import json

import numpy as np
from dmtest import Receiver

from datamoat.data import SPLITS, load_dataset
from datamoat.evaluate.drift import DriftConfig
from datamoat.registry.register import profile_version

from .serve_util import auth


def settle(srv):
    """Wait for the windows being tested (the monitor's own thread)."""
    concurrent.futures.wait(list(srv.ctx.monitor.pending), timeout=60)


def post(srv, reg, x):
    for i in range(0, len(x), 25):
        r = srv.post("/v1/predict", json={"inputs": x[i : i + 25].tolist()}, headers=auth(reg.tokens["predict"]))
        assert r.status_code == 200, r.text


def test_a_clean_window_passes_and_a_dimmed_one_alarms(live, reg, artifacts):
    prof = profile_version(artifacts.ws, reg.r, reg.v1, actor="test", config=DriftConfig(permutations=200))
    ds = load_dataset(artifacts.ws, prof["dataset_id"])
    x = np.asarray(ds.x[ds.split == SPLITS["test"]])[:200]  # (200, 1, 8, 8): production stand-in
    receiver = Receiver()
    reg.r.add_webhook(receiver.url, "a-secret-of-24-characters", ["drift", "estimate_below_floor"], actor="test")
    srv = live(drift_window=100, accuracy_floor=0.05)
    post(srv, reg, x[:100])
    settle(srv)
    assert srv.metric("datamoat_drift_windows_total") == 1 and srv.metric("datamoat_drift_alarm") == 0
    post(srv, reg, (x[100:] * 0.5 + 30).astype(np.uint8))  # darker and flatter: a new camera
    settle(srv)
    assert srv.metric("datamoat_drift_alarm") == 1
    windows = reg.r.drift_windows(version=reg.v1)
    assert [w["alarm"] for w in windows] == [True, False] and all(w["n"] == 100 for w in windows)
    assert "brightness KS" in windows[0]["fired"] and windows[0]["alias"] == "production"
    assert 0 <= srv.metric("datamoat_accuracy_estimate") <= 1
    # One drift webhook, for the alarming window only; the estimate stayed above the floor.
    sent = [json.loads(body) for _, body in receiver.got]
    receiver.close()
    assert [m["event"] for m in sent] == ["drift"] and sent[0]["data"]["version"] == reg.v1


def test_a_version_without_a_profile_is_counted_not_tested(live, reg, artifacts):
    srv = live(drift_window=50)
    x = np.asarray(artifacts.x)[:50].astype(np.uint8)
    post(srv, reg, np.concatenate([x, x])[:50])
    settle(srv)
    text = srv.get("/metrics").text
    assert 'result="unprofiled"' in text and reg.r.drift_windows() == []


def test_monitoring_off_opens_no_embeddings(live, reg, artifacts):
    srv = live(drift_window=0)
    post(srv, reg, np.asarray(artifacts.x)[:25].astype(np.uint8))
    assert srv.ctx.monitor is None and srv.ctx.controller.state.model.embedding is None
