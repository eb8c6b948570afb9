"""M6: the device's local API read a chunked body whole before its size check
(a 300 MB PNG took the device from 86 MB to 701 MB), and every junk install
POST grew state.json by one entry, rewritten with fsync each time."""

from __future__ import annotations

import asyncio
import json

import httpx

from datamoat.edge.config import EdgeConfig
from datamoat.edge.runtime import MAX_REMEMBERED, EdgeRuntime
from datamoat.edge.server import create_edge_app


def test_m6_a_chunked_body_is_cut_off_at_the_limit_not_read_whole(world, tmp_path):
    rt = EdgeRuntime(EdgeConfig(device_id="d", state_dir=str(tmp_path / "d"), trust=(str(world.pub),)))
    limit, pulled = rt.cfg.max_upload_bytes, [0]

    async def chunks():  # 300 MB on offer, without a Content-Length
        for _ in range(300):
            pulled[0] += 1 << 20
            yield bytes(1 << 20)

    async def attack() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_edge_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://dev") as client:
            return await client.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/png"})

    try:
        r = asyncio.run(attack())
        assert r.status_code == 413 and "byte limit" in r.json()["error"]
        assert pulled[0] <= limit + (2 << 20), f"the device pulled {pulled[0] >> 20} MB of a {limit >> 20} MB limit"
    finally:
        rt.close()


def test_m6_junk_installs_do_not_grow_the_state_file_without_bound(world, tmp_path):
    rt = EdgeRuntime(EdgeConfig(device_id="d", state_dir=str(tmp_path / "d"), trust=(str(world.pub),)))
    try:
        for i in range(3 * MAX_REMEMBERED):
            assert rt.install_bytes(f"junk {i}".encode(), source="local")["status"] == "rejected"
        state = json.loads((tmp_path / "d" / "state.json").read_text())
        assert len(state["rejected"]) == MAX_REMEMBERED
        newest = __import__("hashlib").sha256(f"junk {3 * MAX_REMEMBERED - 1}".encode()).hexdigest()
        assert list(state["rejected"])[-1] == newest  # the newest are kept
    finally:
        rt.close()
