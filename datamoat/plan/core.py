"""`plan`: cloud (public, private), edge or both, from measured inputs and typed prices.

Each option's replicas or devices come from `datamoat.serve.capacity` (its
arithmetic, shown line by line, is not repeated here): the cloud's from one
replica's loadtest against every connected site's peak at once, the edge's
from the device's measured latency against each site's own peak, one
device serving one request at a time. A month is 730 hours (8,760 / 12).

Failure modes and their fallbacks, costed:
- cloud, a replica lost: N+1 carries the load (capacity's check line);
- cloud, a zone lost: replicas spread evenly over `zones`, the largest share
  goes; if the rest cannot carry the load, the replicas that would, and their
  cost; a private cloud is one zone, so its loss is an outage;
- edge, a device lost: `Predictor` falls back to the cloud for that device's
  share of the site's traffic until it is replaced (`repair_hours`), at
  `failures_per_year`; the standby cloud replicas and the transfer that
  fallback needs are the hybrid's cloud part.
The hybrid serves from the edge and sizes a cloud for the fallback plus the
low-confidence answers sent for review.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from datamoat.errors import BadInput
from datamoat.plan.config import PlanConfig, SiteSpec
from datamoat.plan.inputs import Inputs, Measured
from datamoat.plan.models import Hardware, ModelChoice, choose_model
from datamoat.serve.capacity import CapacityPlan, capacity, from_loadtests

__all__ = ["HOURS_PER_MONTH", "Option", "Priced", "priced", "cloud_option", "edge_option", "money"]

HOURS_PER_MONTH = 730.0  # 8,760 hours a year / 12
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600


def money(x: float) -> str:
    """A monthly amount as the plan prints it.

    >>> money(1234.5)
    '1,234.50'
    """
    return f"{x:,.2f}"


@dataclasses.dataclass
class Option:
    """One way to serve the sites: what it costs a month, what each site waits, what breaks and what then."""

    name: str
    monthly_cost: float
    cost_lines: list[str]
    units: dict[str, int]  # "replicas" / "devices"
    capacity_lines: list[str]
    p99_ms: dict[str, float | None]  # per site, network included; None: the option cannot serve it
    failures: list[dict[str, Any]]
    feasible: bool
    why_not: list[str]
    model: str | None = None
    choice: ModelChoice | None = None  # the model pick's table (cloud options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Priced:
    """The measured figures the options share, read once: one replica, one device, the model picks."""

    cfg: PlanConfig
    per_replica_rps: Measured
    p99_points: dict[float, float]  # utilisation -> p99 ms, from the loadtests
    edge_p50: Measured
    edge_p99: Measured
    device_rps: float  # 1000 / edge p50: one request at a time
    cloud_model: ModelChoice | None = None
    edge_model: ModelChoice | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def priced(cfg: PlanConfig, inputs: Inputs) -> Priced:
    """The shared measured figures, with sources; bad measurements are one-line errors."""
    per_rps, points, notes = from_loadtests(inputs.loadtests)
    closed = [f for f, r in inputs.loadtests.items() if r.get("mode", "closed") == "closed"]
    best = max(closed, key=lambda f: inputs.loadtests[f]["throughput_rps"])
    rps = Measured(per_rps, "req/s", f"{best} throughput_rps")
    e = inputs.edge
    p = Priced(cfg, rps, points, e.p50_ms, e.p99_ms, 1000.0 / e.p50_ms.value, notes=[*notes, *e.notes])
    smallest = min(inputs.candidates, key=lambda c: c["bytes"]) if inputs.candidates else None
    if cfg.edge.memory_mb:
        hw = _edge_hw(cfg, inputs)
        rows = choose_model(hw, inputs.candidates, 0.0, math.inf).rows  # smallest first
        need = rows[0]["memory_mb"] if rows else hw.rss_mb
        what = f"the smallest candidate {smallest['name']}" if smallest else f"the measured model {e.model}"
        if need is not None and need > cfg.edge.memory_mb:
            raise BadInput(
                f"the device's {cfg.edge.memory_mb:g} MiB cannot hold {what}: it needs {need:.1f} MiB "
                f"(measured resident memory {e.rss_mb.value:.1f} MiB from {e.rss_mb.source}, adjusted for model bytes)"
            )
    p.edge_model = choose_model(_edge_hw(cfg, inputs), inputs.candidates, cfg.accuracy_floor, cfg.p99_budget_ms)
    return p


def _edge_hw(cfg: PlanConfig, inputs: Inputs) -> Hardware:
    e = inputs.edge
    return Hardware(
        "edge",
        e.p99_ms.value,
        cfg.edge.lan_rtt_ms,
        cfg.edge.model,
        cfg.edge.slowdown,
        e.rss_mb.value,
        cfg.edge.memory_mb,
        e.model_bytes.value if e.model_bytes else None,
    )


def _connected(sites: list[SiteSpec]) -> list[SiteSpec]:
    return [s for s in sites if s.connectivity != "offline"]


def _server_p99(cap: CapacityPlan) -> float | None:
    """The measured p99 that vouches for the planned utilisation: the one at the lowest load at or above it."""
    above = [p for u, p in sorted(cap.measured_p99_ms.items()) if u >= cap.utilisation - 1e-9]
    return above[0] if above else None


def _cloud_capacity(p: Priced, demand_sites: int, rate: float, server_ms: float | None) -> tuple[CapacityPlan, str]:
    """capacity() at the server's share of the budget; when no measured load meets it, at headroom, and why not."""
    try:
        cap = capacity(
            demand_sites, rate, p.per_replica_rps.value, p99_ms=server_ms, measured_p99_ms=p.p99_points,
            headroom=p.cfg.headroom,
        )  # fmt: skip
        return cap, ""
    except BadInput as e:
        cap = capacity(
            demand_sites, rate, p.per_replica_rps.value, measured_p99_ms=p.p99_points, headroom=p.cfg.headroom
        )
        return cap, str(e)


