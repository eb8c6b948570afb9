"""Reading measured inputs: a loadtest, the edge benchmark, fleet heartbeats, a candidate table; each value
keeps the file it came from, and a bad file is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamoat.errors import BadInput, NotFound
from datamoat.plan import read_candidates, read_edge, read_loadtests
from datamoat.plan.inputs import MAX_BYTES

ROOT = Path(__file__).resolve().parents[2]


def test_the_projects_own_benchmark_files_read_with_their_sources(tmp_path):
    e = read_edge(ROOT / "bench/results/edge.json", "int8")
    assert e.p50_ms.source.endswith("edge.json summary.int8.http_p50_ms") and e.p50_ms.value > 0
    assert e.p99_ms.source.endswith("summary.int8.http_p99_ms") and not any("no p99" in n for n in e.notes)
    assert e.rss_mb.source.endswith("summary.int8.peak_rss_mb") and e.model_bytes is not None
    # An edge benchmark from before it measured p99: its p95 stands in, and the plan says so.
    old = json.loads((ROOT / "bench/results/edge.json").read_text())
    del old["summary"]["int8"]["http_p99_ms"]
    (tmp_path / "edge-old.json").write_text(json.dumps(old))
    e = read_edge(tmp_path / "edge-old.json", "int8")
    assert e.p99_ms.source.endswith("summary.int8.http_p95_ms") and any("no p99" in n for n in e.notes)
    rows = read_candidates(ROOT / "bench/results/compression.json")  # a benchmark's summary.recipe_candidates
    assert {"teacher-int8", "student-int8"} <= {r["name"] for r in rows}
    lt = read_loadtests([ROOT / "docs/plan/loadtest-max.json", ROOT / "docs/plan/loadtest-rate.json"])
    assert [r["mode"] for r in lt.values()] == ["closed", "open"]


def test_fleet_status_heartbeats_give_the_slowest_devices_figures(tmp_path):
    def dev(name, p99, predictions=200, abstained=10):
        perf = {"latency_ms": {"n": 50, "p50": 1.0, "p95": 2.0, "p99": p99}, "rss_mb": 120.5,
                "model": {"name": "student-int8", "version": "v1"}}  # fmt: skip
        return {"device_id": name, "perf": perf, "counters": {"predictions": predictions, "abstained": abstained}}

    f = tmp_path / "fleet.json"
    f.write_text(json.dumps({"devices": [dev("cam-1", 3.0), dev("cam-2", 7.0), {"device_id": "cam-3", "perf": None}]}))
    e = read_edge(f)
    assert e.p99_ms.value == 7.0 and e.p99_ms.source == f"{f} device cam-2 perf.latency_ms.p99"
    assert e.model == "student-int8" and e.rss_mb.value == 120.5
    assert e.low_confidence_rate is not None and e.low_confidence_rate.value == 10 / 200
    assert read_edge(f, device_id="cam-1").p99_ms.value == 3.0
    with pytest.raises(BadInput, match="no device cam-3 reporting latency"):
        read_edge(f, device_id="cam-3")


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(NotFound, match="no loadtest file at .*nope.json: make it with `datamoat loadtest URL --json"):
        read_loadtests([tmp_path / "nope.json"])
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(BadInput, match="cannot read .* as loadtest JSON"):
        read_loadtests([tmp_path / "junk.json"])
    (tmp_path / "other.json").write_text('{"rows": []}')
    with pytest.raises(BadInput, match="is not a `datamoat loadtest --json` result"):
        read_loadtests([tmp_path / "other.json"])
    with pytest.raises(BadInput, match="neither `fleet status --json` nor an edge benchmark"):
        read_edge(tmp_path / "other.json")
    with pytest.raises(BadInput, match="no candidate rows"):
        read_candidates(tmp_path / "other.json")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_BYTES + 1))
    with pytest.raises(BadInput, match="over 16 MiB"):
        read_loadtests([big])
