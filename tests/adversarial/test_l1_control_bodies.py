"""L1: the control server read a whole body before checking its size, so a
chunked body (no Content-Length) bypassed the check; and every published
bundle it ever served stayed in memory."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from datamoat.edge.bundle import build_bundle
from datamoat.edge.control import ControlConfig, create_control_app
from datamoat.edge.publish import BUNDLE_CACHE


@pytest.fixture
def control(fresh):
    reg, vid = fresh.reg, fresh.vid
    app = create_control_app(reg, ControlConfig())
    token = app.state.edge.fleet.enroll("a", "lab", actor="ops")
    return app, reg, vid, token


@pytest.mark.parametrize("path", ["sync", "uploads"])
def test_l1_a_chunked_body_is_refused_at_the_limit_not_after_reading_it(control, path):
    app, _, _, token = control
    pulled = [0]

    async def chunks():  # 64 MB on offer, without a Content-Length
        for _ in range(64):
            pulled[0] += 1 << 20
            yield b" " * (1 << 20)

    async def attack() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ctl") as client:
            return await client.post(
                f"/v1/edge/devices/a/{path}",
                content=chunks(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )

    r = asyncio.run(attack())
    limit = ControlConfig().upload_max_bytes
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert pulled[0] <= limit + (2 << 20), f"the server pulled {pulled[0] >> 20} MB"


def test_l1_the_bundle_cache_is_bounded(world, control):
    _, reg, vid, _ = control
    from datamoat.edge.fleet import Fleet

    fleet = Fleet(reg)
    shas = [fleet.publish(build_bundle(reg, vid, world.key, seq), actor="ops")["sha"] for seq in range(1, 8)]
    for sha in shas:
        assert len(fleet.bundle_bytes(sha)) > 0
    assert len(fleet._blobs) == BUNDLE_CACHE and list(fleet._blobs) == shas[-BUNDLE_CACHE:]
