"""`PlanConfig`: the sites, the latency budget and what each option costs.

Every number here is one the user types, so the plan labels each as an
assumption; what datamoat measured (a loadtest, the edge runtime's figures,
compress's candidate table) comes in through `datamoat.plan.inputs`, each
value with the file it came from. The config is the spec file `datamoat
plan SPEC.json` reads: a `Config`'s own JSON (``PlanConfig().to_dict()``),
so a plan records exactly what it assumed and loads back.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from datamoat.configs import Config, check, check_choice

__all__ = ["PlanConfig", "SiteSpec", "CloudSpec", "EdgeSpec", "CONNECTIVITY"]

CONNECTIVITY = ("always_on", "intermittent", "offline")


def _nonneg(owner: Config, *names: str, at: str = "") -> None:
    for name in names:
        v = getattr(owner, name)
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        check(ok, f"{at}{name} must be a number >= 0, got {v!r}")


@dataclasses.dataclass
class SiteSpec(Config):
    """One site: its request rates (req/s), its round trip to the cloud (ms) and its link.

    >>> SiteSpec(name="store-1", peak_rps=5, mean_rps=2, rtt_ms=30).connectivity
    'always_on'
    """

    name: str = "site"
    peak_rps: float = 1.0
    mean_rps: float = 1.0
    rtt_ms: float = 0.0  # network round trip from the site to the cloud
    connectivity: str = "always_on"  # always_on | intermittent | offline (never reaches the cloud)

    def validate(self) -> None:
        check(bool(self.name), "a site needs a name")
        _nonneg(self, "peak_rps", "mean_rps", "rtt_ms", at=f"site {self.name}: ")
        check(self.peak_rps > 0, f"site {self.name}: peak_rps must be > 0 req/s, got {self.peak_rps}")
        check(
            self.mean_rps <= self.peak_rps,
            f"site {self.name}: mean_rps {self.mean_rps} is above its peak_rps {self.peak_rps}",
        )
        check_choice(f"connectivity of site {self.name}", self.connectivity, CONNECTIVITY)


@dataclasses.dataclass
class CloudSpec(Config):
    """The cloud's prices: a public instance by the hour, a private server by the month.

    `model` names the candidate (compress's table) the loadtest served; empty
    when it is not one of them. `slowdown` scales the table's batch-1 latency
    differences to this hardware (1.0: as fast as the machine compress measured on).

    >>> CloudSpec(price_per_hour=0.1).zones
    2
    """

    price_per_hour: float = 0.0  # one public instance
    private_server_month: float = 0.0  # one private server, amortised with power and rack
    zones: int = 2  # public: replicas spread evenly over this many zones
    bytes_per_request: float = 0.0  # request + answer on the wire
    transfer_per_gb: float = 0.0  # public egress/ingress price
    private_transfer_per_gb: float = 0.0
    model: str = ""
    slowdown: float = 1.0

    def validate(self) -> None:
        _nonneg(self, "price_per_hour", "private_server_month", "bytes_per_request", "transfer_per_gb")
        _nonneg(self, "private_transfer_per_gb", "slowdown")
        check(isinstance(self.zones, int) and self.zones >= 1, f"zones must be a whole number >= 1, got {self.zones}")


@dataclasses.dataclass
class EdgeSpec(Config):
    """A device: what it costs, how much memory it gives the runtime, how often it fails.

    `bench_bundle` picks the row of the edge benchmark (``fp32``/``int8``);
    `device_id` the device in a `fleet status --json` file (empty: the
    slowest). `model` names the candidate those figures were measured with.
    `low_confidence_rate` is the share of answers the hybrid sends to the
    cloud for review (-1: the fleet's own abstained / predictions).

    >>> EdgeSpec(device_price=300, lifetime_months=36).repair_hours
    48.0
    """

    device_price: float = 0.0
    lifetime_months: float = 36.0
    power_w: float = 0.0
    kwh_price: float = 0.0
    memory_mb: float = 0.0  # the device's memory for the runtime (0: not checked)
    lan_rtt_ms: float = 0.0  # from a camera or till to the device on the site's network
    failures_per_year: float = 0.0  # per device
    repair_hours: float = 48.0  # a failed device is replaced within this
    low_confidence_rate: float = 0.0
    upload_bytes: float = 0.0  # one low-confidence sample uploaded for review
    bench_bundle: str = "int8"
    device_id: str = ""
    model: str = ""
    slowdown: float = 1.0

    def validate(self) -> None:
        _nonneg(self, "device_price", "power_w", "kwh_price", "memory_mb", "lan_rtt_ms", "failures_per_year")
        _nonneg(self, "repair_hours", "upload_bytes", "slowdown")
        check(self.lifetime_months > 0, f"lifetime_months must be > 0, got {self.lifetime_months}")
        rate = self.low_confidence_rate
        check(rate == -1 or 0 <= rate <= 1, f"low_confidence_rate must be in 0..1 (or -1: measured), got {rate}")


@dataclasses.dataclass
class PlanConfig(Config):
    """The whole question: sites, a p99 budget, an accuracy floor, and the options' prices.

    >>> cfg = PlanConfig(sites=({"name": "a", "peak_rps": 4, "mean_rps": 1, "rtt_ms": 20},), p99_budget_ms=100)
    >>> cfg.sites[0].peak_rps, cfg.cloud.zones
    (4, 2)
    """

    sites: tuple[SiteSpec, ...] = ()
    p99_budget_ms: float = 100.0  # what a caller at a site may wait, network included
    accuracy_floor: float = 0.0  # lowest test accuracy a model may have (0: none)
    headroom: float = 0.7  # share of a replica's or device's measured max planned for
    cloud: CloudSpec = dataclasses.field(default_factory=CloudSpec)
    edge: EdgeSpec = dataclasses.field(default_factory=EdgeSpec)

    def validate(self) -> None:
        self.sites = tuple(_site(s) for s in self.sites)
        check(len(self.sites) >= 1, "a plan needs at least one site")
        names = [s.name for s in self.sites]
        check(len(set(names)) == len(names), f"site names repeat: {sorted(n for n in names if names.count(n) > 1)}")
        v = self.p99_budget_ms
        check(isinstance(v, int | float) and math.isfinite(v) and v > 0, f"p99_budget_ms must be > 0, got {v!r}")
        check(0 <= self.accuracy_floor <= 1, f"accuracy_floor must be in 0..1, got {self.accuracy_floor}")
        check(0 < self.headroom <= 1, f"headroom must be in (0, 1], got {self.headroom}")
        for s in self.sites:
            check(
                s.connectivity == "offline" or s.rtt_ms < self.p99_budget_ms,
                f"site {s.name}: the p99 budget {self.p99_budget_ms:g} ms is below its network round trip "
                f"{s.rtt_ms:g} ms, so no cloud answer can meet it: raise the budget, or mark the site offline (edge only)",
            )

    def assumptions(self) -> list[dict[str, Any]]:
        """Every number typed in the spec, labelled as an assumption with its field path."""
        out = [
            {"name": f"sites.{s.name}.{f}", "value": getattr(s, f), "source": "assumption"}
            for s in self.sites
            for f in ("peak_rps", "mean_rps", "rtt_ms")
        ]
        for name, value in self.get_params().items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out.append({"name": name.replace("__", "."), "value": value, "source": "assumption"})
        return out


def _site(s: Any) -> SiteSpec:
    if isinstance(s, SiteSpec):
        return s
    check(isinstance(s, dict), f"a site is an object of its fields, not {type(s).__name__}")
    d = {k: v for k, v in s.items() if k not in ("type", "version")}
    known = {f.name for f in dataclasses.fields(SiteSpec)}
    check(set(d) <= known, f"site has no field(s) {', '.join(sorted(set(d) - known))}: its fields are {sorted(known)}")
    return SiteSpec(**d)
