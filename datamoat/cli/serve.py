"""Command: serve, a registry alias over HTTP (FastAPI under uvicorn)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import typer

from datamoat.cli._common import CertOpt, KeyOpt, err_console, open_ws, tls_options
from datamoat.errors import BadInput


def serve(
    alias: str = typer.Option("production", "--alias", "-a", help="Registry alias to serve."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="Inputs per model call; 1 turns batching off."),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", help="Longest wait for a batch to fill."),
    poll_interval: float = typer.Option(0.1, "--poll-interval", help="Seconds between registry checks."),
    fence: float = typer.Option(
        5.0,
        "--fence",
        help="Seconds without a registry read after which this server answers 503, as it could miss a takedown "
        "(0: never, which gives up the takedown guarantee while the registry is out of reach).",
    ),
    registry: str = typer.Option(None, "--registry", envvar="DATAMOAT_REGISTRY_URL", help="Registry database URL."),
    no_predict_auth: bool = typer.Option(False, "--no-predict-auth", help="Let /v1/predict run without a token."),
    no_review_queue: bool = typer.Option(
        False, "--no-review-queue", help="Do not queue answers that need review for /review."
    ),
    review_max_open: int = typer.Option(
        10_000, "--review-max-open", help="Open review items the registry may hold; more are counted, not queued."
    ),
    ort_threads: int = typer.Option(0, "--ort-threads", help="ONNX Runtime threads (0: all cores)."),
    device: str = typer.Option(
        "auto",
        "--device",
        help="ONNX Runtime's execution provider: auto (CUDA where the installed onnxruntime offers it, else the "
        "CPU), cpu or cuda (needs onnxruntime-gpu).",
    ),
    drift_window: int = typer.Option(
        500, "--drift-window", help="Answers per live drift window tested against the version's profile (0: off)."
    ),
    accuracy_floor: float = typer.Option(
        0.0, "--accuracy-floor", help="Webhook when a window's label-free accuracy estimate is below it (0: never)."
    ),
    server_id: str = typer.Option(
        None, "--server-id", help="Name this server reports to the registry (default host:port:pid)."
    ),
    url: str = typer.Option(None, "--url", help="Public URL to register (default http://host:port)."),
    workers: int = typer.Option(
        1, "--workers", help="Server processes on the port, each with its own batcher and model session."
    ),
    open_paths: list[str] = typer.Option(
        [], "--open", help="Serve this read-only path without a token: /v1/model, /metrics or /docs (repeatable)."
    ),
    limit_concurrency: int = typer.Option(
        1024, "--limit-concurrency", help="Connections and tasks per process; past it uvicorn answers 503."
    ),
    ssl_certfile: Path = CertOpt,
    ssl_keyfile: Path = KeyOpt,
    log_level: str = typer.Option("warning", "--log-level"),
) -> None:
    """Serve an alias: predict, feedback, review page and queue, model info, health, metrics and control."""
    if not 1 <= workers <= 64:
        raise BadInput(f"--workers must be in 1..64, got {workers}")
    tls = tls_options(ssl_certfile, ssl_keyfile)
    scheme = "https" if tls else "http"
    from datamoat.inference.hardware import resolve_ort_device

    on = resolve_ort_device(device)  # a device this machine cannot serve on: one line, before anything opens
    import uvicorn

    from datamoat.registry.core import Registry, registry_url
    from datamoat.serve import ServeConfig, create_app

    reg = Registry(registry_url(None if registry else open_ws(), registry))
    cfg = ServeConfig(
        alias=alias,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        poll_interval_s=poll_interval,
        fence_s=fence,
        require_predict_token=not no_predict_auth,
        review_queue=not no_review_queue,
        review_max_open=review_max_open,
        open_paths=tuple(open_paths),
        ort_threads=ort_threads,
        device=device,
        drift_window=drift_window,
        accuracy_floor=accuracy_floor,
        server_id=server_id or f"{socket.gethostname()}:{port}:{os.getpid()}",
        url=url or f"{scheme}://{host}:{port}",
    )
    if workers == 1:
        app = create_app(reg, cfg)
        err_console.print(f"serving alias {alias!r} on {cfg.url} as {cfg.server_id} ({on})", highlight=False)
        uvicorn.run(
            app, host=host, port=port, log_level=log_level, access_log=False, limit_concurrency=limit_concurrency, **tls
        )
        return
    # One event loop is one core of HTTP work: more processes share the port (uvicorn's workers), each
    # building its own app from the environment and acknowledging control commands on its own.
    from datamoat.serve.app import CONFIG_ENV, REGISTRY_ENV
    from datamoat.serve.metrics import MULTIPROC_ENV

    reg.generation()  # a bad URL or an unreachable database fails here, once, not in every worker
    os.environ[CONFIG_ENV], os.environ[REGISTRY_ENV] = cfg.to_json(), reg.url
    # /metrics sums every worker's values from this folder (prometheus_client's multiprocess mode). A folder
    # the operator named is theirs to wipe between runs; ours is fresh and goes when the server stops.
    own = not os.environ.get(MULTIPROC_ENV)
    if own:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="datamoat-metrics-")
    err_console.print(
        f"serving alias {alias!r} on {cfg.url} as {cfg.server_id}/w<pid> x {workers} ({on})", highlight=False
    )
    try:
        uvicorn.run(
            "datamoat.serve.app:app_from_env",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            limit_concurrency=limit_concurrency,
            **tls,
        )
    finally:
        if own:
            shutil.rmtree(os.environ.pop(MULTIPROC_ENV), ignore_errors=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
