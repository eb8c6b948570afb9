"""The measured inputs of a plan, each value with the file it came from.

- a loadtest: `datamoat loadtest URL --json` output, one file per run (a
  closed-loop run for the maximum throughput, `--rate` runs for p99 at lower
  loads), read by `datamoat.serve.capacity.from_loadtests`;
- the edge figures: `datamoat fleet status --json` (each device's heartbeat:
  latency of its recent predictions, memory, model, counters) or the edge
  benchmark's results (``bench/results/edge.json``: one row per bundle);
- compress's candidate table: ``candidates.json`` from `datamoat compress`,
  or a benchmark's ``summary.recipe_candidates``.

Every file is read whole, so each has a size cap (`MAX_BYTES`); a missing or
unreadable one is a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from datamoat.configs import check
from datamoat.errors import BadInput, NotFound

__all__ = ["Measured", "EdgeFigures", "Inputs", "read_json", "read_loadtests", "read_edge", "read_candidates"]

MAX_BYTES = 16 << 20  # a loadtest, a fleet of thousands of devices or a candidate table fits in far less


@dataclasses.dataclass(frozen=True)
class Measured:
    """A number datamoat measured, and where: ``source`` is the file (and the key in it)."""

    value: float
    unit: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit, "source": self.source}


@dataclasses.dataclass
class EdgeFigures:
    """One device's measured latency (ms), memory (MiB) and model, from one file."""

    p50_ms: Measured
    p99_ms: Measured
    rss_mb: Measured
    model: str  # what the figures were measured with, as the file names it
    model_bytes: Measured | None = None  # the bundle's size, where the file gives it
    low_confidence_rate: Measured | None = None  # abstained / predictions, from fleet counters
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Inputs:
    """Everything measured that a plan reads: parsed loadtests by file, edge figures, candidates."""

    loadtests: dict[str, dict[str, Any]]
    edge: EdgeFigures
    candidates: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    candidates_source: str = ""


def read_json(path: str | Path, what: str, hint: str) -> Any:
    """The parsed JSON of `path`, or a one-line error naming `what` it should be and how to make it (`hint`).

    >>> read_json("/nonexistent.json", "loadtest", "datamoat loadtest URL --json > FILE")
    Traceback (most recent call last):
    ...
    datamoat.errors.NotFound: no loadtest file at /nonexistent.json: make it with `datamoat loadtest URL --json > FILE`
    """
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"no {what} file at {p}: make it with `{hint}`")
    check(p.stat().st_size <= MAX_BYTES, f"{p} is over {MAX_BYTES >> 20} MiB: not a {what} file")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read {p} as {what} JSON ({type(e).__name__}): make it with `{hint}`") from None


def read_loadtests(paths: list[str | Path]) -> dict[str, dict[str, Any]]:
    """{file: parsed `datamoat loadtest --json`} for each path; `from_loadtests` checks their content."""
    check(len(paths) > 0, "no loadtest given: pass --loadtest FILE.json from `datamoat loadtest URL --json`")
    out = {}
    for p in paths:
        obj = read_json(p, "loadtest", f"datamoat loadtest URL --json > {p}")
        check(isinstance(obj, dict) and "throughput_rps" in obj, f"{p} is not a `datamoat loadtest --json` result")
        out[str(p)] = obj
    return out


