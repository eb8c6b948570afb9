"""Load test against a tiny real server on a loopback port (uvicorn in a thread)."""

import asyncio
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
from dmtest import dm

from datamoat.errors import BadInput
from datamoat.serve.loadtest import LoadTestConfig, is_loopback_url, loadtest

SLEEP_MS = 5.0


class Server:
    """A minimal FastAPI app that records what it served.

    /v1/predict sleeps SLEEP_MS and checks the image's shape; /v1/flaky
    answers 500 to every third request; /v1/slow sleeps 1 s.
    """

    def __init__(self):
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse

        self.shapes, self.served, self.flaky_calls = [], 0, 0
        self.seen_auth = set()
        app = FastAPI()

        @app.get("/v1/model")
        async def model():
            return {"version": "v1", "alias": "production", "classes": ["a", "b"], "input_shape": [None, 1, 8, 8]}

        @app.post("/v1/predict")
        async def predict(request: Request):
            self.seen_auth.add(request.headers.get("authorization"))
            if request.headers["content-type"].startswith("multipart/"):
                from PIL import Image

                form = await request.form()
                img = np.asarray(Image.open(io.BytesIO(await form["file"].read())))
                self.shapes.append(("png", img.shape))
            elif request.headers["content-type"] == "application/x-npy":
                arr = np.load(io.BytesIO(await request.body()), allow_pickle=False)
                self.shapes.append(("npy", arr.shape, str(arr.dtype)))
            else:
                self.shapes.append(("json", np.asarray((await request.json())["inputs"]).shape))
            await asyncio.sleep(SLEEP_MS / 1000)
            self.served += 1
            return {"label": "a", "version": "v1"}

        @app.post("/v2/models/{name}/infer")
        async def infer(name: str, request: Request):
            from datamoat.inference.v2 import HEADER_LENGTH, parse_infer_request

            raw = request.headers.get(HEADER_LENGTH)
            tensor = parse_infer_request(await request.body(), None if raw is None else int(raw))[0]
            self.shapes.append(("v2" if raw is None else "v2-binary", name, tensor.shape, str(tensor.dtype)))
            return {"model_name": name, "outputs": []}

        @app.post("/v1/flaky")
        async def flaky():
            self.flaky_calls += 1
            n = self.flaky_calls
            await asyncio.sleep(SLEEP_MS / 1000)
            if n % 3 == 0:
                return JSONResponse({"error": "boom"}, status_code=500)
            return {"label": "a"}

        @app.post("/v1/slow")
        async def slow():
            await asyncio.sleep(1.0)
            return {"label": "a"}

        self.app = app


@pytest.fixture(scope="module")
def server():
    import uvicorn

    srv = Server()
    # asyncio's loop, not uvloop: libuv's millisecond timers can end the handler's sleep up to 1 ms early,
    # and the latency tests rely on every answer taking at least SLEEP_MS.
    config = uvicorn.Config(srv.app, host="127.0.0.1", port=0, log_level="warning", access_log=False, loop="asyncio")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uv.started, "test server did not start"
    srv.url = f"http://127.0.0.1:{uv.servers[0].sockets[0].getsockname()[1]}"
    yield srv
    uv.should_exit = True
    thread.join(timeout=10)


def test_closed_loop_stops_by_itself_and_counts_add_up(server):
    served_before = server.served
    cfg = LoadTestConfig(url=server.url, concurrency=4, duration_s=1.0, warmup_s=0.3, timeout_s=2.0)
    t = time.monotonic()
    r = loadtest(cfg)
    wall = time.monotonic() - t
    assert wall < cfg.warmup_s + cfg.duration_s + cfg.timeout_s  # stopped by itself, not by the deadline
    assert r.mode == "closed" and r.errors == 0 and r.errors_by == {}
    assert r.requests == r.successes == len(r.latencies_ms) > 0
    # Every request the server answered was either warm-up or counted.
    assert server.served - served_before == r.requests + r.warmup_requests
    assert r.warmup_requests > 0
    assert SLEEP_MS <= r.p50_ms <= r.p95_ms <= r.p99_ms <= r.max_ms
    assert r.latencies_ms.min() >= SLEEP_MS and r.mean_ms <= r.max_ms
    assert r.throughput_rps == pytest.approx(r.successes / r.elapsed_s)
    assert cfg.duration_s <= r.elapsed_s < cfg.duration_s + cfg.timeout_s
    assert 0 < r.achieved_concurrency <= 4 and 2 <= r.max_in_flight <= 4
    # The shape came from GET /v1/model (a symbolic batch dim ignored).
    assert r.input_shape == (1, 8, 8) and server.shapes[-1] == ("json", (1, 8, 8))


