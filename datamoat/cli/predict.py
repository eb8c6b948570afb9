"""`datamoat predict`: every sample's prediction, streamed into a Parquet file."""

from __future__ import annotations

from pathlib import Path

import typer

from datamoat.cli._common import ConfigDefault, JsonOpt, check_device, emit, nproc_option, open_ws, relaunch

__all__ = ["register"]

_PREDICT = "datamoat.evaluate.predict:PredictConfig"


def predict_cmd(
    data: str = typer.Argument(..., help="Dataset id, id prefix or name."),
    model: str = typer.Option(..., "--model", help="Model id, id prefix or name."),
    output: Path = typer.Option(..., "--output", "-o", help="The Parquet file to write (FILE.parquet)."),
    split: str = typer.Option(
        ConfigDefault(_PREDICT, "split"), help="all, train, val, test or pool (the unlabeled items)."
    ),
    batch_size: int = typer.Option(ConfigDefault(_PREDICT, "batch_size"), help="Samples per batch and row group."),
    top_k: int = typer.Option(
        None, "--top-k", help="Likeliest classes kept per sample (default: 5, or every class when fewer)."
    ),
    workers: int = typer.Option(
        ConfigDefault(_PREDICT, "workers"), help="Photo decode processes (-1: every core but one)."
    ),
    device: str = typer.Option(
        ConfigDefault(_PREDICT, "device"), help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
    nproc: int = nproc_option("predict"),
    as_json: bool = JsonOpt,
) -> None:
    """Predict every sample of a dataset split: index, id, label, prediction, confidence, top-k."""
    from datamoat.evaluate.predict import PredictConfig, check_output, predict_in_workspace
    from datamoat.train import distributed

    cfg = PredictConfig(split=split, batch_size=batch_size, top_k=top_k, workers=workers, device=device)
    check_device(device)  # before the workspace, as every command that runs a model
    ws = open_ws()

    def names_exist() -> None:  # said once here, not once by every rank
        check_output(output, overwrite)
        ws.resolve("models", model)
        ws.resolve("datasets", data)

    relaunch(nproc, names_exist, device)
    with distributed.leaving_together():
        out = predict_in_workspace(ws, data, model, output, cfg, overwrite=overwrite)
        if not distributed.is_main():  # rank 0 wrote the file and speaks for every rank
            return
    emit(
        out,
        as_json,
        f"{out['rows']:,} predictions of model {out['model_id']} on dataset {out['dataset_id']} ({split}) "
        f"written to {out['output']} in {out['seconds']:.1f}s",
    )


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_cmd)