def _ms(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def read_edge(path: str | Path, bundle: str = "int8", device_id: str = "") -> EdgeFigures:
    """A device's figures from `fleet status --json` (heartbeats) or the edge benchmark's results."""
    hint = "datamoat fleet status --json > FILE (devices running `datamoat edge run`)"
    obj = read_json(path, "edge figures", hint)
    check(isinstance(obj, dict), f"{path}: not an edge figures object")
    if "devices" in obj:
        return _from_fleet(str(path), obj["devices"], device_id)
    summary = obj.get("summary")
    check(
        isinstance(summary, dict) and isinstance(summary.get(bundle), dict),
        f"{path} is neither `fleet status --json` nor an edge benchmark with a {bundle!r} row",
    )
    row, at = summary[bundle], f"{path} summary.{bundle}"
    for key in ("http_p50_ms", "http_p95_ms", "peak_rss_mb"):
        check(_ms(row.get(key)), f"{at} has no positive {key}")
    notes = [f"edge latency is the benchmark's HTTP path on the device ({at})"]
    if _ms(row.get("http_p99_ms")):
        p99 = Measured(float(row["http_p99_ms"]), "ms", f"{at}.http_p99_ms")
    else:
        p99 = Measured(float(row["http_p95_ms"]), "ms", f"{at}.http_p95_ms")
        notes.append(f"{at} has no p99: its p95 stands in, so the edge tail is understated")
    return EdgeFigures(
        p50_ms=Measured(float(row["http_p50_ms"]), "ms", f"{at}.http_p50_ms"),
        p99_ms=p99,
        rss_mb=Measured(float(row["peak_rss_mb"]), "MiB", f"{at}.peak_rss_mb"),
        model=bundle,
        model_bytes=Measured(float(row["bundle_kb"]) * 1024, "bytes", f"{at}.bundle_kb")
        if row.get("bundle_kb")
        else None,
        notes=notes,
    )


def _from_fleet(path: str, devices: Any, device_id: str) -> EdgeFigures:
    check(isinstance(devices, list), f"{path}: devices is not a list")
    live = [
        d for d in devices if isinstance(d, dict) and isinstance(d.get("perf"), dict) and d["perf"].get("latency_ms")
    ]
    if device_id:
        live = [d for d in live if d.get("device_id") == device_id]
    check(
        bool(live),
        f"{path} has no device{' ' + device_id if device_id else ''} reporting latency: run `datamoat edge run` "
        "(this version's heartbeat carries it) and let it answer requests",
    )
    d = max(live, key=lambda d: d["perf"]["latency_ms"].get("p99", 0))  # the slowest device sets the plan
    perf, lat, at = d["perf"], d["perf"]["latency_ms"], f"{path} device {d.get('device_id')}"
    check(_ms(lat.get("p50")) and _ms(lat.get("p99")), f"{at}: latency without p50/p99")
    check(_ms(perf.get("rss_mb")), f"{at}: no resident memory (rss_mb) in its heartbeat")
    model = perf.get("model") or {}
    c = d.get("counters") or {}
    rate = None
    if isinstance(c.get("predictions"), int) and c["predictions"] > 0:
        rate = Measured(c.get("abstained", 0) / c["predictions"], "share", f"{at} counters.abstained/predictions")
    return EdgeFigures(
        p50_ms=Measured(float(lat["p50"]), "ms", f"{at} perf.latency_ms.p50"),
        p99_ms=Measured(float(lat["p99"]), "ms", f"{at} perf.latency_ms.p99"),
        rss_mb=Measured(float(perf["rss_mb"]), "MiB", f"{at} perf.rss_mb"),
        model=str(model.get("name") or ""),
        low_confidence_rate=rate,
        notes=[
            f"edge latency is the runtime's in-process predict path over its last {lat.get('n')} predictions "
            f"on {at} (the slowest of {len(live)} reporting); HTTP on the device adds to it"
        ],
    )


def read_candidates(path: str | Path) -> list[dict[str, Any]]:
    """compress's candidate rows (name, accuracy, bytes, latency_ms_b1), from candidates.json or a benchmark."""
    obj = read_json(path, "candidate table", "datamoat compress TEACHER (writes candidates.json)")
    rows = obj.get("candidates") if isinstance(obj, dict) else None
    if rows is None and isinstance(obj, dict) and isinstance(obj.get("summary"), dict):
        rows = obj["summary"].get("recipe_candidates")
    if not isinstance(rows, list) or not rows:
        raise BadInput(f"{path} has no candidate rows (candidates.json from compress)")
    for r in rows:
        ok = isinstance(r, dict) and isinstance(r.get("name"), str)
        ok = ok and all(_ms(r.get(k)) for k in ("accuracy", "bytes", "latency_ms_b1"))
        check(ok, f"{path}: a candidate row without name, accuracy, bytes and latency_ms_b1: {str(r)[:80]}")
    return rows
