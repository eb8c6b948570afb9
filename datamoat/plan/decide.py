"""The verb: `plan(config, inputs)` -> every option costed, the break-even, a recommendation.

The hybrid serves from the devices and keeps a public cloud sized for the
devices down at once (their sites' peak) plus the low-confidence answers
sent for review; the break-even repeats the spec's sites in order (site
n is site n mod k) and finds where the cheaper option changes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from datamoat.configs import check
from datamoat.plan.config import PlanConfig, SiteSpec
from datamoat.plan.core import (
    HOURS_PER_MONTH,
    SECONDS_PER_MONTH,
    Option,
    Priced,
    cloud_option,
    edge_option,
    money,
    priced,
)
from datamoat.plan.inputs import Inputs
from datamoat.plan.models import ModelChoice
from datamoat.serve.capacity import capacity

__all__ = ["PlanResult", "plan", "hybrid_option", "costs_at"]

PAIRS = (("edge", "cloud-public"), ("edge", "cloud-private"), ("hybrid", "cloud-public"))


@dataclasses.dataclass
class PlanResult:
    """The options, the model picks, the break-even points and the recommendation, with every input's source."""

    options: dict[str, Option]
    models: dict[str, ModelChoice | None]
    break_even: list[dict[str, Any]]
    curve: dict[str, list[float]]  # "sites" and each option's monthly cost at that many sites
    recommendation: str | None
    reasons: list[str]
    measured: list[dict[str, Any]]  # name, value, unit, source (a file)
    assumptions: list[dict[str, Any]]  # name, value, source "assumption"
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for o in d["options"].values():
            o["monthly_cost"] = None if math.isinf(o["monthly_cost"]) else o["monthly_cost"]
        return d


def _review_rate(cfg: PlanConfig, inputs: Inputs) -> tuple[float, str]:
    if cfg.edge.low_confidence_rate >= 0:
        return cfg.edge.low_confidence_rate, "assumption"
    m = inputs.edge.low_confidence_rate
    check(m is not None, "edge.low_confidence_rate is -1 (measured) but the edge figures carry no fleet counters")
    assert m is not None  # for type checkers
    return m.value, m.source


def hybrid_option(p: Priced, sites: list[SiteSpec], review_rate: float) -> Option:
    """Edge devices, plus a public cloud for the fallback and the reviews, both costed."""
    c = p.cfg.cloud
    edge, load = edge_option(p, sites)
    served = [s for s in sites if s.connectivity != "offline"]
    review_peak = review_rate * sum(s.peak_rps for s in served)
    review_mean = review_rate * sum(s.mean_rps for s in served)
    demand = load["fallback_peak_rps"] + review_peak
    lines = [*load["lines"]]
    replicas, fb_replicas = 0, 0
    if demand > 0:
        server_ms = p.cfg.p99_budget_ms - max(s.rtt_ms for s in served)
        lines.append(
            f"hybrid cloud demand = {load['fallback_peak_rps']:g} req/s fallback (the busiest site's peak for each "
            f"device down at once, at least one) + {review_rate:g} x {sum(s.peak_rps for s in served):g} req/s "
            f"reviews = {demand:g} req/s"
        )
        cap = capacity(1, demand, p.per_replica_rps.value, headroom=p.cfg.headroom)
        lines += cap.lines
        replicas = cap.replicas
        if load["fallback_peak_rps"]:
            fb_replicas = capacity(
                1, load["fallback_peak_rps"], p.per_replica_rps.value, headroom=p.cfg.headroom
            ).replicas
        lines.append(
            f"fallback answers wait the cloud's p99 plus the site's round trip (server budget {server_ms:g} ms)"
        )
    per = c.price_per_hour * HOURS_PER_MONTH
    gb_fb = load["fallback_requests"] * c.bytes_per_request / 1e9
    gb_rev = review_mean * SECONDS_PER_MONTH * p.cfg.edge.upload_bytes / 1e9
    cloud = replicas * per + (gb_fb + gb_rev) * c.transfer_per_gb
    cost_lines = [
        *edge.cost_lines,
        f"cloud = {replicas} replicas x {c.price_per_hour:g}/h x {HOURS_PER_MONTH:g} h = {money(replicas * per)}",
        f"transfer = ({gb_fb:.3f} GB fallback + {review_mean:g} req/s x {SECONDS_PER_MONTH:,.0f} s x "
        f"{p.cfg.edge.upload_bytes:g} B = {gb_rev:.3f} GB reviews) x {c.transfer_per_gb:g}/GB "
        f"= {money((gb_fb + gb_rev) * c.transfer_per_gb)}",
    ]
    fallback_cost = fb_replicas * per + gb_fb * c.transfer_per_gb
    fails = [dict(f) for f in edge.failures]
    fails[0]["monthly_cost"] = fallback_cost
    fails[0]["fallback"] += (
        f": {fb_replicas} standby replicas x {money(per)} + {gb_fb:.3f} GB x {c.transfer_per_gb:g}/GB "
        f"= {money(fallback_cost)}/month"
    )
    fails.append(
        {
            "component": "the cloud (a replica or a zone)",
            "effect": "fallback and reviews pause; every device keeps answering",
            "fallback": "low-confidence samples wait in each device's outbox and upload later",
            "monthly_cost": 0.0,
        }
    )
    why = list(edge.why_not) + (["not priced: give cloud.price_per_hour for its cloud"] if replicas and not per else [])
    units = {"devices": edge.units["devices"], "replicas": replicas}
    lines = [*edge.capacity_lines, *lines]
    return Option("hybrid", edge.monthly_cost + cloud, cost_lines, units, lines, edge.p99_ms, fails, not why, why,
                  edge.model)  # fmt: skip


