"""`datamoat data pool`: unlabeled images into a dataset version's pool, from a folder, the
prediction log or edge devices' uploads (labels come later, as new versions)."""

from __future__ import annotations

from pathlib import Path

import typer

from datamoat.cli._common import ConfigDefault, JsonOpt, emit, open_registry, open_ws

__all__ = ["register"]

_LOG = "datamoat.feedback.intake:LogPoolConfig"
_FOLDER = "datamoat.data.intake:PoolConfig"


def data_pool(
    folder: Path = typer.Argument(None, help="A folder of images (JPEG, PNG, WebP; any size; sub-folders too)."),
    from_log: bool = typer.Option(
        False, "--from-log", help="The prediction log's inputs that have pixels (the review queue's)."
    ),
    from_uploads: bool = typer.Option(False, "--from-uploads", help="The samples edge devices uploaded."),
    into: str = typer.Option(None, "--into", help="Dataset to add them to, as its unlabeled pool (a new version)."),
    like: str = typer.Option(
        None, "--like", help="Dataset or model whose classes, input and preprocessing a pool of its own takes."
    ),
    device: str = typer.Option(None, "--device", help="With --from-uploads: only this device's."),
    status: str = typer.Option(
        ConfigDefault(_LOG, "status"), help="Log items: open (no person decided them yet), decided or all."
    ),
    alias: str = typer.Option(ConfigDefault(_LOG, "alias"), help="Log items of this alias only ('': every one)."),
    strict: bool = typer.Option(ConfigDefault(_FOLDER, "strict"), help="Refuse a folder at its first bad file."),
    name: str = typer.Option(None, help="Human name for the new version."),
    registry: str = typer.Option(None, "--registry", envvar="DATAMOAT_REGISTRY_URL", help="Registry database URL."),
    as_json: bool = JsonOpt,
) -> None:
    """Unlabeled images as a dataset version's pool: resized and converted like the model's input,
    de-duplicated by pixels, their origin (files, prediction ids, devices) in the version's source."""
    from datamoat.data.dataset import load_dataset
    from datamoat.data.intake import PoolConfig, pool_from_folder, pool_target
    from datamoat.errors import BadInput

    if (folder is not None) + from_log + from_uploads != 1:
        raise BadInput("give one source: a FOLDER of images, --from-log or --from-uploads")
    if device and not from_uploads:
        raise BadInput("--device picks the uploads of one device: use it with --from-uploads")
    if (into is None) == (like is None):
        raise BadInput("give --into DATASET (add the images to it) or --like DATASET_OR_MODEL (a pool of its own)")
    ws = open_ws()
    target = pool_target(ws, like) if like else None
    base = load_dataset(ws, into) if into else None
    if folder is not None:
        ds, out = pool_from_folder(ws, folder, like=target, into=base, config=PoolConfig(strict=strict), name=name)
        extra = f", {len(out['skipped'])} file(s) skipped"
    else:
        from datamoat.feedback.intake import LogPoolConfig, pool_from_log

        _, reg = open_registry(registry)
        cfg = LogPoolConfig(status=status, alias=alias)
        if from_uploads:
            from datamoat.edge.uploads import pool_from_uploads

            ds, out = pool_from_uploads(ws, reg, like=target, into=base, device_id=device, config=cfg, name=name)
        else:
            ds, out = pool_from_log(ws, reg, like=target, into=base, config=cfg, name=name)
        extra = f"; the log keeps the pixels of {out['log']['with_pixels']} of its {out['log']['answers']} answers"
    text = (
        f"dataset {ds.id} ({ds.name}): {out['added']} unlabeled image(s) added, {out['duplicates']} already seen"
        f"{extra}; its pool holds {out['unlabeled']}"
    )
    emit(out, as_json, text)


def register(app: typer.Typer) -> None:
    from datamoat.cli.core import data_app

    data_app.command("pool")(data_pool)