def test_errors_are_counted_by_status_and_latency_only_over_successes(server):
    r = loadtest(LoadTestConfig(url=server.url + "/v1/flaky", concurrency=3, duration_s=0.6, warmup_s=0.0))
    assert set(r.errors_by) == {"500"} and r.errors == r.errors_by["500"] > 0
    assert r.successes + r.errors == r.requests
    assert len(r.latencies_ms) == r.successes
    # Without warm-up every request the server saw is counted, and every third one was a 500.
    assert r.requests == server.flaky_calls and r.errors == r.requests // 3


def test_timeouts_are_counted_by_exception_type(server):
    cfg = LoadTestConfig(url=server.url + "/v1/slow", concurrency=2, duration_s=0.5, warmup_s=0.0, timeout_s=0.2)
    r = loadtest(cfg)
    assert r.successes == 0 and r.p99_ms is None and r.throughput_rps == 0
    assert r.errors == r.requests > 0
    assert set(r.errors_by) <= {"ReadTimeout", "TimeoutError"}
    assert json.loads(json.dumps(r.to_dict()))["p99_ms"] is None


def test_open_loop_sends_about_rate_times_duration(server):
    cfg = LoadTestConfig(url=server.url, rate=100.0, concurrency=8, duration_s=1.0, warmup_s=0.0, seed=1)
    r = loadtest(cfg)
    assert r.mode == "open"
    # Poisson with mean 100 has sd 10: these bounds are loose counting, not timing.
    assert 60 <= r.requests + r.dropped <= 140
    assert r.successes + r.errors == r.requests and r.errors == 0
    assert r.p50_ms >= SLEEP_MS


def test_max_requests_ends_the_window_early(server):
    r = loadtest(LoadTestConfig(url=server.url, concurrency=2, duration_s=60, warmup_s=0.0, max_requests=15))
    assert r.requests == 15 and r.elapsed_s < 30


def test_png_payload_token_and_explicit_shape(server):
    cfg = LoadTestConfig(
        url=server.url, payload="png", input_shape=(3, 5, 7), token="s3cret", concurrency=2, duration_s=0.4, warmup_s=0
    )
    r = loadtest(cfg)
    assert r.successes > 0 and r.errors == 0
    assert server.shapes[-1] == ("png", (5, 7, 3)) and "Bearer s3cret" in server.seen_auth
    d = r.to_dict()
    assert d["config"]["token"] == "<redacted>" and "s3cret" not in json.dumps(d)


def test_batched_json_payload(server):
    r = loadtest(LoadTestConfig(url=server.url, batch=4, concurrency=1, duration_s=0.3, warmup_s=0))
    assert server.shapes[-1] == ("json", (4, 1, 8, 8))
    assert r.images_per_s == pytest.approx(4 * r.throughput_rps)


def test_npy_payload_single_and_batched(server):
    loadtest(LoadTestConfig(url=server.url, payload="npy", concurrency=1, duration_s=0.2, warmup_s=0))
    assert server.shapes[-1] == ("npy", (1, 8, 8), "uint8")
    loadtest(LoadTestConfig(url=server.url, payload="npy", batch=3, concurrency=1, duration_s=0.2, warmup_s=0))
    assert server.shapes[-1] == ("npy", (3, 1, 8, 8), "uint8")


