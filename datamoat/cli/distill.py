"""`datamoat distill`: train a small student from a saved teacher's outputs."""

from __future__ import annotations

import typer

from datamoat.cli._common import (
    ConfigDefault,
    JsonOpt,
    check_device,
    device_option,
    emit,
    nproc_option,
    open_ws,
    relaunch,
)

__all__ = ["register"]


def _widths(text: str | None) -> tuple[int, ...] | None:
    """'8,16' -> (8, 16); 'none' or '' -> (); None -> None (the arch's preset)."""
    from datamoat.errors import BadInput

    if text is None:
        return None
    parts = [p for p in text.replace(" ", "").split(",") if p and p.lower() != "none"]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise BadInput(f"widths {text!r} must be comma-separated integers such as 8,16 (or 'none')") from None


def _distill(param: str) -> ConfigDefault:
    return ConfigDefault("datamoat.compress.distill:DistillConfig", param)


def distill_cmd(
    teacher: str = typer.Argument(..., help="Teacher model id, id prefix or name."),
    arch: str = typer.Option(..., "--arch", help="Student architecture (mlp, cnn_small, ...)."),
    channels: str = typer.Option(None, "--channels", help="Student conv widths, e.g. 8,16 (default: the preset)."),
    hidden: str = typer.Option(None, "--hidden", help="Student hidden widths, e.g. 64 or none (default: the preset)."),
    data: str = typer.Option(None, "--data", help="Dataset id or name (default: the teacher's dataset)."),
    temperature: float = typer.Option(
        _distill("temperature"), "--temperature", "-T", help="Softmax temperature T > 0."
    ),
    alpha: float = typer.Option(_distill("alpha"), "--alpha", help="Weight of the soft (teacher) term, in [0, 1]."),
    epochs: int = typer.Option(_distill("train__epochs"), "--epochs", help="Student epochs."),
    augment: str = typer.Option(
        _distill("train__augment"),
        "--augment",
        help="none (teacher logits cached), crop or crop_flip (teacher sees the same batch).",
    ),
    lr: float = typer.Option(_distill("train__lr"), "--lr", help="Peak learning rate."),
    max_train_samples: int = typer.Option(
        _distill("train__max_train_samples"), "--max-train-samples", help="Use a stratified subset (0: all)."
    ),
    seed: int = typer.Option(
        _distill("train__seed"), "--seed", help="Seed for the student's init, order and augmentation."
    ),
    name: str = typer.Option(None, "--name", help="Name for the saved student."),
    nproc: int = nproc_option(),
    device: str = device_option(),
    as_json: bool = JsonOpt,
) -> None:
    """Distill TEACHER into a fresh student of another (smaller) architecture."""
    from datamoat.compress.distill import DistillConfig, distill
    from datamoat.data.dataset import load_dataset
    from datamoat.errors import BadInput
    from datamoat.models import load_model, new_model, save_model
    from datamoat.train import distributed

    check_device(device)
    ws = open_ws()
    t = load_model(ws, teacher)
    data_ref = data or t.lineage.get("dataset_id")
    if not data_ref:
        raise BadInput(f"teacher {t.name} records no dataset: pass --data with a dataset id or name")
    relaunch(nproc, lambda: ws.resolve("datasets", data_ref), device)
    ds = load_dataset(ws, data_ref)
    train = {
        "epochs": epochs,
        "augment": augment,
        "lr": lr,
        "max_train_samples": max_train_samples,
        "seed": seed,
        "device": device,
    }
    # Options left out keep distillation's own training defaults.
    config = DistillConfig(temperature=temperature, alpha=alpha).replace(
        **{f"train__{k}": v for k, v in train.items() if v is not None}
    )
    widths = {k: v for k, v in {"channels": _widths(channels), "hidden": _widths(hidden)}.items() if v is not None}
    student = new_model(arch, ds, seed=seed, **widths)
    with distributed.leaving_together():
        trained = distill(student, t, ds, config, progress=not as_json)
        if not distributed.is_main():
            return  # under torchrun: rank 0 saves and reports for all
    saved = save_model(ws, trained, name=name or f"{arch}-distilled-{t.name}")
    acc = float(saved.history["val_accuracy"])
    emit(
        {
            "model_id": saved.id,
            "name": saved.name,
            "teacher_id": t.id,
            "val_accuracy": acc,
            "params": saved.params,
            "teacher_params": t.params,
            "config": config.to_dict(),
        },
        as_json,
        f"saved {saved.name} ({saved.id}, {saved.params:,} params) distilled from {t.name} "
        f"({t.params:,} params): val accuracy {acc:.4f}",
    )


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_cmd)