def _sites_at(sites: tuple[SiteSpec, ...], n: int) -> list[SiteSpec]:
    """`n` sites: the spec's, repeated in order (the copies renamed ``name#1``, ``name#2``...)."""
    k = len(sites)
    return [
        sites[i] if i < k else dataclasses.replace(sites[i % k], name=f"{sites[i % k].name}#{i // k}") for i in range(n)
    ]


def costs_at(p: Priced, n: int, review_rate: float, candidates: list[dict[str, Any]]) -> dict[str, float]:
    """Each option's monthly cost at `n` sites (the spec's sites repeated in order)."""
    sites = _sites_at(p.cfg.sites, n)
    return {
        "cloud-public": cloud_option(p, sites, False, candidates).monthly_cost,
        "cloud-private": cloud_option(p, sites, True, candidates).monthly_cost,
        "edge": edge_option(p, sites)[0].monthly_cost,
        "hybrid": hybrid_option(p, sites, review_rate).monthly_cost,
    }


def _break_even(curve: dict[str, list[float]]) -> list[dict[str, Any]]:
    out = []
    for a, b in PAIRS:
        xs, ya, yb = curve["sites"], curve[a], curve[b]
        first = ya[0] <= yb[0]
        at = next((int(n) for n, u, v in zip(xs, ya, yb) if (u <= v) != first), None)
        cheap, dear = (a, b) if first else (b, a)
        text = (
            f"{a} and {b}: {cheap} is cheaper below {at} sites, {dear} from {at}"
            if at is not None
            else f"{a} and {b}: {cheap} is cheaper at every count from 1 to {int(xs[-1])} sites"
        )
        out.append({"a": a, "b": b, "sites": at, "cheaper_first": cheap, "text": text})
    return out


