"""A plan as text (every line of arithmetic, the sources, the assumptions) and as a plot of cost against sites."""

from __future__ import annotations

import math
from pathlib import Path

from datamoat.plan.core import money
from datamoat.plan.decide import PlanResult

__all__ = ["render", "plot"]


def _cost(x: float) -> str:
    return "not priced" if math.isinf(x) else f"{money(x)}/month"


def render(r: PlanResult, spec: str = "the spec") -> str:
    """The plan for a person: measured inputs with their files, assumptions, each option, break-even, recommendation."""
    out = ["Measured (each from its file):"]
    out += [f"  {m['name']} = {m['value']:.4g} {m['unit']}  [{m['source']}]" for m in r.measured]
    out.append(f"Assumptions (typed in {spec}):")
    out.append("  " + ", ".join(f"{a['name']} = {a['value']:g}" for a in r.assumptions))
    out += [f"note: {n}" for n in r.notes]
    for o in r.options.values():
        units = ", ".join(f"{v} {k}" for k, v in o.units.items())
        state = "meets the budget" if o.feasible else "OUT"
        out += ["", f"== {o.name}: {_cost(o.monthly_cost)}, {units} ({state})"]
        out += [f"  {line}" for line in o.capacity_lines]
        out += [f"  cost: {line}" for line in o.cost_lines]
        out.append(
            "  p99 by site (network included): "
            + ", ".join(f"{k} {'not served' if v is None else f'{v:.3g} ms'}" for k, v in o.p99_ms.items())
        )
        for f in o.failures:
            cost = "" if f["monthly_cost"] in (None, 0.0) else f" [{money(f['monthly_cost'])}/month]"
            out.append(f"  if {f['component']} fails: {f['effect']}; fallback: {f['fallback']}{cost}")
        out += [f"  out: {w}" for w in o.why_not]
    out += ["", "Model choice:"]
    for c in r.models.values():
        out += [f"  {line}" for line in (c.lines if c else [])]
    out += ["", "Break-even:"] + [f"  {b['text']}" for b in r.break_even]
    out += ["", f"Recommendation: {r.recommendation or 'none'}"] + [f"  - {x}" for x in r.reasons]
    return "\n".join(out)


def plot(r: PlanResult, path: str | Path, sites_now: int) -> Path:
    """Monthly cost of each option against the number of sites, as a PNG at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = r.curve["sites"]
    for name, o in r.options.items():
        ys = r.curve[name]
        if all(math.isinf(y) for y in ys):
            continue
        ax.plot(xs, ys, label=name, lw=1.4, ls="-" if o.feasible else ":")
    ax.axvline(sites_now, color="grey", lw=0.8, ls="--", label=f"the spec's {sites_now} sites")
    for b in r.break_even:
        if b["sites"] is not None:
            y = r.curve[b["a"]][b["sites"] - 1]
            ax.plot([b["sites"]], [y], "ko", ms=4)
            ax.annotate(f"{b['a']} = {b['b']}\n~{b['sites']} sites", (b["sites"], y), fontsize=7, xytext=(4, -14),
                        textcoords="offset points")  # fmt: skip
    ax.set_xlabel("sites")
    ax.set_ylabel("monthly cost")
    ax.set_title("datamoat plan: monthly cost against sites (dotted: ruled out, see the reasons)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
