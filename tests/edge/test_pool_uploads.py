"""Devices' uploads as unlabeled items: stored through the fleet's checked path, pooled with each
device's count in the lineage, by the server's pixels (a device's hash or name is never read)."""

from __future__ import annotations

import base64
import json
import time
import uuid

import numpy as np
import pytest
from dmtest import dm_main

from datamoat.data.pool import pool_rows
from datamoat.edge.uploads import pool_from_uploads
from datamoat.errors import BadInput


def _item(env, pixels: np.ndarray, **over) -> dict:
    item = {
        "prediction_id": str(uuid.uuid4()),
        "model_version": env.v[0],
        "shape": [1, 8, 8],
        "pixels": base64.b64encode(pixels.tobytes()).decode(),
        "label": None,
        "top_k": [{"label": "0", "probability": 0.3}],
        "abstained": True,
        "needs_review": True,
        "ts": time.time(),
    }
    return {**item, **over}


def test_uploads_join_the_pool_with_their_devices(fleet_env, ws, digits):
    env, fleet = fleet_env, fleet_env.fleet
    with pytest.raises(BadInput, match="no uploads from any device"):
        pool_from_uploads(ws, env.reg, into=digits)
    devices = {d: fleet.authenticate(fleet.enroll(d, "lab", actor="ops"), d) for d in ("cam-a", "cam-b")}
    x = 255 - env.x  # (20, 1, 8, 8): images the dataset does not hold
    a = [_item(env, x[i]) for i in range(3)] + [_item(env, x[0])]  # the last one repeats the first
    # A device's claims about its sample are not what the pool goes by: not exact, a made-up hash.
    b = [_item(env, x[5], exact=False, input_sha256="0" * 64), _item(env, x[6])]
    for dev, items in (("cam-a", a), ("cam-b", b)):
        assert fleet.record_uploads(devices[dev], items, max_per_hour=100)["stored"] == len(items)
    grown, report = pool_from_uploads(ws, env.reg, into=digits)
    assert report["added"] == 5 and report["duplicates"] == 1 and report["devices"] == {"cam-a": 3, "cam-b": 2}
    src = ws.resolve("datasets", grown.id)["source"]["from"]
    assert src["kind"] == "edge-uploads" and src["devices"] == report["devices"]
    pixels = {it["prediction_id"]: base64.b64decode(it["pixels"]) for it in a + b}
    for row, pid in zip(pool_rows(grown), src["prediction_ids"]):
        assert grown.x[row].tobytes() == pixels[pid]
    only_b, report = pool_from_uploads(ws, env.reg, into=digits, device_id="cam-b")
    assert report["devices"] == {"cam-b": 2} and len(pool_rows(only_b)) == 2
    with pytest.raises(BadInput, match="no uploads from device 'cam-c'"):
        pool_from_uploads(ws, env.reg, into=digits, device_id="cam-c")


def test_the_cli_pools_one_devices_uploads(fleet_env, ws, digits, tmp_path, monkeypatch, capsys):
    env, fleet = fleet_env, fleet_env.fleet
    dev = fleet.authenticate(fleet.enroll("cam-a", "lab", actor="ops"), "cam-a")
    fleet.record_uploads(dev, [_item(env, 255 - env.x[i]) for i in range(2)], max_per_hour=100)
    registry = ("--registry", f"sqlite:///{tmp_path / 'reg.db'}")

    def run(*args):
        return dm_main(monkeypatch, capsys, ws.root, "data", "pool", *args, *registry, "--json")

    code, out, err = run("--from-uploads", "--device", "cam-a", "--into", "digits")
    assert code == 0, err
    assert json.loads(out)["devices"] == {"cam-a": 2}
    code, out, err = run("--from-uploads", "--device", "cam-z", "--into", "digits")
    assert code == 2 and "no uploads from device 'cam-z'" in err and len(err.strip().splitlines()) == 1
