"""`datamoat loadtest` (throughput and latency of a running server) and
`datamoat capacity` (replicas needed, with the arithmetic shown)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from datamoat.cli._common import JsonOpt, console, emit
from datamoat.errors import BadInput

__all__ = ["register"]


def _shape(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise BadInput(f"--shape {text!r} is not C,H,W: pass e.g. --shape 1,28,28") from None


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def loadtest_cmd(
    url: str = typer.Argument(..., help="Server URL (http://127.0.0.1:8000) or the full predict endpoint."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", help="Requests in flight (closed loop: workers)."),
    duration: float = typer.Option(10.0, "--duration", "-d", help="Measured seconds (at most 3600)."),
    warmup: float = typer.Option(1.0, "--warmup", help="Seconds of load before measuring, not counted."),
    rate: float = typer.Option(0.0, "--rate", help="Open loop: Poisson arrivals at this many req/s (0 = closed loop)."),
    token: str = typer.Option(None, "--token", envvar="DATAMOAT_PREDICT_TOKEN", help="Predict token (Bearer)."),
    payload: str = typer.Option(
        "json",
        "--payload",
        help="json (nested lists), npy (numpy.save bytes), png (multipart upload) to /v1/predict; v2 or v2-binary "
        "(the Open Inference Protocol, JSON data or the binary extension) to /v2/models/MODEL/infer.",
    ),
    model: str = typer.Option("production", "--model", help="The v2 payloads' model name: the served alias."),
    shape: str = typer.Option(None, "--shape", help="Input C,H,W (default: the server's /v1/model, else 1,28,28)."),
    batch: int = typer.Option(1, "--batch", help="Images per request (json or npy payload)."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds before one request counts as failed."),
    max_requests: int = typer.Option(0, "--max-requests", help="Stop after this many measured requests (0 = no cap)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the random images and arrivals."),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="Allow a non-loopback host (only servers you run)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Throughput and p50/p95/p99 latency of POST /v1/predict (or the v2 infer endpoint) under load."""
    from rich.markup import escape
    from rich.table import Table

    from datamoat.serve.loadtest import LoadTestConfig, loadtest

    config = LoadTestConfig(
        url=url,
        concurrency=concurrency,
        duration_s=duration,
        warmup_s=warmup,
        rate=rate,
        token=token or "",
        payload=payload,
        model=model,
        input_shape=_shape(shape),
        batch=batch,
        timeout_s=timeout,
        max_requests=max_requests,
        seed=seed,
        allow_remote=allow_remote,
    )
    r = loadtest(config)
    from datamoat.inference.hardware import hardware_label

    obj = r.to_dict()
    if as_json:
        emit(obj, True)
        return
    mode = f"open loop at {rate:g} req/s" if r.mode == "open" else "closed loop"
    table = Table("metric", "value", title=f"{url}: {mode}, concurrency {concurrency}, {r.elapsed_s:.1f} s")
    rows = [
        ("requests", str(r.requests)),
        ("successes", str(r.successes)),
        ("errors", f"{r.errors}  {r.errors_by}" if r.errors else "0"),
        ("throughput", f"{r.throughput_rps:.1f} req/s ({r.images_per_s:.1f} images/s)"),
        ("latency p50 / p95 / p99", f"{_ms(r.p50_ms)} / {_ms(r.p95_ms)} / {_ms(r.p99_ms)} ms"),
        ("latency mean / max", f"{_ms(r.mean_ms)} / {_ms(r.max_ms)} ms"),
        ("achieved concurrency", f"{r.achieved_concurrency:.1f} (max {r.max_in_flight} in flight)"),
        ("input", f"{r.config.payload} {list(r.input_shape)} x {r.config.batch}"),
        ("server hardware", hardware_label(r.server_hardware) if r.server_hardware else "not reported"),
    ]
    if r.mode == "open":
        rows.append(("dropped (client behind)", str(r.dropped)))
    for name, value in rows:
        table.add_row(name, escape(value))
    console.print(table)


def capacity_cmd(
    sites: int = typer.Option(..., "--sites", help="Number of sites calling the API."),
    rate: float = typer.Option(..., "--rate", help="Requests per second from each site at peak."),
    p99: float = typer.Option(None, "--p99-ms", help="p99 latency target in ms."),
    per_replica_rps: float = typer.Option(None, "--per-replica-rps", help="One replica's measured max req/s."),
    from_loadtest: list[Path] = typer.Option(
        None,
        "--from-loadtest",
        help="JSON from `datamoat loadtest --json` (repeat: a closed-loop run and --rate runs).",
    ),
    measured_p99: float = typer.Option(
        None, "--measured-p99-ms", help="With --per-replica-rps: p99 measured at max throughput."
    ),
    headroom: float = typer.Option(0.7, "--headroom", help="Share of a replica's max to plan for, in (0, 1]."),
    as_json: bool = JsonOpt,
) -> None:
    """Replicas needed for N sites at R req/s each, with the arithmetic shown."""
    from datamoat.serve.capacity import capacity, from_loadtests, loadtest_hardware

    if per_replica_rps is not None and from_loadtest:
        raise BadInput("pass either --per-replica-rps or --from-loadtest, not both")
    if measured_p99 is not None and from_loadtest:
        raise BadInput("--measured-p99-ms goes with --per-replica-rps; --from-loadtest files carry their own p99")
    notes: list[str] = []
    points = measured_p99
    hardware = None
    if from_loadtest:
        results = {}
        for path in from_loadtest:
            try:
                results[str(path)] = json.loads(Path(path).read_text())
            except (OSError, ValueError) as e:
                raise BadInput(
                    f"cannot read {path} as loadtest JSON ({type(e).__name__}): save it with `datamoat loadtest URL --json > {path}`"
                ) from None
        per_replica_rps, points, notes = from_loadtests(results)  # type: ignore[assignment]
        hardware = loadtest_hardware(results)
    plan = capacity(sites, rate, per_replica_rps, p99_ms=p99, measured_p99_ms=points, headroom=headroom)
    obj = {**plan.to_dict(), "notes": notes, "hardware": hardware}  # hardware: of one replica, as measured
    from rich.markup import escape

    emit(obj, as_json, escape("\n".join([*notes, *plan.lines])) + f"\n[bold]=> {plan.replicas} replicas[/bold]")


def register(app: typer.Typer) -> None:
    app.command("loadtest")(loadtest_cmd)
    app.command("capacity")(capacity_cmd)
