"""Load test a running prediction server over HTTP: throughput and latency.

`loadtest(LoadTestConfig(url=...))` drives `POST /v1/predict` with N
concurrent asyncio workers (closed loop: each sends its next request when the
last one answers) or with Poisson arrivals at a fixed rate (open loop, to read
p99 at a chosen fraction of the maximum throughput). Payloads are random
images drawn once from a seeded generator and encoded before the clock
starts, so the client spends its time on HTTP, not on JSON or PNG encoding.
It talks HTTP only: any server with that endpoint can be measured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np

from datamoat.configs import Config, check, check_choice
from datamoat.errors import BadInput

__all__ = ["LoadTestConfig", "LoadTestResult", "loadtest", "is_loopback_url"]

_DEFAULT_SHAPE = (1, 28, 28)
_POOL = 16  # distinct pre-encoded payloads, cycled
PAYLOADS = ("json", "npy", "png", "v2", "v2-binary")


def is_loopback_url(url: str) -> bool:
    """True when the URL's host is this machine: 127.0.0.0/8, ::1 or localhost.

    >>> is_loopback_url("http://127.0.0.1:8000"), is_loopback_url("http://[::1]/"), is_loopback_url("http://10.0.0.5")
    (True, True, False)
    """
    host = (urlsplit(url).hostname or "").rstrip(".")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a DNS name other than localhost: resolving it could point anywhere
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@dataclasses.dataclass
class LoadTestConfig(Config):
    """What to load, how hard and for how long.

    `url` is the server (``http://127.0.0.1:8000``, the predict path is then
    ``/v1/predict``) or the full endpoint URL. Only loopback hosts are allowed
    unless `allow_remote=True`: a load test is a denial-of-service attack when
    aimed at the wrong host, so hammering anything but this machine must be an
    explicit decision (your own staging server), never a typo or a pasted
    production URL. `rate` > 0 switches to open loop (Poisson arrivals, at
    most `concurrency` in flight); 0 is closed loop. `warmup_s` runs before the
    `duration_s` window and is not counted. `max_requests` (0 = no cap) can end
    the window early; `duration_s` always ends it. `input_shape` (C, H, W)
    empty means: ask `GET /v1/model` for ``input_shape``, else (1, 28, 28).
    `batch` > 1 sends (B, C, H, W) JSON arrays.

    >>> LoadTestConfig(url="http://localhost:8000", concurrency=4).concurrency
    4
    """

    url: str = "http://127.0.0.1:8000"
    concurrency: int = 8
    duration_s: float = 10.0
    warmup_s: float = 1.0
    rate: float = 0.0
    token: str = ""
    payload: str = "json"  # json | npy | png (/v1/predict) | v2 | v2-binary (the Open Inference Protocol)
    model: str = "production"  # the v2 model name: the alias
    input_shape: tuple[int, ...] = ()
    batch: int = 1
    timeout_s: float = 10.0
    max_requests: int = 0
    seed: int = 0
    allow_remote: bool = False

    def validate(self) -> None:
        host, shape = urlsplit(self.url).hostname, tuple(self.input_shape)
        rules = [
            (
                urlsplit(self.url).scheme in ("http", "https") and bool(host),
                f"url {self.url!r} is not http(s)://host[:port]",
            ),
            (
                self.allow_remote or is_loopback_url(self.url),
                f"url host {host!r} is not loopback: load testing another machine needs allow_remote=True "
                "(--allow-remote), and only against servers you run",
            ),
            (isinstance(self.concurrency, int) and 1 <= self.concurrency <= 4096, "concurrency must be 1..4096"),
            (0 < self.duration_s <= 3600, "duration_s must be in (0, 3600] seconds"),
            (0 <= self.warmup_s <= 600, "warmup_s must be in [0, 600] seconds"),
            (0 <= self.rate <= 100_000, "rate must be 0 (closed loop) or up to 100000 req/s"),
            (0 < self.timeout_s <= 600, "timeout_s must be in (0, 600] seconds"),
            (self.max_requests >= 0, "max_requests must be >= 0 (0 = no cap)"),
            (1 <= self.batch <= 1024, "batch must be 1..1024 images per request"),
            (
                self.payload != "png" or self.batch == 1,
                "a png payload carries one image: use json or npy for batch > 1",
            ),
            (
                shape == () or (len(shape) == 3 and all(isinstance(d, int) and 1 <= d <= 4096 for d in shape)),
                f"input_shape must be (C, H, W) with each in 1..4096, got {shape}",
            ),
            (self.payload != "png" or shape == () or shape[0] in (1, 3), "a png payload needs 1 or 3 channels"),
        ]
        for ok, message in rules:  # NaN fails every comparison, so it is refused too
            check(ok, message)
        check_choice("payload", self.payload, PAYLOADS)
        check(bool(self.model) and "/" not in self.model, f"invalid model name {self.model!r}")


@dataclasses.dataclass
class LoadTestResult:
    """What one run measured; latencies are over successful requests only."""

    config: LoadTestConfig
    mode: str  # "closed" or "open"
    input_shape: tuple[int, int, int]
    requests: int  # sent in the measured window
    successes: int
    errors: int
    errors_by: dict[str, int]  # HTTP status ("500") or exception type ("ReadTimeout") -> count
    dropped: int  # open loop: arrivals the client could not send before the window closed
    warmup_requests: int
    elapsed_s: float  # window start to the last counted answer
    throughput_rps: float  # successful requests / elapsed_s
    images_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    achieved_concurrency: float  # mean requests in flight (time on the wire / elapsed)
    max_in_flight: int
    latencies_ms: np.ndarray = dataclasses.field(repr=False, default_factory=lambda: np.zeros(0))
    # What the server said it serves on (its /v1/model "hardware"), so a capacity plan names what was
    # measured; None from a server that does not say.
    server_hardware: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every measured number, the config with its token redacted."""
        d = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("config", "latencies_ms")
        }
        cfg = self.config.to_dict()
        cfg["token"] = "<redacted>" if cfg["token"] else ""
        d.update(
            url=self.config.url,
            concurrency=self.config.concurrency,
            rate=self.config.rate,
            duration_s=self.config.duration_s,
            payload=self.config.payload,
            batch=self.config.batch,
            input_shape=list(self.input_shape),
            config=cfg,
        )
        return d


