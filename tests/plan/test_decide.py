"""The plan's arithmetic on a hand-computed case: every option's cost, p99 per site, the failure
modes' fallbacks and the break-even, each written out from the inputs in tests/plan/conftest.py."""

from __future__ import annotations

import math

import pytest

from datamoat.plan import Inputs, PlanConfig, plan

from .conftest import LOADTESTS, edge_figures, spec

HOURS = 730  # a month
SECONDS = 730 * 3600


def test_cloud_public_and_private_by_hand(cfg, inputs):
    r = plan(cfg, inputs, max_sites=12)
    pub, priv = r.options["cloud-public"], r.options["cloud-private"]
    # Server budget 100 - 40 (worst round trip) = 60 ms: 50 ms at 100% meets it, so plan at headroom 0.5.
    # usable = 100 x 0.5 = 50 req/s; demand 10 + 30 = 40; ceil(40 / 50) = 1; + 1 spare = 2 replicas.
    assert pub.units == {"replicas": 2} and priv.units == {"replicas": 2}
    assert "replicas for the load = ceil(40 / 50) = ceil(0.800) = 1" in pub.capacity_lines
    assert "server p99 budget = 100 ms - 40 ms worst round trip = 60 ms" in pub.capacity_lines
    compute = 2 * 0.05 * HOURS
    transfer = (4 + 6) * SECONDS * 1000 / 1e9 * 0.1
    assert pub.monthly_cost == pytest.approx(compute + transfer) == pytest.approx(75.628)
    assert priv.monthly_cost == pytest.approx(2 * 50 + 0.0)
    # The p99 that vouches for 50% utilisation is the one measured at 50%: 30 ms, plus each round trip.
    assert pub.p99_ms == {"a": 30 + 20, "b": 30 + 40}
    assert pub.feasible and priv.feasible


def test_edge_and_hybrid_by_hand(cfg, inputs):
    r = plan(cfg, inputs, max_sites=12)
    edge, hy = r.options["edge"], r.options["hybrid"]
    # One device = 1000 / 2 ms = 500 req/s; x 0.5 = 250 usable: one device at each site.
    per_device = 720 / 36 + 5 * HOURS / 1000 * 0.2
    assert edge.units == {"devices": 2} and edge.monthly_cost == pytest.approx(2 * per_device) == pytest.approx(41.46)
    assert edge.p99_ms == {"a": 4 + 1, "b": 4 + 1}
    # Hybrid cloud: one device down at once at most -> the busiest site's peak 30 + reviews 0.1 x 40 = 34 req/s;
    # ceil(34 / 50) = 1 + 1 spare = 2 replicas.
    assert hy.units == {"devices": 2, "replicas": 2}
    fallback_gb = (4 + 6) * 1.2 / 12 * 24 * 3600 * 1000 / 1e9
    review_gb = 0.1 * (4 + 6) * SECONDS * 500 / 1e9
    expected = 2 * per_device + 2 * 0.05 * HOURS + (fallback_gb + review_gb) * 0.1
    assert hy.monthly_cost == pytest.approx(expected) == pytest.approx(114.60004)
    assert hy.p99_ms == edge.p99_ms
    assert r.recommendation == "edge" and r.reasons[0].startswith("edge is the cheapest option")


def test_each_failure_mode_has_its_fallback_costed(cfg, inputs):
    r = plan(cfg, inputs, max_sites=12)
    pub = {f["component"]: f for f in r.options["cloud-public"].failures}
    assert pub["a replica"]["monthly_cost"] == 0.0 and "N+1" in pub["a replica"]["fallback"]
    # 2 replicas over 2 zones: a zone takes ceil(2 / 2) = 1, and 1 >= 1 needed carries the peak.
    assert pub["a zone"]["monthly_cost"] == 0.0 and "1 >= 1 needed" in pub["a zone"]["effect"]
    priv = {f["component"]: f for f in r.options["cloud-private"].failures}
    assert "every site loses answers" in priv["a zone"]["effect"]
    # A device: 1.2 failures a year, 24 h to replace: (4 + 6) req/s x 1.2 / 12 x 24 h x 3600 s = 86,400 requests
    # a month fall back; the cloud for them alone is ceil(30 / 50) + 1 = 2 standby replicas.
    dev = r.options["edge"].failures[0]
    assert "86,400 requests a month" in dev["effect"]
    assert dev["monthly_cost"] == pytest.approx(2 * 0.05 * HOURS + 86_400 * 1000 / 1e9 * 0.1) == pytest.approx(73.00864)
    assert r.options["hybrid"].failures[0]["monthly_cost"] == dev["monthly_cost"]


@pytest.mark.parametrize(("zones", "extra"), [(2, 1 * 0.05 * HOURS), (3, 0.0)])
def test_a_zone_loss_that_the_rest_cannot_carry_is_priced(inputs, zones, extra):
    # Peaks 10 + 70 = 80 req/s: ceil(80 / 50) = 2 + 1 = 3 replicas. Over 2 zones a zone takes ceil(3 / 2) = 2,
    # leaving 1 < 2: 4 replicas survive it (4 - ceil(4 / 2) = 2), one more at 36.50. Over 3 zones 3 - 1 = 2 do.
    sites = [{"name": "a", "peak_rps": 10, "mean_rps": 4, "rtt_ms": 20}, {"name": "b", "peak_rps": 70, "mean_rps": 6}]
    r = plan(PlanConfig(**spec(sites=sites, cloud={"zones": zones})), inputs, max_sites=3)
    zone = next(f for f in r.options["cloud-public"].failures if f["component"] == "a zone")
    assert zone["monthly_cost"] == pytest.approx(extra)


