"""`datamoat plan`: cloud (public, private), edge or a hybrid, decided from measured inputs and costed.

`plan(PlanConfig(...), Inputs(...))` reads one replica's loadtest, a device's
measured latency and memory and compress's candidate table (each value with
its file), costs every option a month, shows each failure mode's fallback,
finds the break-even number of sites and recommends one option with reasons.
"""

from datamoat.plan.config import CloudSpec, EdgeSpec, PlanConfig, SiteSpec
from datamoat.plan.decide import PlanResult, plan
from datamoat.plan.inputs import EdgeFigures, Inputs, Measured, read_candidates, read_edge, read_loadtests

__all__ = [
    "CloudSpec",
    "EdgeFigures",
    "EdgeSpec",
    "Inputs",
    "Measured",
    "PlanConfig",
    "PlanResult",
    "SiteSpec",
    "plan",
    "read_candidates",
    "read_edge",
    "read_loadtests",
]
