"""A training run inside a workspace: its catalog row, per-epoch checkpoints, resume by run id,
and the saved model; under torchrun only rank 0 writes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datamoat.data.dataset import load_dataset
from datamoat.errors import BadInput
from datamoat.models.model import Model, new_model, save_model
from datamoat.train import distributed
from datamoat.train.device import resolve_device
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace

__all__ = ["train_in_workspace"]


def train_in_workspace(
    ws: Workspace,
    data_ref: str | None = None,
    arch: str = "cnn_medium",
    config: TrainConfig | None = None,
    *,
    name: str | None = None,
    resume: str | None = None,
    weights: str | None = None,
    keep_head: bool = False,
    unlabeled: str | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Model, str]:
    """Train inside a workspace: a catalog run row, per-epoch checkpoints under
    `runs/<id>/`, and the model saved at the end. `resume` takes a run id.
    `weights` starts from a checkpoint (a torchvision-format ``.pth`` for the
    photo backbones): every key and shape is checked, except the classifier
    head's, which starts freshly initialised (a checkpoint's head was trained
    for its own classes, even when it has as many); `keep_head` keeps a head
    that fits. The file's sha256 and what was skipped go into the lineage.
    Under torchrun every process trains its share (DDP) and only rank 0
    writes the run, its checkpoints and the model; the other ranks return
    the same weights unsaved (no id), with the run id. `weights` also takes a
    `datamoat pretrain` backbone (``pretrain:<run id>`` or its sha256).
    `unlabeled` (a pool version's id or name) trains semi-supervised
    (FixMatch, `config.semisup`); the run records the pool.

    Returns (saved model, run id).
    """
    if resume:
        row = ws.resolve("runs", resume)
        if "train" not in row["config"]:
            raise BadInput(f"run {row['id']} is a pretrain run: only training runs resume")
        if row["status"] == "completed":
            raise BadInput(f"run {row['id']} already completed (model {row['model_id']}): nothing to resume")
        from datamoat.configs import config_from_dict

        config = config_from_dict(row["config"]["train"])  # type: ignore[assignment]
        data = load_dataset(ws, row["dataset_id"])
        shaped = ("type", "version", "arch", "in_channels", "image_size", "num_classes")  # new_model sets these
        overrides = {k: v for k, v in row["config"]["model"].items() if k not in shaped}
        model = new_model(row["arch"], data, seed=config.seed, **overrides)  # type: ignore[union-attr]
        run_id, name = row["id"], row["name"]
        pool = load_dataset(ws, row["config"]["unlabeled"]) if row["config"].get("unlabeled") else None
    else:
        if data_ref is None:
            raise BadInput("give --data: a dataset id or name (`datamoat data list` shows them)")
        config = config or TrainConfig()
        data = load_dataset(ws, data_ref)
        pool = load_dataset(ws, unlabeled) if unlabeled else None
        model = new_model(arch, data, seed=config.seed)
        if pool is not None:  # refused before the run exists; the run records the FixMatch it trains with
            from datamoat.train.semisup import FixMatchConfig, check_pool

            check_pool(pool, model)
            config = config if config.semisup else config.replace(semisup=FixMatchConfig())
        if weights:
            from datamoat.train.pretrained import start_from

            model = start_from(model, arch, weights, keep_head, ws)
        run_id = ws.new_id()
        name = name or f"{arch}-{data.name}"
    assert config is not None
    rank, _ = distributed.setup(resolve_device(config.device))
    if rank:  # under DDP only rank 0 writes the catalog and the checkpoint; the others learn its run id
        run_id = distributed.broadcast(None)
        return train(
            model,
            data,
            config,
            checkpoint=ws.root / "runs" / run_id / "checkpoint.pt",
            resume=bool(resume),
            progress=False,
            on_epoch=on_epoch,
            unlabeled=pool,
        ), run_id
    if not resume:
        cfg_dict: dict[str, Any] = {"train": config.to_dict(), "model": model.config.to_dict()}
        if pool is not None:
            cfg_dict["unlabeled"] = pool.id
        ws.insert(
            "runs",
            {"id": run_id, "name": name, "dataset_id": data.id, "arch": arch, "status": "running", "config": cfg_dict},
        )
    distributed.broadcast(run_id)
    ckpt = ws.path_for("runs", run_id) / "checkpoint.pt"
    ws.update("runs", run_id, status="running")
    try:
        trained = train(
            model,
            data,
            config,
            checkpoint=ckpt,
            resume=bool(resume),
            progress=progress,
            on_epoch=on_epoch,
            unlabeled=pool,
        )
    except KeyboardInterrupt:
        ws.update("runs", run_id, status="interrupted")
        raise
    except Exception:  # resumable from its last checkpoint once the cause is fixed, never "running" forever
        ws.update("runs", run_id, status="failed")
        raise
    saved = save_model(ws, trained, name=name, run_id=run_id)
    ws.update("runs", run_id, status="completed", model_id=saved.id, result=trained.history)
    return saved, run_id