def cloud_option(p: Priced, sites: list[SiteSpec], private: bool, candidates: list[dict[str, Any]]) -> Option:
    """The public (by the hour, `zones` zones) or private (by the month, one zone) cloud serving every connected site."""
    cfg, c = p.cfg, p.cfg.cloud
    name = "cloud-private" if private else "cloud-public"
    served = _connected(sites)
    why: list[str] = [f"site {s.name} is offline: the cloud cannot serve it" for s in sites if s not in served]
    if not served:
        return Option(name, math.inf, ["no connected site"], {"replicas": 0}, [], {}, [], False, why)
    worst = max(s.rtt_ms for s in served)
    total = sum(s.peak_rps for s in served)
    server_ms = cfg.p99_budget_ms - worst
    cap, missed = _cloud_capacity(p, len(served), total / len(served), server_ms)
    lines = [
        f"peak demand = {' + '.join(f'{s.peak_rps:g}' for s in served)} = {total:g} req/s over {len(served)} "
        f"connected sites (peaks taken as simultaneous)",
        f"server p99 budget = {cfg.p99_budget_ms:g} ms - {worst:g} ms worst round trip = {server_ms:g} ms",
        *cap.lines,
    ]
    price = (
        ("cloud.private_server_month", c.private_server_month)
        if private
        else ("cloud.price_per_hour", c.price_per_hour)
    )
    if not price[1]:
        why.append(f"not priced: give {price[0]} in the spec")
    if missed:
        why.append(f"the measured server p99 misses the budget: {missed}")
    measured = _server_p99(cap)
    choice = None
    if measured is None:
        why.append("no p99 measured in the loadtests: the cloud's latency is unknown")
    else:
        hw = Hardware(name, measured, worst, c.model, c.slowdown)
        choice = choose_model(hw, candidates, cfg.accuracy_floor, cfg.p99_budget_ms)
        measured = choice.p99_ms
        if candidates and choice.pick is None:
            why.append(f"no candidate meets the accuracy floor and latency budget in the {name}")
    p99 = {s.name: (measured + s.rtt_ms if measured is not None and s in served else None) for s in sites}
    why += [
        f"site {n}: p99 {v:.3g} ms > budget {cfg.p99_budget_ms:g} ms"
        for n, v in p99.items()
        if v and v > cfg.p99_budget_ms
    ]
    mean = sum(s.mean_rps for s in served)
    gb = mean * SECONDS_PER_MONTH * c.bytes_per_request / 1e9
    per_gb = c.private_transfer_per_gb if private else c.transfer_per_gb
    if private:
        compute, how = (
            cap.replicas * c.private_server_month,
            f"{cap.replicas} servers x {money(c.private_server_month)}",
        )
    else:
        compute = cap.replicas * c.price_per_hour * HOURS_PER_MONTH
        how = f"{cap.replicas} replicas x {c.price_per_hour:g}/h x {HOURS_PER_MONTH:g} h"
    cost_lines = [
        f"compute = {how} = {money(compute)}",
        f"transfer = {mean:g} req/s mean x {SECONDS_PER_MONTH:,.0f} s x {c.bytes_per_request:g} B = {gb:.3f} GB "
        f"x {per_gb:g}/GB = {money(gb * per_gb)}",
    ]
    fails = _cloud_failures(name, cap, 1 if private else c.zones, c.price_per_hour, c.private_server_month, private)
    fails += [
        {"component": f"link of {s.name}", "effect": "no answers at that site while its link is down",
         "fallback": "none in the cloud (the hybrid's device keeps answering)", "monthly_cost": 0.0}
        for s in served if s.connectivity == "intermittent"
    ]  # fmt: skip
    return Option(
        name, compute + gb * per_gb, cost_lines, {"replicas": cap.replicas}, lines, p99, fails, not why, why,
        choice.pick if choice else None, choice,
    )  # fmt: skip


