"""`datamoat compress`: the whole edge recipe with constraints."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

import typer

from datamoat.cli._common import JsonOpt, console, emit, open_ws


def compress(
    model: str = typer.Argument(..., help="Teacher: a catalog model id or name."),
    max_accuracy_drop: float = typer.Option(1.0, help="Most test-accuracy points the result may lose."),
    max_size_kb: float = typer.Option(0.0, help="Largest ONNX file in KB (0: no limit)."),
    max_latency_ms: float = typer.Option(0.0, help="Slowest batch-1 ORT latency in ms (0: no limit)."),
    student: str = typer.Option("cnn_small", help="Student architecture for distillation."),
    no_distill: bool = typer.Option(False, "--no-distill"),
    no_structured: bool = typer.Option(False, "--no-structured"),
    no_unstructured: bool = typer.Option(False, "--no-unstructured"),
    no_quantize: bool = typer.Option(False, "--no-quantize"),
    distill_epochs: int = typer.Option(5, help="Student epochs."),
    calibration: str = typer.Option("minmax", help="minmax, entropy or percentile."),
    seed: int = typer.Option(0),
    as_json: bool = JsonOpt,
) -> None:
    """Distill, prune, quantize; measure every candidate; register the best that fits."""
    from datamoat.compress import CompressConfig, compress_in_workspace

    cfg = CompressConfig(
        max_accuracy_drop=max_accuracy_drop, max_size_kb=max_size_kb, max_latency_ms=max_latency_ms,
        student_arch=student, distill=not no_distill, structured=not no_structured,
        unstructured=not no_unstructured, quantize=not no_quantize, distill_epochs=distill_epochs,
        calibration=calibration, seed=seed,
    )  # fmt: skip
    actor = os.environ.get("USER") or getpass.getuser()
    out = compress_in_workspace(open_ws(), model, cfg, actor=actor, progress=not as_json)
    if as_json:
        emit(out, True)
        return
    console.print(Path(out["table"]).read_text(), markup=False)
    console.print(f"chosen: {out['chosen']}, registered as version {out['model_id']}; plot: {out['plot']}")


def register(app: typer.Typer) -> None:
    app.command("compress")(compress)