def _endpoints(url: str, payload: str = "json", model: str = "production") -> tuple[str, str]:
    """(predict URL, model-info URL) from a base URL or a full predict URL; v2 payloads go to the
    model's infer endpoint.

    >>> _endpoints("http://h:8000", "v2")
    ('http://h:8000/v2/models/production/infer', 'http://h:8000/v1/model')
    """
    parts = urlsplit(url)
    base = parts.path in ("", "/")
    predict = url.rstrip("/") + "/v1/predict" if base else url
    info = urljoin(predict, "model") if base or not payload.startswith("v2") else urljoin(url, "/v1/model")
    if payload.startswith("v2") and base:
        return url.rstrip("/") + f"/v2/models/{model}/infer", info
    return predict, info  # .../v1/predict -> .../v1/model


def _shape_from_info(info: Any) -> tuple[int, int, int] | None:
    """(C, H, W) from the server's `input_shape`, ignoring a symbolic batch dim."""
    raw = info.get("input_shape") if isinstance(info, dict) else None
    if not isinstance(raw, list):
        return None
    dims = [d for d in raw if isinstance(d, int) and not isinstance(d, bool) and d > 0]
    if len(dims) == 2:
        dims = [1, *dims]
    return tuple(dims[-3:]) if len(dims) >= 3 else None  # type: ignore[return-value]


def _v2_body(batch: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """An Open Inference Protocol infer request for uint8 images (B, C, H, W): JSON data, or the
    binary tensor extension (a JSON header, then the raw bytes)."""
    tensor: dict[str, Any] = {"name": "input", "shape": list(batch.shape), "datatype": "UINT8"}
    if not binary:
        return json.dumps({"inputs": [{**tensor, "data": batch.ravel().tolist()}]}).encode(), {
            "Content-Type": "application/json"
        }
    raw = np.ascontiguousarray(batch).tobytes()
    head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]}).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    return head + raw, headers


