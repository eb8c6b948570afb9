"""A small plan whose every number is worked out by hand in the tests."""

from __future__ import annotations

import json

import pytest

from datamoat.plan import Inputs, PlanConfig
from datamoat.plan.inputs import EdgeFigures, Measured

# One replica: 100 req/s at most (p99 50 ms there), p99 30 ms at 50 req/s.
LOADTESTS = {
    "max.json": {"mode": "closed", "concurrency": 32, "throughput_rps": 100.0, "p99_ms": 50.0},
    "half.json": {"mode": "open", "rate": 50.0, "throughput_rps": 50.0, "p99_ms": 30.0},
}


def spec(**over) -> dict:
    d = {
        "sites": [
            {"name": "a", "peak_rps": 10, "mean_rps": 4, "rtt_ms": 20},
            {"name": "b", "peak_rps": 30, "mean_rps": 6, "rtt_ms": 40},
        ],
        "p99_budget_ms": 100,
        "headroom": 0.5,
        "cloud": {
            "price_per_hour": 0.05,
            "private_server_month": 50,
            "zones": 2,
            "bytes_per_request": 1000,
            "transfer_per_gb": 0.1,
        },  # fmt: skip
        "edge": {
            "device_price": 720,
            "lifetime_months": 36,
            "power_w": 5,
            "kwh_price": 0.2,
            "lan_rtt_ms": 1,
            "failures_per_year": 1.2,
            "repair_hours": 24,
            "low_confidence_rate": 0.1,
            "upload_bytes": 500,
        },  # fmt: skip
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return d


def edge_figures(p50=2.0, p99=4.0, rss=130.0, model="big", model_bytes=None) -> EdgeFigures:
    return EdgeFigures(
        Measured(p50, "ms", "edge.json p50"),
        Measured(p99, "ms", "edge.json p99"),
        Measured(rss, "MiB", "edge.json rss"),
        model,
        Measured(model_bytes, "bytes", "edge.json bytes") if model_bytes else None,
    )


CANDIDATES = [
    {"name": "big", "accuracy": 0.92, "bytes": 900_000, "latency_ms_b1": 0.2},
    {"name": "mid", "accuracy": 0.915, "bytes": 400_000, "latency_ms_b1": 0.1},
    {"name": "small", "accuracy": 0.89, "bytes": 100_000, "latency_ms_b1": 0.05},
]


@pytest.fixture
def cfg() -> PlanConfig:
    return PlanConfig(**spec())


@pytest.fixture
def inputs() -> Inputs:
    return Inputs(dict(LOADTESTS), edge_figures())


@pytest.fixture
def files(tmp_path):
    """The same inputs as files, for the CLI: spec, two loadtests, edge benchmark rows, candidates."""
    (tmp_path / "spec.json").write_text(json.dumps(spec()))
    for name, obj in LOADTESTS.items():
        (tmp_path / name).write_text(json.dumps(obj))
    edge = {"summary": {"int8": {"http_p50_ms": 2.0, "http_p95_ms": 4.0, "peak_rss_mb": 130.0, "bundle_kb": 878.90625}}}
    (tmp_path / "edge.json").write_text(json.dumps(edge))
    (tmp_path / "candidates.json").write_text(json.dumps({"candidates": CANDIDATES}))
    return tmp_path
