"""Commands: export (a catalog model to ONNX) and quantize (to int8, measured)."""

from __future__ import annotations

from pathlib import Path

import typer

from datamoat.cli._common import ConfigDefault, JsonOpt, emit, open_ws

__all__ = ["register"]

_QUANTIZE = "datamoat.compress.quantize:QuantizeConfig"


def _catalog_ref(model: str) -> str:
    from datamoat.errors import BadInput

    if Path(model).is_file():
        raise BadInput(f"{model} is a file, not a catalog model: give a model id or name (`datamoat models list`)")
    return model


def export_cmd(
    model: str = typer.Argument(..., help="Model id, id prefix or name."),
    output: Path = typer.Option(None, "-o", "--output", help="Also write the ONNX file here."),
    opset: int = typer.Option(
        ConfigDefault("datamoat.compress.export:ExportConfig", "opset"), "--opset", help="ONNX opset (18-21)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Export a model to ONNX, checked against PyTorch, into the workspace."""
    from datamoat.compress.export import ExportConfig, export_in_workspace
    from datamoat.workspace import atomic_write

    cfg = ExportConfig(opset=opset)
    ws = open_ws()
    path, info = export_in_workspace(ws, _catalog_ref(model), cfg)
    if output is not None:
        atomic_write(output, path.read_bytes())
        info["path"] = str(output)
    emit(
        info,
        as_json,
        f"exported {info['model_name']} to {info['path']}: {info['bytes']:,} bytes, "
        f"parity max abs diff {info['parity_max_abs_diff']:.2g} (ONNX Runtime vs PyTorch)",
    )


def quantize_cmd(
    model: str = typer.Argument(..., help="Model id, id prefix or name."),
    calibration: str = typer.Option(
        ConfigDefault(_QUANTIZE, "calibration"), "--calibration", help="minmax, entropy or percentile."
    ),
    method: str = typer.Option(
        ConfigDefault(_QUANTIZE, "method"),
        "--method",
        help="auto (static for conv nets, else dynamic), static, dynamic.",
    ),
    max_accuracy_drop: float = typer.Option(
        ConfigDefault(_QUANTIZE, "max_accuracy_drop"), "--max-accuracy-drop", help="Accuracy budget in points."
    ),
    bench: bool = typer.Option(True, "--bench/--no-bench", help="Time fp32 vs int8 on this machine."),
    threads: int = typer.Option(
        1, "--threads", help="onnxruntime threads for the timing (0: all cores; 1 is steadiest)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Quantize a model to int8 within an accuracy budget, and time it against fp32."""
    from datamoat.compress.quantize import QuantizeConfig, quantize_in_workspace
    from datamoat.inference.onnx import measure_latency

    cfg = QuantizeConfig(method=method, calibration=calibration, max_accuracy_drop=max_accuracy_drop)
    ws = open_ws()
    path, r = quantize_in_workspace(ws, _catalog_ref(model), cfg)
    out = r.to_dict()
    acc = "not checked (the dataset has no val split)"
    if r.accuracy_drop is not None:
        assert r.fp32_accuracy is not None and r.int8_accuracy is not None  # accuracy_drop needs both
        acc = (
            f"fp32 {100 * r.fp32_accuracy:.2f}%  int8 {100 * r.int8_accuracy:.2f}%  "
            f"(drop {r.accuracy_drop:.2f} points, budget {cfg.max_accuracy_drop:g})"
        )
    lines = [
        f"int8 ({r.method}, {cfg.calibration} calibration) written to {path}",
        f"  accuracy  {acc}",
        f"  size      {r.fp32_bytes:,} -> {r.int8_bytes:,} bytes ({r.int8_bytes / r.fp32_bytes:.2f}x)",
        "  kept fp32 " + (", ".join(f"{n} ({why})" for n, why in r.excluded.items()) or "nothing"),
    ]
    if bench:
        from datamoat.compress.export import onnx_metadata

        shape = tuple(onnx_metadata(r.source)["input_shape"])
        lat = measure_latency({"fp32": r.source, "int8": path}, shape, threads=threads)
        ratios = {b: lat["int8"][f"latency_ms_b{b}"] / lat["fp32"][f"latency_ms_b{b}"] for b in (1, 64)}
        out["latency"], out["int8_faster"] = lat, {f"b{b}": x < 1 for b, x in ratios.items()}
        for b in (1, 64):
            lines.append(
                f"  batch {b:<3} fp32 {lat['fp32'][f'latency_ms_b{b}']:.3f} ms  int8 {lat['int8'][f'latency_ms_b{b}']:.3f} ms "
                f"({ratios[b]:.2f}x)  median of 50, {threads or 'all'} thread(s)"
            )
        slow = [f"batch {b}" for b, x in ratios.items() if x >= 1]
        if slow:
            where = "" if len(slow) == len(ratios) else f" at {', '.join(slow)}"
            lines.append(f"  int8 is NOT faster than fp32 on this machine{where}")
    emit(out, as_json, "\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
    app.command("quantize")(quantize_cmd)
