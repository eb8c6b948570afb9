"""Model choice per option: the smallest candidate that fits the floor, the budget and the memory,
the trade against a more accurate one, and a device too small for any candidate."""

from __future__ import annotations

import pytest

from datamoat.errors import BadInput
from datamoat.plan import Inputs, PlanConfig, plan
from datamoat.plan.models import MIB, Hardware, choose_model

from .conftest import CANDIDATES, LOADTESTS, edge_figures, spec


def test_latency_and_memory_are_moved_by_what_the_model_costs():
    # Measured with big: p99 4 ms, 130 MiB. mid = 4 + (0.1 - 0.2) x 2 (slowdown) = 3.8 ms,
    # 130 + (400,000 - 900,000) / 2^20 MiB; small is under the 0.91 floor.
    hw = Hardware("edge", 4.0, 1.0, "big", slowdown=2.0, rss_mb=130.0, memory_mb=256)
    c = choose_model(hw, CANDIDATES, 0.91, 100)
    rows = {r["name"]: r for r in c.rows}
    assert rows["mid"]["p99_ms"] == pytest.approx(4 + (0.1 - 0.2) * 2)
    assert rows["mid"]["memory_mb"] == pytest.approx(130 + (400_000 - 900_000) / MIB)
    assert rows["small"]["why_not"] == "accuracy 0.8900 < floor 0.91"
    assert c.pick == "mid" and c.p99_ms == pytest.approx(3.8)
    assert any("trade: big also fits, 0.50 points more accurate for 2.2x the bytes" in line for line in c.lines)


def test_the_bigger_model_fits_the_cloud_and_not_the_device(cfg):
    # The device gives 129.9 MiB: big (measured at 130 MiB) does not fit there, mid (129.52) does;
    # the cloud has no memory limit, so big still fits there and the plan shows the trade.
    c = PlanConfig(**spec(accuracy_floor=0.91, edge={"memory_mb": 129.9, "model": "big"}, cloud={"model": "big"}))
    r = plan(c, Inputs(dict(LOADTESTS), edge_figures(), CANDIDATES, "candidates.json"), max_sites=3)
    edge, cloud = r.models["edge"], r.models["cloud"]
    assert edge.pick == "mid" and cloud.pick == "mid"
    assert next(x for x in edge.rows if x["name"] == "big")["why_not"] == "memory 130.0 > 129.9 MiB"
    assert any(line.startswith("cloud-public: trade: big also fits") for line in cloud.lines)
    assert not any("trade" in line for line in edge.lines)
    assert r.options["edge"].model == "mid" and r.options["cloud-public"].model == "mid"


def test_a_measured_model_outside_the_table_is_not_adjusted_and_says_so():
    c = choose_model(Hardware("cloud", 30.0, 40.0, ""), CANDIDATES, 0.0, 100)
    assert all(r["p99_ms"] == 30.0 for r in c.rows) and "not adjusted" in c.lines[0]
    assert c.pick == "small"


def test_a_device_that_cannot_hold_the_smallest_candidate_is_bad_input():
    # small needs 130 + (100,000 - 900,000) / 2^20 = 129.24 MiB; the device gives 100.
    c = PlanConfig(**spec(edge={"memory_mb": 100, "model": "big"}))
    with pytest.raises(BadInput, match=r"100 MiB cannot hold the smallest candidate small: it needs 129.2 MiB"):
        plan(c, Inputs(dict(LOADTESTS), edge_figures(), CANDIDATES, "candidates.json"))
    with pytest.raises(BadInput, match="cannot hold the measured model big"):  # no table: the measured model itself
        plan(c, Inputs(dict(LOADTESTS), edge_figures()))
