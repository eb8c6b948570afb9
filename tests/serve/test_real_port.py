"""Two `datamoat serve` processes on real ports sharing one SQLite registry:
a rollback reaches both within the documented bound."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout}s: {log.read_text()}")


@pytest.mark.slow
def test_rollback_reaches_two_servers_on_real_ports(reg, artifacts, tmp_path):
    reg.r.promote(reg.v2, "production", actor="test")  # production: v1 -> v2, so rollback goes to v1
    url = reg.r.url
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs, urls, logs = [], [], []
    try:
        for i in range(2):
            port = _free_port()
            log = tmp_path / f"server{i}.log"
            cmd = [
                sys.executable,
                "-m",
                "datamoat",
                "--home",
                str(artifacts.ws.root),
                "serve",
                "--open",
                "/metrics",
                "--open",
                "/v1/model",
                "--port",
                str(port),
                "--registry",
                url,
                "--ort-threads",
                "1",
                "--server-id",
                f"srv{i}",
                "--max-wait-ms",
                "1",
            ]
            procs.append(subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env))
            urls.append(f"http://127.0.0.1:{port}")
            logs.append(log)
        for u, p, log in zip(urls, procs, logs, strict=True):
            _wait_ready(u, p, log)
        h = {"Authorization": f"Bearer {reg.tokens['predict']}"}
        body = {"inputs": artifacts.x[:3].tolist()}
        assert [httpx.post(f"{u}/v1/predict", json=body, headers=h).json()["model_version"] for u in urls] == [
            reg.v2
        ] * 2

        out = reg.r.rollback("production", actor="oncall", reason="v2 regressed")
        # The bound (datamoat/serve/control.py): poll 0.1 s + load + drain (<= 1 s) + a heartbeat
        # write; 10 s leaves room for a loaded CI machine, and the return says who acknowledged.
        acks = reg.r.wait_for_acks(out["generation"], timeout=10)
        assert sorted(acks["acked"]) == ["srv0", "srv1"] and acks["missing"] == []
        # Acknowledged means applied: the very next answer on each port is the new version.
        for u in urls:
            r = httpx.post(f"{u}/v1/predict", json=body, headers=h)
            assert r.json()["model_version"] == reg.v1
            assert r.json()["predictions"][0]["label_index"] == int(reg.ref[reg.v1][0].argmax())
            assert httpx.get(f"{u}/v1/model").json()["acked_generation"] == out["generation"]
        # A loadtest records what the real server says it serves on, which capacity plans then name.
        lt = subprocess.run(
            [sys.executable, "-m", "datamoat", "loadtest", urls[0], "--concurrency", "2", "--duration", "0.5",
             "--warmup", "0", "--token", reg.tokens["predict"], "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert lt.returncode == 0, lt.stderr
        from datamoat.inference.hardware import describe_hardware

        assert json.loads(lt.stdout)["server_hardware"] == describe_hardware("cpu")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    assert {s["id"] for s in reg.r.servers()} & {"srv0", "srv1"} == set()  # both forgot themselves on shutdown


@pytest.mark.slow
def test_workers_share_one_port_and_each_acknowledges(reg, artifacts, tmp_path):
    reg.r.promote(reg.v2, "production", actor="test")
    port = _free_port()
    u, log = f"http://127.0.0.1:{port}", tmp_path / "workers.log"
    cmd = [
        sys.executable,
        "-m",
        "datamoat",
        "--home",
        str(artifacts.ws.root),
        "serve",
        "--open",
        "/metrics",
        "--open",
        "/v1/model",
        "--port",
        str(port),
        "--registry",
        reg.r.url,
        "--ort-threads",
        "1",
        "--server-id",
        "multi",
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        _wait_ready(u, proc, log)
        deadline = time.monotonic() + 30
        while len(workers := [s["id"] for s in reg.r.servers() if s["id"].startswith("multi/w")]) < 2:
            assert time.monotonic() < deadline, f"workers registered: {workers}; {log.read_text()}"
            time.sleep(0.1)
        out = reg.r.rollback("production", actor="oncall", reason="v2 regressed")
        acks = reg.r.wait_for_acks(out["generation"], timeout=10)
        assert sorted(acks["acked"]) == sorted(workers) and acks["missing"] == []
        # Whichever worker takes a connection, it answers from the rolled-back-to version.
        h = {"Authorization": f"Bearer {reg.tokens['predict']}"}
        seen = {
            httpx.post(f"{u}/v1/predict", json={"inputs": artifacts.x[:1].tolist()}, headers=h).json()["model_version"]
            for _ in range(20)
        }
        assert seen == {reg.v1}
        # Each scrape reaches one worker, yet counts the answers of both (prometheus multiprocess mode).
        for _ in range(6):
            text = httpx.get(f"{u}/metrics").text
            assert 'datamoat_requests_total{endpoint="/v1/predict",status="200"} 20.0' in text, text[-2000:]
            assert f"datamoat_generation {float(out['generation'])}" in text, [
                ln for ln in text.splitlines() if "generation" in ln
            ]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not [s for s in reg.r.servers() if s["id"].startswith("multi/w")]  # each worker forgot itself


NO_CUDA_PROVIDER = "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--workers", "0"], "--workers must be in 1..64"),
        (["--workers", "65"], "--workers must be in 1..64"),
        pytest.param(
            ["--device", "cuda"],
            "install onnxruntime-gpu",
            marks=pytest.mark.skipif(not NO_CUDA_PROVIDER, reason="checks the refusal without a CUDA provider"),
        ),
    ],
)
def test_a_bad_serve_option_is_one_line_and_exit_2_before_anything_is_created(tmp_path, option, message):
    cmd = [sys.executable, "-m", "datamoat", "serve", "--registry", f"sqlite:///{tmp_path / 'r.db'}", *option]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "r.db").exists()
