"""`datamoat plan`: cloud or edge, from measured inputs and typed prices, with cost and failure modes."""

from __future__ import annotations

from pathlib import Path

import typer

from datamoat.cli._common import JsonOpt, emit

__all__ = ["register"]


def plan_cmd(
    spec: Path = typer.Argument(
        ..., help="Plan spec JSON: sites, p99_budget_ms, accuracy_floor, cloud and edge prices (README: Plan)."
    ),
    loadtest: list[Path] = typer.Option(
        ..., "--loadtest", help="`datamoat loadtest URL --json` of one replica (repeat: closed loop + --rate runs)."
    ),
    edge_bench: Path = typer.Option(
        ..., "--edge-bench", help="`datamoat fleet status --json` (device heartbeats) or bench/results/edge.json."
    ),
    candidates: Path = typer.Option(None, "--candidates", help="compress's candidates.json: pick a model per option."),
    plot: Path = typer.Option(None, "--plot", help="Write a PNG of monthly cost against the number of sites."),
    max_sites: int = typer.Option(0, "--max-sites", help="Sites on the cost curve (0: 4x the spec's, at least 100)."),
    as_json: bool = JsonOpt,
) -> None:
    """Cloud (public, private), edge or hybrid: monthly cost, p99 per site, failure modes, break-even, a pick."""
    from datamoat.configs import check, config_from_dict
    from datamoat.plan import Inputs, PlanConfig, plan, read_candidates, read_edge, read_loadtests
    from datamoat.plan.inputs import read_json
    from datamoat.plan.report import plot as plot_png
    from datamoat.plan.report import render

    obj = read_json(spec, "plan spec", "see the README's Plan section for one")
    check(isinstance(obj, dict), f"{spec}: a plan spec is a JSON object")
    cfg = config_from_dict({"type": "PlanConfig", "version": PlanConfig.VERSION, **obj})
    assert isinstance(cfg, PlanConfig)  # the type is set above; another "type" in the file is refused
    check(max_sites >= 0, f"--max-sites must be >= 0, got {max_sites}")
    inputs = Inputs(
        read_loadtests(list(loadtest)),
        read_edge(edge_bench, cfg.edge.bench_bundle, cfg.edge.device_id),
        read_candidates(candidates) if candidates else [],
        str(candidates or ""),
    )
    result = plan(cfg, inputs, max_sites=max_sites)
    png = plot_png(result, plot, len(cfg.sites)) if plot else None
    obj = {**result.to_dict(), "config": cfg.to_dict(), "plot": str(png) if png else None}
    from rich.markup import escape

    text = escape(render(result, str(spec))) + (f"\nplot: {escape(str(png))}" if png else "")
    emit(obj, as_json, text)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
