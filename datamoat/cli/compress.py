"""`datamoat compress`: the whole edge recipe with constraints."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from datamoat.cli._common import ConfigDefault, JsonOpt, check_device, console, device_option, emit, open_ws

if TYPE_CHECKING:
    from datamoat.compress.recipe import CompressConfig


def _recipe(param: str, *, present: bool = False) -> ConfigDefault:
    return ConfigDefault("datamoat.compress.recipe:CompressConfig", param, present=present)


def compress(
    model: str = typer.Argument(..., help="Teacher: a catalog model id or name."),
    max_accuracy_drop: float = typer.Option(
        _recipe("max_accuracy_drop"), help="Most test-accuracy points the result may lose."
    ),
    max_size_kb: float = typer.Option(_recipe("max_size_kb"), help="Largest ONNX file in KB (0: no limit)."),
    max_latency_ms: float = typer.Option(
        _recipe("max_latency_ms"), help="Slowest batch-1 ORT latency in ms (0: no limit)."
    ),
    student: str = typer.Option(_recipe("student_arch"), help="Student architecture for distillation."),
    distill: bool = typer.Option(_recipe("distill", present=True), "--distill/--no-distill", help="Distill a student."),
    structured: bool = typer.Option(
        _recipe("structured", present=True), "--structured/--no-structured", help="Prune the student's channels."
    ),
    unstructured: bool = typer.Option(
        _recipe("unstructured", present=True),
        "--unstructured/--no-unstructured",
        help="Add magnitude-pruned candidates (off by default: ONNX stores them dense, so they are no smaller or faster).",
    ),
    quantize: bool = typer.Option(
        _recipe("quantize", present=True), "--quantize/--no-quantize", help="int8 of every candidate."
    ),
    distill_epochs: int = typer.Option(_recipe("distill__train__epochs"), help="Student epochs."),
    calibration: str = typer.Option(_recipe("quantize__calibration"), help="minmax, entropy or percentile."),
    seed: int = typer.Option(
        _recipe("distill__train__seed"), help="Seed of every training step: the student's init, order and shifts."
    ),
    device: str = device_option(),
    as_json: bool = JsonOpt,
) -> None:
    """Distill, prune, quantize; measure every candidate; register the best that fits.

    Every option left out takes CompressConfig's default, the recipe that
    bench/results/compression.md measures on the `make demo` teacher.
    """
    from datamoat.compress.recipe import compress_in_workspace

    cfg = recipe_from_options(
        max_accuracy_drop=max_accuracy_drop,
        max_size_kb=max_size_kb,
        max_latency_ms=max_latency_ms,
        student=student,
        steps={"distill": distill, "structured": structured, "unstructured": unstructured, "quantize": quantize},
        distill_epochs=distill_epochs,
        calibration=calibration,
        seed=seed,
        device=device,
    )
    check_device(device)
    actor = os.environ.get("USER") or getpass.getuser()
    from datamoat.registry.core import Registry, registry_url
    from datamoat.registry.register import register_compressed

    ws = open_ws()
    out = compress_in_workspace(ws, model, cfg, progress=not as_json)
    out["model_id"] = register_compressed(Registry(registry_url(ws)), out, actor=actor)
    if as_json:
        emit(out, True)
        return
    console.print(Path(out["table"]).read_text(), markup=False)
    console.print(f"chosen: {out['chosen']}, registered as version {out['model_id']}; plot: {out['plot']}")


def recipe_from_options(
    *,
    max_accuracy_drop: float,
    max_size_kb: float,
    max_latency_ms: float,
    student: str,
    steps: dict[str, bool],
    distill_epochs: int,
    calibration: str,
    seed: int,
    device: str = "auto",
) -> CompressConfig:
    """The `CompressConfig` the options describe: its defaults, each step on or off
    (a step turned on that the recipe skips takes its own config's defaults), and
    the step options applied to the steps that run.

    >>> from datamoat.compress.recipe import CompressConfig
    >>> steps = {"distill": True, "structured": True, "unstructured": False, "quantize": True}
    >>> cfg = recipe_from_options(max_accuracy_drop=1.0, max_size_kb=0, max_latency_ms=0, student="cnn_small",
    ...                           steps=steps, distill_epochs=16, calibration="minmax", seed=0)
    >>> cfg == CompressConfig()
    True
    """
    from datamoat.compress.recipe import CompressConfig

    cfg = CompressConfig()
    toggles: dict[str, Any] = {}
    for step, on in steps.items():
        if not on:
            toggles[step] = None
        elif getattr(cfg, step) is None:
            toggles[step] = {}  # no changes: the step config's own defaults
    cfg = cfg.replace(
        max_accuracy_drop=max_accuracy_drop,
        max_size_kb=max_size_kb,
        max_latency_ms=max_latency_ms,
        student_arch=student,
        **toggles,
    )
    # A skipped step's options are ignored, as they were when the recipe's fields were flat.
    changes = {
        "distill__train__epochs": distill_epochs,
        "quantize__calibration": calibration,
        **{f"{step}__device": device for step in ("distill__train", "structured__finetune", "unstructured__finetune")},
    }
    cfg = cfg.replace(**{k: v for k, v in changes.items() if getattr(cfg, k.partition("__")[0]) is not None})
    return cfg.with_seed(seed)


def register(app: typer.Typer) -> None:
    app.command("compress")(compress)
