"""`datamoat eval`: score a model on a split and write its report."""

from __future__ import annotations

import typer

from datamoat.cli._common import ConfigDefault, JsonOpt, check_device, console, emit, open_ws

__all__ = ["register"]


def eval_cmd(
    model: str = typer.Argument(..., help="Model id, id prefix or name."),
    data: str = typer.Option(None, "--data", help="Dataset id or name (default: the model's own dataset)."),
    split: str = typer.Option("test", "--split", help="Split to score: train, val or test."),
    device: str = typer.Option(
        ConfigDefault("datamoat.evaluate.metrics:EvalConfig", "device"),
        "--device",
        help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Accuracy, per-class F1, calibration (ECE) and an HTML report."""
    from rich.markup import escape
    from rich.table import Table

    from datamoat.evaluate.metrics import EvalConfig
    from datamoat.evaluate.report import evaluate_in_workspace

    cfg = EvalConfig(split=split, device=device)
    check_device(device)
    ws = open_ws()
    ev, paths, eval_id = evaluate_in_workspace(ws, model, data, cfg)
    obj = {
        "eval_id": eval_id,
        "model_id": ev.model_id,
        "dataset_id": ev.dataset_id,
        "split": ev.split,
        "n": ev.n,
        "accuracy": ev.accuracy,
        "macro_f1": ev.macro_f1,
        "ece": ev.ece,
        "per_class": ev.per_class,
        "confusion": ev.confusion,
        "worst_confusions": ev.worst_confusions,
        "report": str(paths["html"].resolve()),
        "report_md": str(paths["md"].resolve()),
    }
    if as_json:
        emit(obj, True)
        return
    table = Table("class", "precision", "recall", "F1", "support", title=f"{ev.split} split, {ev.n} samples")
    for p in ev.per_class:
        table.add_row(p["class"], f"{p['precision']:.3f}", f"{p['recall']:.3f}", f"{p['f1']:.3f}", str(p["support"]))
    emit(obj, False, f"accuracy {ev.accuracy:.4f}   macro F1 {ev.macro_f1:.4f}   ECE {ev.ece:.4f}")
    console.print(table)
    worst = ", ".join(f"{escape(w['true'])} -> {escape(w['predicted'])} ({w['count']})" for w in ev.worst_confusions)
    emit(obj, False, f"worst confusions: {worst or 'none, no errors'}")
    emit(obj, False, f"report:   {obj['report']}\nmarkdown: {obj['report_md']}\neval id:  {eval_id}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
