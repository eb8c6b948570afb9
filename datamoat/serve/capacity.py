"""Capacity planning: how many server replicas a fleet of sites needs.

`capacity(sites, rate_per_site, per_replica_rps)` divides the demand by the
throughput one replica can sustain at a chosen utilisation (`headroom`), rounds
up, and adds one spare replica (N+1), showing every step as a line of
arithmetic so the plan can be checked by hand.

Latency target (`p99_ms`): latency does not fall as load rises, so a p99
measured at some utilisation u and within the target vouches for every load
up to u. The planner therefore uses the highest measured utilisation at which
p99 (and p99 at every lower measured load) meets the target, capped at
`headroom`. It lowers the usable utilisation when the measurements only vouch
for less than `headroom`, and refuses (BadInput) when no measured load meets
the target: extrapolating latency beyond what was measured would be a guess.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from datamoat.configs import check
from datamoat.errors import BadInput

__all__ = ["CapacityPlan", "capacity", "from_loadtests", "loadtest_hardware"]


def _n(x: float) -> str:
    """A number as a person writes it: 400, 302.4, 6.65, 0.25."""
    if abs(x - round(x)) < 1e-9:
        return str(round(x))
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


@dataclasses.dataclass
class CapacityPlan:
    """The replica count and the arithmetic behind it (`lines`)."""

    sites: int
    rate_per_site: float
    demand_rps: float
    per_replica_rps: float
    headroom: float
    utilisation: float  # planned fraction of per-replica throughput: headroom, or lower for the p99 target
    usable_rps: float
    replicas_for_load: int
    replicas: int  # replicas_for_load + 1 spare (N+1)
    p99_target_ms: float | None
    p99_status: str  # "none" (no target), "met", "lowered" or "unchecked" (target but no measurement)
    measured_p99_ms: dict[float, float]  # utilisation -> measured p99
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["measured_p99_ms"] = [{"utilisation": u, "p99_ms": p} for u, p in sorted(self.measured_p99_ms.items())]
        return d


def _finite_pos(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def capacity(
    sites: int,
    rate_per_site: float,
    per_replica_rps: float | None,
    *,
    p99_ms: float | None = None,
    measured_p99_ms: float | Mapping[float, float] | None = None,
    measured_utilisation: float = 1.0,
    headroom: float = 0.7,
) -> CapacityPlan:
    """Replicas needed for `sites` each sending `rate_per_site` req/s, plus one spare.

    `per_replica_rps` is one replica's measured maximum throughput (a closed
    loop `datamoat loadtest`). `measured_p99_ms` is a p99 taken at
    `measured_utilisation` (1.0 = at that maximum), or a mapping
    {utilisation: p99_ms} from several runs. `headroom` in (0, 1] is the share
    of the maximum a replica is planned to run at.

    >>> plan = capacity(200, 2.0, 950)
    >>> plan.replicas_for_load, plan.replicas
    (1, 2)
    >>> print(plan.lines[0])
    demand = 200 sites x 2 req/s = 400 req/s
    """
    check(
        isinstance(sites, int) and not isinstance(sites, bool) and sites >= 1,
        f"sites must be a whole number >= 1, got {sites}",
    )
    check(_finite_pos(rate_per_site), f"rate per site must be > 0 req/s, got {rate_per_site}")
    check(
        per_replica_rps is not None,
        "missing per-replica throughput: pass --per-replica-rps X, or --from-loadtest FILE.json saved from `datamoat loadtest URL --json > FILE.json`",
    )
    check(_finite_pos(per_replica_rps), f"per-replica throughput must be > 0 req/s, got {per_replica_rps}")
    check(_finite_pos(headroom) and headroom <= 1, f"headroom must be in (0, 1], got {headroom}")
    check(p99_ms is None or _finite_pos(p99_ms), f"p99 target must be > 0 ms, got {p99_ms}")
    if measured_p99_ms is None:
        raw: Mapping[float, float] = {}
    elif isinstance(measured_p99_ms, Mapping):
        raw = measured_p99_ms
    else:
        raw = {measured_utilisation: measured_p99_ms}
    for u, p in raw.items():
        check(_finite_pos(u) and _finite_pos(p), f"measured p99 {p} ms at utilisation {u}: both must be > 0")
    points: dict[float, float] = {}
    for u, p in raw.items():  # a run slightly above the measured maximum is noise: count it as 100%
        points[min(float(u), 1.0)] = max(points.get(min(float(u), 1.0), 0.0), float(p))
    assert per_replica_rps is not None  # for type checkers; checked above

    demand = sites * rate_per_site
    lines = [f"demand = {sites} sites x {_n(rate_per_site)} req/s = {_n(demand)} req/s"]
    util, status = headroom, "none"
    if p99_ms is None:
        lines += [
            f"measured p99 = {_n(p)} ms at {u:.0%} of max throughput (no p99 target given)"
            for u, p in sorted(points.items())
        ]
    elif not points:
        status = "unchecked"
        lines.append(
            f"p99 target {_n(p99_ms)} ms: NOT CHECKED, no latency was measured; measure it at the planned load with "
            f"`datamoat loadtest URL --rate {_n(round(headroom * per_replica_rps, 1))} --json` and pass --from-loadtest"
        )
    else:
        status, util = _fit_p99(p99_ms, points, headroom, lines, headroom * per_replica_rps)
    usable = per_replica_rps * util
    why = "headroom" if status != "lowered" else "utilisation (lowered for the p99 target)"
    lines.append(f"usable per replica = {_n(per_replica_rps)} req/s x {util:.2f} {why} = {_n(usable)} req/s")
    ratio = demand / usable
    # Round before ceil so that float noise (e.g. 665 / 665.0000000001) does not add a replica.
    n_load = max(1, math.ceil(round(ratio, 9)))
    lines.append(f"replicas for the load = ceil({_n(demand)} / {_n(usable)}) = ceil({ratio:.3f}) = {n_load}")
    lines.append(
        f"replicas = {n_load} + 1 spare for N+1 redundancy = {n_load + 1} "
        "(one replica can fail or be redeployed and the rest still carry the load within the planned utilisation)"
    )
    lines.append(
        f"check: all {n_load + 1} up, each runs at {_n(demand)} / ({n_load + 1} x {_n(per_replica_rps)}) = "
        f"{demand / ((n_load + 1) * per_replica_rps):.0%} of its max; one down, "
        f"{_n(demand)} / ({n_load} x {_n(per_replica_rps)}) = {demand / (n_load * per_replica_rps):.0%}"
    )
    return CapacityPlan(
        sites=sites,
        rate_per_site=float(rate_per_site),
        demand_rps=demand,
        per_replica_rps=float(per_replica_rps),
        headroom=float(headroom),
        utilisation=util,
        usable_rps=usable,
        replicas_for_load=n_load,
        replicas=n_load + 1,
        p99_target_ms=None if p99_ms is None else float(p99_ms),
        p99_status=status,
        measured_p99_ms=points,
        lines=lines,
    )


def _fit_p99(
    target: float, points: dict[float, float], headroom: float, lines: list[str], planned_rps: float
) -> tuple[str, float]:
    """("met" | "lowered", utilisation) from the measurements, or BadInput."""
    vouched, first_miss = 0.0, None
    for u, p in sorted(points.items()):
        if p > target:
            first_miss = (u, p)
            break
        vouched = u
    shown = ", ".join(f"{_n(p)} ms at {u:.0%}" for u, p in sorted(points.items()))
    if vouched == 0.0:
        u, p = first_miss  # type: ignore[misc]
        raise BadInput(
            f"p99 target {_n(target)} ms is not met at any measured load (p99 {_n(p)} ms at {u:.0%} of max throughput): "
            f"measure at the planned load or lower (`datamoat loadtest URL --rate {_n(round(planned_rps, 1))} --json`), make a replica faster, or relax --p99-ms"
        )
    if vouched >= headroom:
        lines.append(
            f"p99 target {_n(target)} ms: met at the planned {headroom:.0%} (measured p99 {shown} of max throughput: "
            f"within the target up to {vouched:.0%}, and a lighter load is not slower)"
        )
        return "met", headroom
    miss = f"; {_n(first_miss[1])} ms at {first_miss[0]:.0%} is over it" if first_miss else ""
    lines.append(
        f"p99 target {_n(target)} ms: not shown at {headroom:.2f} utilisation (measured {shown} of max throughput{miss}); "
        f"the highest measured load that meets it is {vouched:.0%}, so usable utilisation is lowered from {headroom:.2f} to {vouched:.2f}"
    )
    return "lowered", vouched


def from_loadtests(results: Mapping[str, Mapping[str, Any]]) -> tuple[float, dict[float, float], list[str]]:
    """(per-replica req/s, {utilisation: p99_ms}, notes) from `datamoat loadtest --json` outputs.

    The maximum throughput is the best closed-loop run; every run's p99 is a
    point at utilisation = its throughput / that maximum. `results` maps a
    name (the file) to the parsed JSON.

    >>> rps, pts, _ = from_loadtests({"max.json": {"mode": "closed", "throughput_rps": 800.0, "p99_ms": 40.0}})
    >>> rps, pts
    (800.0, {1.0: 40.0})
    """
    check(len(results) > 0, "no loadtest results given: pass --from-loadtest FILE.json")
    for name, r in results.items():
        check(
            isinstance(r, Mapping) and _finite_pos(r.get("throughput_rps", 0)),
            f"{name} has no positive throughput_rps: save a run with `datamoat loadtest URL --json > {name}` (a run with no successful request cannot plan capacity)",
        )
    closed = {name: r for name, r in results.items() if r.get("mode", "closed") == "closed"}
    check(
        bool(closed),
        "every loadtest given is open loop (--rate), which does not measure the maximum throughput: add a closed-loop run, `datamoat loadtest URL --concurrency 32 --json > max.json`",
    )
    best = max(closed, key=lambda name: closed[name]["throughput_rps"])
    per_replica = float(closed[best]["throughput_rps"])
    hw = loadtest_hardware(results)
    from datamoat.inference.hardware import hardware_label

    notes = [
        f"per-replica throughput = {_n(per_replica)} req/s (closed loop, concurrency {closed[best].get('concurrency', '?')}, from {best})",
        f"a replica is what was measured: {hardware_label(hw)}"
        if hw
        else "hardware not recorded in the loadtests (a server before `/v1/model` reported it): plan replicas of the machine you measured",
    ]
    points: dict[float, float] = {}
    for name, r in results.items():
        if r.get("errors"):
            notes.append(
                f"warning: {name} had {r['errors']} failed of {r.get('requests', '?')} requests ({r.get('errors_by', {})}); only successes count"
            )
        if r.get("p99_ms") is not None and _finite_pos(r["p99_ms"]):
            u = min(1.0, float(r["throughput_rps"]) / per_replica)
            points[u] = max(points.get(u, 0.0), float(r["p99_ms"]))
    return per_replica, points, notes


def loadtest_hardware(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The hardware every loadtest in `results` measured (its `server_hardware`), or None where none
    recorded it. Loadtests of different hardware are refused: one replica count cannot be of two machines.

    >>> loadtest_hardware({"a.json": {"server_hardware": {"device": "cpu", "cores": 4}}})
    {'device': 'cpu', 'cores': 4}
    """
    # What makes a replica faster or slower; the onnxruntime version and the like are not compared.
    same = ("device", "provider", "cpu", "cores", "cpu_limit", "gpus")
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, r in results.items():
        hw = r.get("server_hardware") if isinstance(r, Mapping) else None
        if not isinstance(hw, Mapping):
            continue
        key = repr([hw.get(k) for k in same])
        seen.setdefault(key, (name, dict(hw)))
    if len(seen) > 1:
        from datamoat.inference.hardware import hardware_label

        (a, ha), (b, hb) = list(seen.values())[:2]
        raise BadInput(
            f"{a} and {b} measured different hardware ({hardware_label(ha)} against {hardware_label(hb)}): "
            "plan each kind of replica from its own loadtests"
        )
    return next(iter(seen.values()))[1] if seen else None
