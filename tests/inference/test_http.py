"""One set of error handlers for every app: the cloud server, the control server and a device
answer an unknown path, a user error and a crash alike, as one-line JSON errors."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from datamoat.edge.config import EdgeConfig
from datamoat.edge.control import create_control_app
from datamoat.edge.keys import generate_keys
from datamoat.edge.runtime import EdgeRuntime
from datamoat.edge.server import create_edge_app
from datamoat.errors import TooMany
from datamoat.inference.http import bearer, install_error_handlers
from datamoat.registry import Registry
from datamoat.serve.app import create_app
from datamoat.serve.config import ServeConfig


@pytest.fixture
def apps(tmp_path):
    keys = generate_keys(tmp_path / "k.pem")
    rt = EdgeRuntime(EdgeConfig(state_dir=str(tmp_path / "dev"), trust=(keys["public"],)))
    yield {
        "server": create_app(Registry("sqlite://"), ServeConfig(log_predictions=False)),
        "control server": create_control_app(Registry("sqlite://")),
        "device": create_edge_app(rt),
    }
    rt.close()


def test_every_app_answers_an_unknown_path_with_a_json_error(apps):
    for who, app in apps.items():
        with TestClient(app) as c:
            r = c.get("/v1/no-such-thing")
        assert r.status_code == 404, who
        assert r.json()["error"].startswith("Not Found: GET /v1/no-such-thing is not an endpoint here"), who


def test_user_errors_keep_their_status_and_crashes_say_who_logged_them():
    app = FastAPI()
    install_error_handlers(app, "device")

    @app.get("/quota")
    async def quota() -> None:
        raise TooMany("over the quota: retry later")

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/quota").status_code == 429 and c.get("/quota").json() == {"error": "over the quota: retry later"}
        r = c.get("/bug")
    assert r.status_code == 500 and r.json()["error"].startswith("internal error: the device logged it")
    assert "a bug" not in r.text  # the cause is logged, never sent


def test_bearer_reads_only_a_bearer_token():
    from starlette.requests import Request

    def req(value: str) -> Request:
        return Request({"type": "http", "headers": [(b"authorization", value.encode())]})

    assert bearer(req("Bearer  dm_x ")) == "dm_x"
    assert bearer(req("bearer dm_x")) == "dm_x"
    assert bearer(req("Basic dm_x")) is None and bearer(req("Bearer ")) is None