def _payloads(
    config: LoadTestConfig, shape: tuple[int, int, int], rng: np.random.Generator
) -> list[tuple[bytes, dict[str, str]]]:
    """A fixed pool of (body, headers), encoded once before the clock starts."""
    import httpx

    imgs = rng.integers(0, 256, (_POOL, config.batch, *shape), dtype=np.uint8)  # (P, B, C, H, W)
    out = []
    for batch in imgs:
        if config.payload.startswith("v2"):
            out.append(_v2_body(batch, config.payload == "v2-binary"))
            continue
        if config.payload == "json":
            arr = batch if config.batch > 1 else batch[0]  # (B, C, H, W) or (C, H, W)
            out.append((json.dumps({"inputs": arr.tolist()}).encode(), {"Content-Type": "application/json"}))
            continue
        import io

        if config.payload == "npy":
            buf = io.BytesIO()
            np.save(buf, batch if config.batch > 1 else batch[0])  # uint8 (B, C, H, W) or (C, H, W)
            out.append((buf.getvalue(), {"Content-Type": "application/x-npy"}))
            continue

        from PIL import Image

        img = batch[0]  # (C, H, W)
        pil = Image.fromarray(img[0]) if shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0))
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        # Let httpx build the multipart body once; every request then reuses the bytes.
        req = httpx.Request("POST", "http://x/", files={"file": ("image.png", buf.getvalue(), "image/png")})
        out.append((req.read(), {"Content-Type": req.headers["Content-Type"]}))
    return out


class _Run:
    """Shared counters for one run; asyncio is single threaded, so no locks."""

    def __init__(self, config: LoadTestConfig, url: str, payloads: list[tuple[bytes, dict[str, str]]]) -> None:
        self.config, self.url, self.payloads = config, url, payloads
        self.auth = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self.start = time.perf_counter()
        self.t0 = self.start + config.warmup_s  # measurement window [t0, t1)
        self.t1 = self.t0 + config.duration_s
        self.t_stop = self.t1  # when issuing stopped (earlier if max_requests was reached)
        self.t_last = self.t0
        self.issued = self.warmup = self.dropped = self.in_flight = self.max_in_flight = 0
        self.busy_s = 0.0
        self.next = 0
        self.ok_ms: list[float] = []
        self.errors: Counter[str] = Counter()

    def take(self, now: float) -> bool | None:
        """Claim the next request: True counted, False warm-up, None stop issuing."""
        if now >= self.t1:
            return None
        if now < self.t0:
            self.warmup += 1
            return False
        if self.config.max_requests and self.issued >= self.config.max_requests:
            self.t_stop = min(self.t_stop, now)
            return None
        self.issued += 1
        return True

    async def send(self, client: Any, counted: bool, since: float) -> None:
        """One POST; latency runs from `since` (the scheduled arrival in open loop)."""
        import aiohttp

        body, headers = self.payloads[self.next % len(self.payloads)]
        self.next += 1
        self.in_flight += 1
        if counted:
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        sent = time.perf_counter()
        kind: str | None
        try:
            async with asyncio.timeout(self.config.timeout_s):  # the whole request, body read included
                async with client.post(self.url, data=body, headers={**self.auth, **headers}) as r:
                    await r.read()
            kind = None if 200 <= r.status < 300 else str(r.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            kind = type(e).__name__
        finally:
            self.in_flight -= 1
        end = time.perf_counter()
        if not counted:
            return
        self.busy_s += end - sent
        self.t_last = max(self.t_last, end)
        if kind is None:
            self.ok_ms.append((end - since) * 1000.0)
        else:
            self.errors[kind] += 1

    async def closed_worker(self, client: Any) -> None:
        while (counted := self.take(now := time.perf_counter())) is not None:
            await self.send(client, counted, now)

    async def open_loop(self, clients: list[Any], rng: np.random.Generator) -> None:
        """Poisson arrivals on an absolute schedule, so a slow server does not
        slow the offered load (no coordinated omission). An arrival waits for
        an idle client (at most `concurrency` in flight)."""
        idle: asyncio.Queue = asyncio.Queue()
        for c in clients:
            idle.put_nowait(c)
        tasks: set[asyncio.Task] = set()

        async def arrival(at: float, counted: bool) -> None:
            client = await idle.get()
            try:
                if time.perf_counter() >= self.t1:  # the client fell behind: say so, don't stretch the run
                    self.dropped += int(counted)
                    return
                await self.send(client, counted, at)
            finally:
                idle.put_nowait(client)

        at = self.start
        while True:
            at += rng.exponential(1.0 / self.config.rate)
            counted = self.take(at)
            if counted is None:
                break
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            task = asyncio.create_task(arrival(at, counted))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*list(tasks))


