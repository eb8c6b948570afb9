"""The edge commands as an operator and a technician run them."""

from __future__ import annotations

import json
import os
import stat

import pytest
from dmtest import dm, dm_main

from .helpers import flip_model_byte


@pytest.fixture
def _run(monkeypatch, capsys):
    """`datamoat ARGS` in this process; must exit 0; returns its one JSON object."""

    def run(*args) -> dict:
        code, out, err = dm_main(monkeypatch, capsys, None, *args)
        assert code == 0, err
        return json.loads(out)

    return run


@pytest.mark.slow
def test_keys_bundle_install_enroll_rollout_status(fleet_env, tmp_path, _run):
    url, v = fleet_env.reg.url, fleet_env.v
    keys = _run("keys", "generate", "-o", tmp_path / "k" / "release.pem", "--json")
    assert stat.S_IMODE(os.stat(keys["private"]).st_mode) == 0o600
    b1 = _run("bundle", v[0], "--key", keys["private"], "-o", tmp_path / "b1.dmb", "--registry", url, "--json")
    b2 = _run("bundle", v[1], "--key", keys["private"], "-o", tmp_path / "b2.dmb", "--registry", url, "--json")
    assert (b1["seq"], b2["seq"]) == (1, 2) and (tmp_path / "b2.dmb").read_bytes()[:2] == b"PK"
    dev = tmp_path / "device"
    out = _run("edge", "install", tmp_path / "b2.dmb", "--trust", keys["public"], "--state-dir", dev, "--json")
    assert out["status"] == "installed"
    (tmp_path / "bad.dmb").write_bytes(flip_model_byte((tmp_path / "b1.dmb").read_bytes()))
    for f, why in (("b1.dmb", "downgrade refused"), ("bad.dmb", "tampered")):
        proc = dm(None, "edge", "install", tmp_path / f, "--trust", keys["public"], "--state-dir", dev, timeout=120)
        assert proc.returncode == 2 and why in proc.stderr and "Traceback" not in proc.stderr
    token = _run("fleet", "enroll", "cam-1", "--group", "lab", "--registry", url, "--json")["token"]
    assert token.startswith("dm_device_")
    r = _run(
        "rollout",
        v[1],
        "--group",
        "lab",
        "--percent",
        "100",
        "--abort-if-failed-percent",
        "30",
        "--registry",
        url,
        "--json",
    )
    assert (r["id"], r["bundle_sha"], r["abort_percent"]) == ("lab-1", b2["sha"], 30)
    st = _run("fleet", "status", "--registry", url, "--json")
    (row,) = st["devices"]
    assert row["device_id"] == "cam-1" and row["health"] == "never seen" and row["rollout"].endswith("pending")
    assert {b["seq"] for b in st["bundles"]} == {1, 2}
    assert (
        _run("fleet", "abort", "--group", "lab", "--reason", "bad batch", "--registry", url, "--json")["state"]
        == "aborted"
    )
    kinds = [e["kind"] for e in _run("fleet", "events", "--registry", url, "--json")["events"]]
    assert kinds == ["publish", "publish", "enroll", "rollout-start", "rollout-abort"]