def test_v2_payloads_go_to_the_models_infer_endpoint(server):
    for payload in ("v2", "v2-binary"):
        cfg = LoadTestConfig(url=server.url, payload=payload, model="staging", batch=2, concurrency=1, duration_s=0.2)
        r = loadtest(cfg)
        assert r.successes > 0 and r.errors == 0
        assert server.shapes[-1] == (payload, "staging", (2, 1, 8, 8), "uint8")


def test_nothing_listening_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(BadInput, match="is the server running"):
        loadtest(LoadTestConfig(url=f"http://127.0.0.1:{port}", duration_s=0.2, warmup_s=0))


@pytest.mark.parametrize(
    "url", ["http://example.com", "http://10.0.0.1:8000", "http://[::ffff:8.8.8.8]/", "http://0.0.0.0:80"]
)
def test_non_loopback_url_is_refused_without_allow_remote(url):
    assert not is_loopback_url(url)
    with pytest.raises(BadInput, match="not loopback"):
        LoadTestConfig(url=url)
    assert LoadTestConfig(url=url, allow_remote=True).allow_remote  # explicit opt-in; nothing is sent


@pytest.mark.parametrize(
    "url", ["http://localhost:8000", "http://127.4.5.6", "http://[::1]:9/v1/predict", "https://127.0.0.1"]
)
def test_loopback_urls_are_accepted(url):
    assert LoadTestConfig(url=url).url == url


@pytest.mark.parametrize(
    "changes",
    [
        {"concurrency": 0},
        {"duration_s": 0},
        {"duration_s": 4000},
        {"warmup_s": -1},
        {"rate": -1},
        {"timeout_s": 0},
        {"max_requests": -1},
        {"payload": "xml"},
        {"payload": "png", "batch": 2},
        {"input_shape": (28, 28)},
        {"input_shape": (2, 8, 8), "payload": "png"},
        {"url": "ftp://127.0.0.1/"},
    ],
)
def test_bad_config_is_refused(changes):
    with pytest.raises(BadInput):
        LoadTestConfig(**changes)


@pytest.mark.slow
def test_cli_json_then_capacity_from_the_file(server, tmp_path):
    proc = dm(None, "loadtest", server.url, "--concurrency", "2", "--duration", "0.5", "--warmup", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "errors", "requests", "concurrency", "duration_s"):
        assert key in out, key
    assert out["concurrency"] == 2 and out["requests"] > 0 and out["errors"] == 0
    (tmp_path / "max.json").write_text(proc.stdout)
    rate = out["throughput_rps"] / 10  # 10 sites at 1/10 of a replica each fill exactly one replica
    plan = dm(
        None,
        "capacity",
        "--sites",
        "10",
        "--rate",
        repr(rate),
        "--headroom",
        "1",
        "--from-loadtest",
        str(tmp_path / "max.json"),
        "--json",
    )
    assert plan.returncode == 0, plan.stderr
    plan = json.loads(plan.stdout)
    assert plan["per_replica_rps"] == out["throughput_rps"] and plan["replicas"] == 2
    refused = dm(None, "loadtest", "http://192.0.2.1:8000", "--duration", "1")
    assert (
        refused.returncode == 2 and "not loopback" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    )
    assert not np.isnan(out["p99_ms"])


@pytest.mark.parametrize(
    "info",
    [
        {"hardware": "cpu"},
        {"hardware": {"device": {"nested": "object"}}},
        {"hardware": {"gpus": [1, 2]}},
        {"hardware": {"cpu": "x" * 5000}},
        {"hardware": {1: "non-string key"}},
        ["not", "a", "dict"],
        None,
    ],
)
def test_a_servers_hardware_is_kept_only_as_a_small_flat_object(info):
    from datamoat.inference.hardware import hardware_from_info

    assert hardware_from_info(info) is None
    assert hardware_from_info({"hardware": {"device": "cpu", "gpus": ["A"], "cpu_limit": None}}) == {
        "device": "cpu",
        "gpus": ["A"],
        "cpu_limit": None,
    }
