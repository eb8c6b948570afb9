"""`Predictor` against real endpoints on loopback: an edge runtime, the
cloud server, a closed port and a port that never answers."""

from __future__ import annotations

import socket

import pytest

from datamoat.edge.client import NoEndpointAnswered, Predictor
from datamoat.edge.config import EdgeConfig
from datamoat.edge.runtime import EdgeRuntime
from datamoat.edge.server import create_edge_app
from datamoat.errors import BadInput
from datamoat.serve import ServeConfig, create_app

from .helpers import Served, bundle, free_port


@pytest.mark.slow
def test_predictor_falls_back_and_says_who_answered(fleet_env):
    env = fleet_env
    rt = EdgeRuntime(EdgeConfig(device_id="d", state_dir=str(env.tmp / "d"), trust=(env.keys["release"].public,)))
    rt.install_bytes(bundle(env, 0, 1), source="usb")
    env.reg.promote(env.v[1], "production", actor="t")
    cloud_app = create_app(env.reg, ServeConfig(require_predict_token=False, ort_threads=1, log_predictions=False))
    closed = f"http://127.0.0.1:{free_port()}"
    silent = socket.socket()  # accepts connections into its backlog, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    hang = f"http://127.0.0.1:{silent.getsockname()[1]}"
    x = env.x[:1]
    try:
        with Served(create_edge_app(rt)) as edge, Served(cloud_app, lifespan="on") as cloud:
            with Predictor([edge.url, cloud.url], timeout=2.0) as p:
                out = p.predict(x)
                assert (out["endpoint"], out["model_version"], out["fallbacks"]) == (edge.url, env.v[0], [])
                png = p.predict(image=_png(x[0, 0]))  # an upload goes through the same shape on the edge
                assert png["endpoint"] == edge.url and png["predictions"][0]["label"] == out["predictions"][0]["label"]
            with Predictor([closed, cloud.url], timeout=2.0) as p:
                out = p.predict(x)
                assert out["endpoint"] == cloud.url and out["model_version"] == env.v[1]
                assert out["fallbacks"][0]["endpoint"] == closed and "unreachable" in out["fallbacks"][0]["error"]
            with Predictor([hang, edge.url], timeout=0.3) as p:
                out = p.predict(x)
                assert out["endpoint"] == edge.url and "timed out" in out["fallbacks"][0]["error"]
            # The edge model taken down (503): the cloud answers; reversed order prefers the cloud.
            rt.apply_policy(
                {"generation": 99, "suppressed": {}, "takedowns": {env.v[0]: {"fallback": None, "reason": "recall"}}}
            )
            with Predictor([edge.url, cloud.url], timeout=2.0) as p:
                out = p.predict(x)
                assert out["endpoint"] == cloud.url and out["fallbacks"][0]["status"] == 503
                assert "recall" in out["fallbacks"][0]["error"]
                with pytest.raises(BadInput, match="422"):  # a bad request is not retried elsewhere
                    p.predict([[1, 2], [3, 4]])
            with Predictor([closed, hang], timeout=0.3) as p, pytest.raises(NoEndpointAnswered):
                p.predict(x)
    finally:
        silent.close()
        rt.close()


def _png(a) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()