def _cloud_failures(
    name: str, cap: CapacityPlan, zones: int, hourly: float, monthly: float, private: bool
) -> list[dict[str, Any]]:
    per = monthly if private else hourly * HOURS_PER_MONTH
    r, need = cap.replicas, cap.replicas_for_load
    out = [
        {
            "component": "a replica",
            "effect": f"{r - 1} left of {r}; {need} carry the peak within the planned utilisation",
            "fallback": "the N+1 spare (already in the cost)",
            "monthly_cost": 0.0,
        }
    ]
    lost = math.ceil(r / zones)
    if zones == 1:
        effect, fallback, extra = (
            f"all {r} replicas down: every site loses answers",
            "none: a second site, or the hybrid's devices",
            0.0,
        )
    elif r - lost >= need:
        effect, fallback, extra = (
            f"{lost} of {r} replicas go, {r - lost} >= {need} needed carry the peak",
            "the other zones",
            0.0,
        )
    else:
        safe = r
        while safe - math.ceil(safe / zones) < need:
            safe += 1
        extra = (safe - r) * per
        effect = f"{lost} of {r} replicas go, {r - lost} < {need} needed: the peak is not carried"
        fallback = f"{safe} replicas over {zones} zones survive it: +{safe - r} x {money(per)} = +{money(extra)}/month"
    out.append({"component": "a zone", "effect": effect, "fallback": fallback, "monthly_cost": extra})
    return out


def edge_option(p: Priced, sites: list[SiteSpec]) -> tuple[Option, dict[str, Any]]:
    """One device or more per site, sized by capacity() from the device's measured latency; and the fallback's load."""
    cfg, e = p.cfg, p.cfg.edge
    choice = p.edge_model
    device_p99 = choice.p99_ms if choice else p.edge_p99.value
    lines = [f"one device = 1000 / {p.edge_p50.value:.3g} ms p50 = {p.device_rps:,.0f} req/s (one request at a time)"]
    devices = 0
    for s in sites:
        cap = capacity(1, s.peak_rps, p.device_rps, headroom=cfg.headroom)
        devices += cap.replicas_for_load
        lines.append(f"{s.name}: {cap.lines[2]}; no spare on site: the cloud fallback covers a failed device")
    per_device = e.device_price / e.lifetime_months + e.power_w * HOURS_PER_MONTH / 1000 * e.kwh_price
    cost_lines = [
        f"per device = {e.device_price:g} / {e.lifetime_months:g} months + {e.power_w:g} W x {HOURS_PER_MONTH:g} h "
        f"/ 1000 x {e.kwh_price:g}/kWh = {money(per_device)}",
        f"devices = {devices} x {money(per_device)} = {money(devices * per_device)}",
    ]
    p99: dict[str, float | None] = {s.name: device_p99 + e.lan_rtt_ms for s in sites}
    why = [
        f"site {n}: p99 {v:.3g} ms > budget {cfg.p99_budget_ms:g} ms"
        for n, v in p99.items()
        if v is not None and v > cfg.p99_budget_ms
    ]
    if not e.device_price:
        why.append("not priced: give edge.device_price in the spec")
    if choice is not None and choice.rows and choice.pick is None:
        why.append("no candidate meets the accuracy floor, latency budget and memory on the device")
    # A failed device's share of its site goes to the cloud until it is replaced (see the module doc).
    served = _connected(sites)
    per_month = e.failures_per_year / 12 * e.repair_hours * 3600
    fallback_requests = sum(s.mean_rps for s in served) * per_month
    down = devices * e.failures_per_year / 8760 * e.repair_hours
    unserved = sum(s.mean_rps for s in sites if s not in served) * per_month
    load = {
        "fallback_requests": fallback_requests,
        "concurrent_down": down,
        "fallback_peak_rps": max(1, math.ceil(down)) * max((s.peak_rps for s in served), default=0.0),
        "lines": [
            f"fallback requests = {sum(s.mean_rps for s in served):g} req/s mean (connected) x {e.failures_per_year:g}"
            f" failures/year / 12 x {e.repair_hours:g} h x 3600 s = {fallback_requests:,.0f} a month",
            f"devices down at once = {devices} x {e.failures_per_year:g} / 8760 h x {e.repair_hours:g} h = {down:.3g}",
        ],
    }
    offline = f"; {unserved:,.0f} requests a month at offline sites have no fallback" if unserved else ""
    fails = [
        {
            "component": "a device",
            "effect": f"its share of its site is not answered on site for up to {e.repair_hours:g} h "
            f"(expected {down:.3g} devices down at once, {fallback_requests:,.0f} requests a month to fall back){offline}",
            "fallback": "Predictor falls back to the cloud (the hybrid's cloud)",
            "monthly_cost": None,  # filled in by the hybrid, which sizes that cloud
        }
    ]
    opt = Option("edge", devices * per_device, cost_lines, {"devices": devices}, lines, p99, fails, not why, why)
    opt.model = choice.pick if choice else None
    return opt, load
