"""`datamoat demo`: the main job on the embedded default workspace."""

from __future__ import annotations

import typer

from datamoat.cli._common import JsonOpt, emit, err_console, open_ws


def demo(
    epochs: int = typer.Option(None, help="Override the demo's epochs."),
    as_json: bool = JsonOpt,
) -> None:
    """Import Fashion-MNIST (digits if absent), train a teacher, evaluate it, write the report."""
    from datamoat.data import sources
    from datamoat.demo import DEMO_TRAIN, run_demo

    if not sources.FASHION_MNIST_DIR.is_dir():  # said first, not after minutes of training
        note = sources.fashion_mnist_missing("digits")
        err_console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    cfg = DEMO_TRAIN.replace(epochs=epochs) if epochs else DEMO_TRAIN
    out = run_demo(open_ws(create=True), config=cfg)
    text = (
        f"dataset {out['dataset_id']} ({out['dataset']}), model {out['model_id']} ({out['arch']}, {out['params']:,} params)\n"
        f"test accuracy {out['test_accuracy']:.4f}, ECE {out['ece']:.4f}, {out['seconds']:.0f}s\n"
        + (f"{out['plateau']['message']}\n" if out["plateau"] else "")
        + f"report: {out['report']}"
    )
    emit(out, as_json, text)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
