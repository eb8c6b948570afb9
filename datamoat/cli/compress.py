"""`datamoat compress`: the whole edge recipe with constraints."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Any

import typer

from datamoat.cli._common import JsonOpt, console, emit, open_ws


def compress(
    model: str = typer.Argument(..., help="Teacher: a catalog model id or name."),
    max_accuracy_drop: float = typer.Option(None, help="Most test-accuracy points the result may lose [default: 1.0]."),
    max_size_kb: float = typer.Option(None, help="Largest ONNX file in KB [default: 0, no limit]."),
    max_latency_ms: float = typer.Option(None, help="Slowest batch-1 ORT latency in ms [default: 0, no limit]."),
    student: str = typer.Option(None, help="Student architecture for distillation [default: cnn_small]."),
    distill: bool = typer.Option(None, "--distill/--no-distill", help="Distill a student [default: on]."),
    structured: bool = typer.Option(
        None, "--structured/--no-structured", help="Prune the student's channels [default: on]."
    ),
    unstructured: bool = typer.Option(
        None,
        "--unstructured/--no-unstructured",
        help="Add magnitude-pruned candidates [default: off: ONNX stores them dense, so they are no smaller or faster].",
    ),
    quantize: bool = typer.Option(None, "--quantize/--no-quantize", help="int8 of every candidate [default: on]."),
    distill_epochs: int = typer.Option(None, help="Student epochs [default: 16]."),
    calibration: str = typer.Option(None, help="minmax, entropy or percentile [default: minmax]."),
    seed: int = typer.Option(None, help="[default: 0]"),
    as_json: bool = JsonOpt,
) -> None:
    """Distill, prune, quantize; measure every candidate; register the best that fits.

    Every option left out takes CompressConfig's default, the recipe that
    bench/results/compression.md measures on the `make demo` teacher.
    """
    from datamoat.compress.recipe import CompressConfig, compress_in_workspace

    given: dict[str, Any] = {
        "max_accuracy_drop": max_accuracy_drop,
        "max_size_kb": max_size_kb,
        "max_latency_ms": max_latency_ms,
        "student_arch": student,
        "distill": distill,
        "structured": structured,
        "unstructured": unstructured,
        "quantize": quantize,
        "distill_epochs": distill_epochs,
        "calibration": calibration,
        "seed": seed,
    }
    cfg = CompressConfig(**{k: v for k, v in given.items() if v is not None})
    actor = os.environ.get("USER") or getpass.getuser()
    from datamoat.registry import Registry, registry_url
    from datamoat.registry.register import register_compressed

    ws = open_ws()
    out = compress_in_workspace(ws, model, cfg, progress=not as_json)
    out["model_id"] = register_compressed(Registry(registry_url(ws)), out, actor=actor)
    if as_json:
        emit(out, True)
        return
    console.print(Path(out["table"]).read_text(), markup=False)
    console.print(f"chosen: {out['chosen']}, registered as version {out['model_id']}; plot: {out['plot']}")


def register(app: typer.Typer) -> None:
    app.command("compress")(compress)