async def _probe(client: Any, info_url: str, headers: dict[str, str], timeout_s: float) -> Any:
    """GET the model info; refuse early when nothing listens at the URL."""
    import aiohttp

    try:
        async with asyncio.timeout(timeout_s), client.get(info_url, headers=headers) as r:
            body = await r.read()
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise BadInput(
            f"cannot reach {info_url} ({type(e).__name__}): is the server running? start one with `datamoat serve`"
        ) from e
    try:
        return json.loads(body) if r.status == 200 else None
    except ValueError:
        return None


async def _run(config: LoadTestConfig) -> LoadTestResult:
    import ssl

    import aiohttp

    predict_url, info_url = _endpoints(config.url, config.payload, config.model)
    rng = np.random.default_rng(config.seed)
    # aiohttp, not httpx, for the load: on one machine the client's CPU is taken from the server it measures,
    # and aiohttp spends a fraction of httpx's CPU per request (bench/results/serving.md measures it).
    # One pooled connection per in-flight slot; aiohttp ignores HTTP(S)_PROXY unless asked (trust_env=False).
    connector = aiohttp.TCPConnector(limit=config.concurrency, ssl=ssl.create_default_context())
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        auth = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        info = await _probe(session, info_url, auth, config.timeout_s)
        shape = tuple(config.input_shape) or _shape_from_info(info) or _DEFAULT_SHAPE
        payloads = _payloads(config, shape, rng)  # type: ignore[arg-type]
        run = _Run(config, predict_url, payloads)
        clients = [session] * config.concurrency  # in-flight slots; the connector holds the connections
        work: Awaitable[Any]
        if config.rate > 0:
            work = run.open_loop(clients, rng)
        else:
            work = asyncio.gather(*(run.closed_worker(c) for c in clients))
        # Belt and braces: every request is bounded by timeout_s, so this deadline only fires on a bug.
        try:
            await asyncio.wait_for(work, timeout=config.warmup_s + config.duration_s + config.timeout_s + 5.0)
        except TimeoutError:
            run.errors["RunDeadline"] += 1
    from datamoat.inference.hardware import hardware_from_info

    return dataclasses.replace(_result(config, run, shape), server_hardware=hardware_from_info(info))  # type: ignore[arg-type]


def _f(v: float | None) -> float | None:
    return None if v is None else float(v)


def _result(config: LoadTestConfig, run: _Run, shape: tuple[int, int, int]) -> LoadTestResult:
    lat = np.asarray(run.ok_ms, dtype=np.float64)
    elapsed = max(run.t_last, run.t_stop) - run.t0
    stats: dict[str, float | None] = dict.fromkeys(("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms"))
    if lat.size:
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        stats = {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": lat.max(), "mean_ms": lat.mean()}
    n_err = sum(run.errors.values())
    return LoadTestResult(
        config=config,
        mode="open" if config.rate > 0 else "closed",
        input_shape=shape,
        requests=len(lat) + n_err,
        successes=len(lat),
        errors=n_err,
        errors_by=dict(sorted(run.errors.items())),
        dropped=run.dropped,
        warmup_requests=run.warmup,
        elapsed_s=elapsed,
        throughput_rps=len(lat) / elapsed,
        images_per_s=len(lat) * config.batch / elapsed,
        p50_ms=_f(stats["p50_ms"]),
        p95_ms=_f(stats["p95_ms"]),
        p99_ms=_f(stats["p99_ms"]),
        max_ms=_f(stats["max_ms"]),
        mean_ms=_f(stats["mean_ms"]),
        achieved_concurrency=run.busy_s / elapsed,
        max_in_flight=run.max_in_flight,
        latencies_ms=lat,
    )


def loadtest(config: LoadTestConfig) -> LoadTestResult:
    """Load the server at `config.url` for warm-up + duration seconds and measure it.

    Stops by itself: no request starts after the window closes and each one is
    cut at `timeout_s`, so a run lasts at most warmup + duration + timeout.
    Call it from synchronous code (it runs its own event loop).

    >>> r = loadtest(LoadTestConfig(url="http://127.0.0.1:8000", concurrency=32, duration_s=30))  # doctest: +SKIP
    >>> r.throughput_rps, r.p99_ms  # doctest: +SKIP
    (812.4, 61.3)
    """
    return asyncio.run(_run(config))
