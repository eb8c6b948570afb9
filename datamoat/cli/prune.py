"""`datamoat prune`: magnitude (sparse storage) or structured (smaller dense) pruning."""

from __future__ import annotations

import typer

from datamoat.cli._common import (
    ConfigDefault,
    JsonOpt,
    check_device,
    console,
    device_option,
    emit,
    err_console,
    nproc_option,
    open_ws,
    relaunch,
)

__all__ = ["register"]

_MAGNITUDE = "datamoat.compress.prune:MagnitudeConfig"
_STRUCTURED = "datamoat.compress.prune:StructuredConfig"


def prune_cmd(
    model: str = typer.Argument(..., help="Model id, id prefix or name."),
    method: str = typer.Option(
        "magnitude",
        "--method",
        help="magnitude: zero weights, stored sparse (smaller file, same speed); "
        "structured: remove filters (smaller and faster model).",
    ),
    sparsity: float = typer.Option(
        ConfigDefault(_MAGNITUDE, "sparsity"),
        "--sparsity",
        help="magnitude: fraction of conv/linear weights zeroed.",
    ),
    steps: int = typer.Option(
        ConfigDefault(_MAGNITUDE, "steps"),
        "--steps",
        help="magnitude: prune + fine-tune rounds to reach --sparsity.",
    ),
    ratio: float = typer.Option(
        ConfigDefault(_STRUCTURED, "ratio"),
        "--ratio",
        help="structured: fraction of each layer's channels removed.",
    ),
    norm: str = typer.Option(
        ConfigDefault(_STRUCTURED, "norm"), "--norm", help="structured: rank filters by l1 or l2 norm."
    ),
    epochs: int = typer.Option(
        ConfigDefault("datamoat.compress.prune:FinetuneConfig", "epochs"),
        "--epochs",
        help="Fine-tuning epochs (per round for magnitude; 0: none).",
    ),
    latency: str = typer.Option(
        "onnxruntime", "--latency", help="Time both models in onnxruntime (exported), torch, or none."
    ),
    name: str = typer.Option(None, "--name", help="Name for the pruned model."),
    nproc: int = nproc_option(),
    device: str = device_option(),
    as_json: bool = JsonOpt,
) -> None:
    """Prune a model, fine-tune it on its dataset, and save it with the input as parent."""
    from rich.table import Table

    from datamoat.compress.prune import (
        MagnitudeConfig,
        StructuredConfig,
        load_sparse_model,
        prune,
        save_sparse_model,
    )
    from datamoat.configs import check_choice
    from datamoat.data import load_dataset
    from datamoat.errors import BadInput
    from datamoat.models import save_model
    from datamoat.train import distributed

    check_device(device)
    check_choice("method", method, ("magnitude", "structured"))
    if method == "magnitude":
        config: MagnitudeConfig | StructuredConfig = MagnitudeConfig(sparsity=sparsity, steps=steps)
    else:
        config = StructuredConfig(ratio=ratio, norm=norm)
    config = config.replace(finetune__epochs=epochs, finetune__device=device)
    ws = open_ws()
    src = load_sparse_model(ws, model)
    if not src.lineage.get("dataset_id"):
        raise BadInput(f"model {src.name} records no dataset to fine-tune on: it was not trained in this workspace")
    relaunch(nproc, device=device)
    data = load_dataset(ws, src.lineage["dataset_id"])
    if not as_json and distributed.is_main():
        err_console.print(f"pruning {src.name} ({method}), fine-tuning {epochs} epoch(s) on {data.name}...")
    with distributed.leaving_together():
        # Every rank prunes alike (no randomness), then fine-tunes its share of each batch.
        out = prune(src, config, data, latency=latency if distributed.is_main() else "none")
        if not distributed.is_main():
            return  # under torchrun: rank 0 saves and reports for all
    save = save_sparse_model if method == "magnitude" else save_model
    saved = save(ws, out, name=name or f"{src.name}-{method}")
    rep = out.history["prune"]
    # Real sizes of the stored artifacts, not in-memory estimates.
    assert src.id is not None and saved.id is not None  # both are in the catalog
    size = {i: ws.object_size(ws.resolve("models", i)["weights_sha"]) for i in (src.id, saved.id)}
    obj = {
        "model_id": saved.id,
        "name": saved.name,
        "parent_id": src.id,
        "method": method,
        "params_before": rep["params_before"],
        "params_after": rep["params_after"],
        "nonzero_params_after": rep["nonzero_params_after"],
        "flops_before": rep["flops_before"],
        "flops_after": rep["flops_after"],
        "bytes_before": size[src.id],
        "bytes_after": size[saved.id],
        "latency_ms_before": rep.get("latency_ms_before"),
        "latency_ms_after": rep.get("latency_ms_after"),
        "latency_backend": rep.get("latency_backend"),
        "val_accuracy_before": rep["val_accuracy_before"],
        "val_accuracy": rep["val_accuracy_after"],
    }
    if method == "magnitude":
        obj["sparsity"] = rep["sparsity"]
    else:
        obj["channels_removed_fraction"] = rep["channels_removed_fraction"]
        obj["channels"], obj["hidden"] = rep["widths_after"]["channels"], rep["widths_after"]["hidden"]
    if as_json:
        emit(obj, True)
        return
    table = Table("", "before", "after", title=f"{src.name} -> {saved.name}")
    table.add_row("params", f"{obj['params_before']:,}", f"{obj['params_after']:,}")
    if method == "magnitude":
        table.add_row("nonzero params", f"{rep['nonzero_params_before']:,}", f"{obj['nonzero_params_after']:,}")
    table.add_row("MACs", f"{obj['flops_before']:,}", f"{obj['flops_after']:,}")
    table.add_row("bytes stored", f"{obj['bytes_before']:,}", f"{obj['bytes_after']:,}")
    if obj["latency_backend"]:
        label = f"latency ms (b=1, {obj['latency_backend']})"
        table.add_row(label, f"{obj['latency_ms_before']:.3f}", f"{obj['latency_ms_after']:.3f}")
    table.add_row("val accuracy", f"{obj['val_accuracy_before']:.4f}", f"{obj['val_accuracy']:.4f}")
    console.print(table)
    if rep.get("latency_note"):
        err_console.print(rep["latency_note"], highlight=False)
    if method == "magnitude":
        what = f"sparsity {obj['sparsity']:.3f}"
    else:
        what = f"{obj['channels_removed_fraction']:.0%} of prunable channels removed: channels {obj['channels']}, hidden {obj['hidden']}"
    emit(obj, False, f"{what}\nmodel id: {saved.id}")


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_cmd)
