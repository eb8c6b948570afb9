"""L6: /v1/model (takedown reasons), /metrics (traffic), /docs (every endpoint)
and a device's /v1/edge/status (its event log) answered anyone. They are now
closed by default, and an operator opens them one by one."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from serve.serve_util import Live, auth

from datamoat.edge.config import EdgeConfig
from datamoat.edge.runtime import EdgeRuntime
from datamoat.edge.server import create_edge_app
from datamoat.errors import BadInput
from datamoat.registry.core import Registry
from datamoat.serve import ServeConfig, create_app


@pytest.fixture
def reg(world, tmp_path):
    r = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    row = world.reg.version(world.vid)
    vid = r.register(world.reg.artifact(row["onnx_sha"]), name="m", kind="fp32", info=row["info"], actor="t")
    r.promote(vid, "production", actor="t")
    r.takedown(vid, actor="t", reason="incident 42: leaked customer photos")
    return r


def test_l6_read_endpoints_are_closed_by_default(reg):
    tokens = {role: reg.create_token(role, f"{role}-1", actor="t") for role in ("predict", "monitor")}
    with Live(create_app(reg, ServeConfig(poll_interval_s=0.02, ort_threads=1))) as srv:
        for path in ("/v1/model", "/metrics"):
            r = srv.get(path)
            assert r.status_code == 401 and "incident 42" not in r.text, path
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert srv.get(path).status_code == 404, path
        assert srv.get("/metrics", headers=auth(tokens["predict"])).status_code == 403  # traffic is the monitor's
        assert srv.get("/metrics", headers=auth(tokens["monitor"])).status_code == 200
        assert "incident 42" in srv.get("/v1/model", headers=auth(tokens["predict"])).text
        assert srv.get("/healthz").status_code == 200


def test_l6_an_operator_opens_paths_one_by_one(reg):
    cfg = ServeConfig(poll_interval_s=0.02, ort_threads=1, open_paths=("/metrics", "/docs"))
    with Live(create_app(reg, cfg)) as srv:
        assert srv.get("/metrics").status_code == 200 and srv.get("/openapi.json").status_code == 200
        assert srv.get("/v1/model").status_code == 401
    with pytest.raises(BadInput, match="cannot open"):
        ServeConfig(open_paths=("/v1/admin/takedown",))


def test_l6_the_device_status_and_event_log_need_the_install_token(world, tmp_path):
    rt = EdgeRuntime(EdgeConfig(device_id="d", state_dir=str(tmp_path / "d"), trust=(str(world.pub),)))

    async def read() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_edge_app(rt)), base_url="http://d") as c:
            anon = await c.get("/v1/edge/status")
            owner = await c.get("/v1/edge/status", headers=auth(rt.install_token))
            return anon, owner

    try:
        rt.install_bytes(b"junk", source="local")  # one event in the log
        anon, owner = asyncio.run(read())
        assert anon.status_code == 401 and "events" not in anon.json()
        assert owner.status_code == 200 and owner.json()["events"][-1]["kind"] == "rejected"
    finally:
        rt.close()
