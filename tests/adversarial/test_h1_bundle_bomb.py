"""H1: a bundle was inflated before its signature was checked, and the device's
install endpoint took any body from anyone. A zip bomb over each route (a
hand-carried file, the local endpoint, over the air) must now be refused
while the device's peak memory stays within 64 MB of its baseline."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from datamoat.edge.bundle import PARTS, BundleError, build_bundle, read_bundle
from datamoat.edge.keys import load_public_key

HERE = Path(__file__).parent
BOMB_MB = 256


def make_bomb(path: Path, signed_manifest: bytes = b"{}", sig: bytes = b"x" * 64) -> Path:
    """Every member a bundle must have; model.onnx inflates to BOMB_MB of zeros."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.json", signed_manifest)
        zf.writestr("manifest.sig", sig)
        for p in PARTS:
            if p != "model.onnx":
                zf.writestr(p, b"{}")
        zi = zipfile.ZipInfo("model.onnx")
        zi.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(zi, "w", force_zip64=True) as f:
            zero = bytes(1 << 20)
            for _ in range(BOMB_MB):
                f.write(zero)
    assert path.stat().st_size < 2 << 20
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return make_bomb(tmp_path_factory.mktemp("bomb") / "bomb.dmb")


@pytest.mark.slow
@pytest.mark.parametrize("route", ["usb", "local", "ota"])
def test_h1_a_bundle_bomb_is_refused_on_every_route_within_64_mb(world, bomb, tmp_path, route):
    proc = subprocess.run(
        [sys.executable, str(HERE / "bomb_device.py"), route, str(tmp_path / "dev"), str(world.pub), str(bomb)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "rejected" and "compressed" in out["reason"], out
    assert out["grew_mb"] < 64, f"peak RSS rose {out['grew_mb']:.0f} MB on the {route} route"


def test_h1_a_signed_but_compressed_bundle_is_refused_before_inflating(world, tmp_path):
    # Even a key-holder cannot make the device inflate anything.
    good = build_bundle(world.reg, world.vid, world.key, 1)
    zin = zipfile.ZipFile(io.BytesIO(good))
    path = tmp_path / "deflated.dmb"
    with zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            deflate = zipfile.ZIP_DEFLATED if name == "model.onnx" else zipfile.ZIP_STORED
            zout.writestr(name, zin.read(name), compress_type=deflate)
    with pytest.raises(BundleError, match="model.onnx is compressed"):
        read_bundle(path.read_bytes(), [load_public_key(world.pub)])
    assert read_bundle(good, [load_public_key(world.pub)]).version_id == world.vid


def test_h1_the_install_endpoint_needs_the_device_token_and_a_binary_type(world, tmp_path):
    import asyncio

    import httpx

    from datamoat.edge.config import EdgeConfig
    from datamoat.edge.runtime import EdgeRuntime
    from datamoat.edge.server import create_edge_app

    rt = EdgeRuntime(EdgeConfig(device_id="d", state_dir=str(tmp_path / "d"), trust=(str(world.pub),)))
    good = build_bundle(world.reg, world.vid, world.key, 1)
    binary = {"Content-Type": "application/octet-stream"}
    auth = {"Authorization": f"Bearer {rt.install_token}"}

    async def attack() -> None:
        transport = httpx.ASGITransport(app=create_edge_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://dev") as client:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": rt.install_token}):
                r = await client.post("/v1/edge/install", content=good, headers={**binary, **headers})
                assert r.status_code == 401 and "install token" in r.json()["error"]
            # A cross-site form can only send text/plain, form or multipart bodies.
            r = await client.post("/v1/edge/install", content=good, headers={**auth, "Content-Type": "text/plain"})
            assert r.status_code == 415
            assert rt.active is None and rt.state["rejected"] == {}
            r = await client.post("/v1/edge/install", content=good, headers={**auth, **binary})
            assert r.status_code == 200 and r.json()["status"] == "installed"

    try:
        assert oct((tmp_path / "d" / "install.token").stat().st_mode & 0o777) == "0o600"
        asyncio.run(attack())
    finally:
        rt.close()


def test_h1_an_over_the_air_assignment_larger_than_the_device_allows_is_not_fetched(world, tmp_path):
    from datamoat.edge.agent import SyncAgent
    from datamoat.edge.config import EdgeConfig
    from datamoat.edge.runtime import EdgeRuntime

    cfg = EdgeConfig(device_id="d", state_dir=str(tmp_path / "d"), trust=(str(world.pub),), max_bundle_bytes=1 << 20)
    rt = EdgeRuntime(cfg)
    try:
        # The URL points nowhere: a fetch would raise; the size alone must stop it.
        huge = {"sha256": "a" * 64, "size": 5 << 30, "url": "http://127.0.0.1:9/b", "sequence": 9}
        out = SyncAgent(rt).follow({"bundle": huge, "allow_downgrade": False})
        assert out is None and "outside this device's" in rt.state["rejected"]["a" * 64]
        assert list((tmp_path / "d" / "downloads").iterdir()) == []
    finally:
        rt.close()