def test_break_even_by_hand(cfg, inputs):
    # Sites repeat a, b, a, b...: edge = n x 20.73; public cloud = (ceil(peaks / 50) + 1) x 36.50 + 0.2628 per
    # mean req/s. n = 9: peaks 170 -> 5 replicas: 182.50 + 44 x 0.2628 = 194.06 > 9 x 20.73 = 186.57 (edge cheaper);
    # n = 10: peaks 200 -> 5 replicas: 182.50 + 50 x 0.2628 = 195.64 < 10 x 20.73 = 207.30 (the cloud is).
    r = plan(cfg, inputs, max_sites=12)
    per_device = 720 / 36 + 5 * HOURS / 1000 * 0.2
    per_replica, per_rps = 0.05 * HOURS, SECONDS * 1000 / 1e9 * 0.1
    assert r.curve["cloud-public"][8] == pytest.approx(5 * per_replica + 44 * per_rps)
    assert r.curve["cloud-public"][9] == pytest.approx(5 * per_replica + 50 * per_rps)
    assert r.curve["edge"][8] == pytest.approx(9 * per_device) and r.curve["edge"][9] == pytest.approx(10 * per_device)
    be = next(b for b in r.break_even if (b["a"], b["b"]) == ("edge", "cloud-public"))
    assert be["sites"] == 10 and be["cheaper_first"] == "edge"
    assert be["text"] == "edge and cloud-public: edge is cheaper below 10 sites, cloud-public from 10"
    # The curve at the spec's own 2 sites is the options' costs.
    assert r.curve["cloud-public"][1] == pytest.approx(r.options["cloud-public"].monthly_cost)
    assert r.curve["hybrid"][1] == pytest.approx(r.options["hybrid"].monthly_cost)


def test_offline_and_intermittent_sites(inputs):
    sites = [
        {"name": "a", "peak_rps": 10, "mean_rps": 4, "rtt_ms": 20, "connectivity": "intermittent"},
        {"name": "k", "peak_rps": 30, "mean_rps": 6, "rtt_ms": 500, "connectivity": "offline"},
    ]
    r = plan(PlanConfig(**spec(sites=sites)), inputs, max_sites=3)
    pub = r.options["cloud-public"]
    assert pub.p99_ms["k"] is None and not pub.feasible and "site k is offline" in pub.why_not[0]
    assert any(f["component"] == "link of a" for f in pub.failures)
    assert r.options["edge"].p99_ms == {"a": 5.0, "k": 5.0} and r.recommendation == "edge"
    # Only connected sites fall back: 4 req/s x 1.2 / 12 x 24 h x 3600 s; the offline site's 6 req/s has none.
    effect = r.options["edge"].failures[0]["effect"]
    assert "34,560 requests a month to fall back)" in effect
    assert effect.endswith("51,840 requests a month at offline sites have no fallback")


def test_an_unpriced_option_is_never_recommended(inputs):
    r = plan(PlanConfig(**spec(edge={"device_price": 0}, cloud={"private_server_month": 0})), inputs, max_sites=3)
    assert not r.options["edge"].feasible and not r.options["cloud-private"].feasible
    assert r.recommendation == "cloud-public"


def test_a_budget_the_measured_server_never_meets_rules_the_cloud_out(inputs):
    # Server budget 25 - 20 = 5 ms: no measured p99 (30, 50 ms) is within it; the edge's 5 ms is.
    sites = [{"name": "a", "peak_rps": 10, "mean_rps": 4, "rtt_ms": 20}]
    r = plan(PlanConfig(**spec(sites=sites, p99_budget_ms=25)), inputs, max_sites=3)
    assert not r.options["cloud-public"].feasible and "misses the budget" in r.options["cloud-public"].why_not[0]
    assert r.options["edge"].feasible and r.recommendation == "edge"


def test_every_measured_input_names_its_file_and_every_typed_one_is_an_assumption(cfg):
    from .conftest import CANDIDATES

    r = plan(cfg, Inputs(dict(LOADTESTS), edge_figures(), CANDIDATES, "candidates.json"), max_sites=3)
    files = ("max.json", "half.json", "edge.json", "candidates.json")
    assert r.measured and all(m["source"].startswith(files) for m in r.measured)
    assert {m["source"] for m in r.measured} >= {"max.json throughput_rps", "max.json p99_ms", "half.json p99_ms"}
    assert sum(m["source"].startswith("candidates.json") for m in r.measured) == 3 * 3
    typed = {a["name"]: a["value"] for a in r.assumptions}
    assert all(a["source"] == "assumption" for a in r.assumptions)
    assert (
        typed["sites.b.peak_rps"] == 30 and typed["cloud.price_per_hour"] == 0.05 and typed["edge.repair_hours"] == 24
    )
    d = r.to_dict()
    assert not any(
        isinstance(o["monthly_cost"], float) and math.isinf(o["monthly_cost"]) for o in d["options"].values()
    )
