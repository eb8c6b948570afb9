"""Helpers for bench_serving: a `datamoat serve` subprocess, CPU accounting,
raw ONNX Runtime timing and a background load that records every answer."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Server", "CpuMeter", "ort_throughput", "metric_sum", "Recorder"]

_TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc (no psutil here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            todo += [int(c) for c in task.read_text().split()]
    return out


def _machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy (all processes), from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / _TICK


class Server:
    """`datamoat serve` as a real subprocess on a free loopback port; a context manager.

    >>> with Server(reg_url, ["--max-batch-size", "32"], log_dir) as s: loadtest(...s.url...)  # doctest: +SKIP
    """

    def __init__(self, registry_url: str, args: list[str], log_dir: Path, name: str = "srv", env: dict | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        self.log = Path(log_dir) / f"{name}-{self.port}.log"
        self.cmd = [
            sys.executable,
            "-m",
            "datamoat",
            "serve",
            "--registry",
            registry_url,
            "--port",
            str(self.port),
            "--server-id",
            name,
            "--no-predict-auth",
            *args,
        ]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=self.env)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 90.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0, trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.url} not ready after {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cpu_s(self) -> float:
        """CPU seconds of the server and its live child processes (`--workers`)."""
        return sum(_proc_cpu_s(p) for p in _tree(self.proc.pid))

    def metrics(self) -> str:
        import httpx

        return httpx.get(f"{self.url}/metrics", timeout=5.0, trust_env=False).text


def metric_sum(text: str, name: str) -> float:
    """Sum of the samples named exactly `name` in Prometheus text."""
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.split("{")[0].split(" ")[0] == name)


class CpuMeter:
    """CPU used during a block, in cores (CPU seconds / wall seconds): this
    process (the load generator), the server processes, and the whole machine."""

    def __init__(self, servers: list[Server]):
        self.servers = servers

    def __enter__(self) -> CpuMeter:
        self._self = resource.getrusage(resource.RUSAGE_SELF)
        self._srv = [s.cpu_s() for s in self.servers]
        self._all = _machine_busy_s()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self._t
        ru = resource.getrusage(resource.RUSAGE_SELF)
        own = ru.ru_utime - self._self.ru_utime + ru.ru_stime - self._self.ru_stime
        srv = sum(s.cpu_s() - c for s, c in zip(self.servers, self._srv, strict=True))
        every = _machine_busy_s() - self._all
        self.client, self.server, self.machine = own / wall, srv / wall, every / wall
        self.others = max(0.0, self.machine - self.client - self.server)  # other users of this machine

    def line(self) -> str:
        return (
            f"load generator {self.client:.2f} cores, server {self.server:.2f}, "
            f"others on the machine {self.others:.2f} (of {os.cpu_count()})"
        )


def ort_throughput(
    session: Any, x: dict[int, np.ndarray], seconds: float = 1.0, rounds: int = 3
) -> tuple[dict[int, float], dict[int, float]]:
    """Images/s of `session.run` per batch size, per wall second and per CPU
    second of this process: `rounds` interleaved windows, medians.

    `x` maps batch size -> a normalised float32 input (B, C, H, W). The CPU
    figure is what a machine shared with other work cannot take away.
    """
    name = session.get_inputs()[0].name
    wall: dict[int, list[float]] = {b: [] for b in x}
    cpu: dict[int, list[float]] = {b: [] for b in x}
    for xb in x.values():  # warm-up: first calls allocate
        for _ in range(5):
            session.run(None, {name: xb})
    for _ in range(rounds):
        for b, xb in x.items():
            n, t0, c0 = 0, time.perf_counter(), time.process_time()
            while (t := time.perf_counter()) - t0 < seconds / rounds:
                session.run(None, {name: xb})
                n += 1
            wall[b].append(b * n / (t - t0))
            cpu[b].append(b * n / max(time.process_time() - c0, 1e-9))
    med = lambda d: {b: float(np.median(v)) for b, v in d.items()}  # noqa: E731
    return med(wall), med(cpu)


class Recorder:
    """Steady background load: `per_server` closed-loop clients on each URL,
    recording (send time, receive time, server index, status, model_version) per answer."""

    def __init__(self, urls: list[str], body: bytes, per_server: int = 3):
        self.urls, self.body, self.per_server = urls, body, per_server
        self.records: list[tuple[float, float, int, int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    async def _main(self) -> None:
        await asyncio.gather(*(self._worker(i) for i in range(len(self.urls)) for _ in range(self.per_server)))

    async def _worker(self, i: int) -> None:
        import httpx

        headers = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as c:
            while not self._stop.is_set():
                sent = time.perf_counter()
                try:
                    r = await c.post(f"{self.urls[i]}/v1/predict", content=self.body, headers=headers)
                    got = time.perf_counter()
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    self.records.append((sent, got, i, r.status_code, version))
                except (httpx.HTTPError, ValueError):
                    self.records.append((sent, time.perf_counter(), i, -1, None))
                    await asyncio.sleep(0.01)