def plan(config: PlanConfig, inputs: Inputs, *, max_sites: int = 0) -> PlanResult:
    """Cost the cloud (public, private), the edge and the hybrid for `config`'s sites from measured `inputs`.

    `max_sites` bounds the cost curve and the break-even search (0: 4x the
    sites, at least 100).

    >>> from datamoat.plan.inputs import EdgeFigures, Measured
    >>> edge = EdgeFigures(Measured(1.0, "ms", "e.json"), Measured(2.0, "ms", "e.json"), Measured(100, "MiB", "e.json"), "m")
    >>> lt = {"lt.json": {"mode": "closed", "throughput_rps": 100.0, "p99_ms": 20.0}}
    >>> cfg = PlanConfig(sites=({"name": "a", "peak_rps": 10, "mean_rps": 5, "rtt_ms": 30},), p99_budget_ms=100,
    ...                  cloud={"price_per_hour": 1.0}, edge={"device_price": 360, "lifetime_months": 36})
    >>> r = plan(cfg, Inputs(lt, edge), max_sites=5)
    >>> r.options["cloud-public"].monthly_cost, r.options["edge"].monthly_cost, r.recommendation
    (1460.0, 10.0, 'edge')
    """
    p = priced(config, inputs)
    rate, rate_source = _review_rate(config, inputs)
    sites = list(config.sites)
    options = {
        "cloud-public": cloud_option(p, sites, False, inputs.candidates),
        "cloud-private": cloud_option(p, sites, True, inputs.candidates),
        "edge": edge_option(p, sites)[0],
        "hybrid": hybrid_option(p, sites, rate),
    }
    options["edge"].failures = [dict(options["hybrid"].failures[0])]
    top = max_sites or max(100, 4 * len(sites))
    curve: dict[str, list[float]] = {"sites": []}
    for n in range(1, top + 1):
        curve["sites"].append(n)
        for k, v in costs_at(p, n, rate, inputs.candidates).items():
            curve.setdefault(k, []).append(v)
    ok = sorted((o for o in options.values() if o.feasible), key=lambda o: o.monthly_cost)
    reasons = _reasons(ok, options, config)
    measured = _measured(p, inputs, rate, rate_source)
    models = {"cloud": options["cloud-public"].choice, "edge": p.edge_model}
    return PlanResult(
        options, models, _break_even(curve), curve, ok[0].name if ok else None, reasons, measured,
        config.assumptions(), p.notes,
    )  # fmt: skip


def _measured(p: Priced, inputs: Inputs, rate: float, rate_source: str) -> list[dict[str, Any]]:
    """Every measured number the plan used, with the file (and key) it came from."""
    e = inputs.edge
    out = [{"name": "per-replica throughput", **p.per_replica_rps.to_dict()}]
    for f, r in inputs.loadtests.items():
        if r.get("p99_ms") is not None:
            out.append({"name": f"server p99 at {r['throughput_rps']:.1f} req/s", "value": r["p99_ms"], "unit": "ms",
                        "source": f"{f} p99_ms"})  # fmt: skip
    out += [
        {"name": f"device {k}", **m.to_dict()} for k, m in (("p50", e.p50_ms), ("p99", e.p99_ms), ("memory", e.rss_mb))
    ]
    if e.model_bytes is not None:
        out.append({"name": "device model bytes", **e.model_bytes.to_dict()})
    if rate_source != "assumption":
        out.append({"name": "low-confidence rate", "value": rate, "unit": "share", "source": rate_source})
    for c in inputs.candidates:
        for k, unit in (("accuracy", "share"), ("bytes", "bytes"), ("latency_ms_b1", "ms")):
            out.append({"name": f"candidate {c['name']} {k}", "value": c[k], "unit": unit,
                        "source": f"{inputs.candidates_source} {c['name']}.{k}"})  # fmt: skip
    return out


def _reasons(ok: list[Option], options: dict[str, Option], cfg: PlanConfig) -> list[str]:
    out = []
    if ok:
        best = ok[0]
        worst = max((v for v in best.p99_ms.values() if v is not None), default=math.nan)
        out.append(
            f"{best.name} is the cheapest option that meets the {cfg.p99_budget_ms:g} ms p99 budget at every site: "
            f"{money(best.monthly_cost)}/month, worst site p99 {worst:.3g} ms"
        )
        out += [
            f"{o.name} costs {money(o.monthly_cost)}/month ({o.monthly_cost / best.monthly_cost:.2f}x)"
            for o in ok[1:]
            if best.monthly_cost > 0
        ]
    else:
        out.append("no option meets the budget at every site; see each option's reasons")
    for o in options.values():
        out += [f"{o.name} is out: {w}" for w in o.why_not]
    if ok and ok[0].name == "edge":
        f = options["edge"].failures[0]
        out.append(
            f"edge alone has no spare: when a device fails, {f['effect']}; Predictor's cloud fallback (the hybrid) "
            f"covers it for +{money(f['monthly_cost'] or 0.0)}/month"
        )
    offline = [s.name for s in cfg.sites if s.connectivity == "offline"]
    if offline:
        out.append(f"offline sites ({', '.join(offline)}) can only be served on site")
    return out
