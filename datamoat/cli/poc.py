"""`datamoat poc`: how much can this model automate at the required accuracy?"""

from __future__ import annotations

import typer

from datamoat.cli._common import JsonOpt, check_device, device_option, emit, open_ws

__all__ = ["register"]


def poc_cmd(
    model: str = typer.Argument(..., help="Model id, id prefix or name."),
    target_accuracy: float = typer.Option(
        ..., "--target-accuracy", help="Accuracy the automated predictions must reach, in (0, 1), e.g. 0.99."
    ),
    delta: float = typer.Option(0.05, "--delta", help="Allowed failure probability of the guarantee, in (0, 1)."),
    slice_by: str = typer.Option(None, "--slice-by", help="Per-slice accuracy: class, predicted or brightness."),
    data: str = typer.Option(None, "--data", help="Dataset id or name (default: the model's own dataset)."),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Guarantee the next N items rather than the population (automates less)."
    ),
    device: str = device_option(),
    as_json: bool = JsonOpt,
) -> None:
    """Feasibility report: coverage at the target, human workload, bias warnings and a verdict."""
    from datamoat.evaluate.feasibility import feasibility_in_workspace

    check_device(device)
    res = feasibility_in_workspace(open_ws(), model, data, target_accuracy, delta, slice_by, batch_size, device)
    if as_json:
        emit(res, True)
        return
    lines = [
        f"verdict:   {res['verdict']}. {res['verdict_text']}",
        f"accuracy:  {res['accuracy']} on {res['n_test']} test items",
        f"coverage:  {res['coverage']} automated at threshold {res['threshold']} (calibrated on val)",
        f"workload:  {res['workload_per_1000']} items per 1,000 go to people",
        *[f"warning:   {w}" for w in res["warnings"]],
        f"report:    {res['report']['html']}",
        f"markdown:  {res['report']['md']}",
    ]
    emit(res, False, "\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command("poc")(poc_cmd)
