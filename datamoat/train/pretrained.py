"""Starting a run from a checkpoint: `train --weights`."""

from __future__ import annotations

import dataclasses
from typing import Any

from datamoat.errors import BadInput
from datamoat.models.model import Model
from datamoat.workspace import Workspace

__all__ = ["start_from"]


def start_from(model: Model, arch: str, ref: str, keep_head: bool, ws: Workspace | None = None) -> Model:
    """`model` with checkpoint `ref` (a path, hub: reference, or with `ws` a `datamoat pretrain`
    backbone: ``pretrain:<run id>`` or its sha256) loaded, and what was loaded in its lineage."""
    from datamoat.models.backbones import BACKBONES, head_name
    from datamoat.models.weights import load_weights, resolve_checkpoint

    run = None
    if ws is not None:
        from datamoat.train.pretrain import find_pretrained

        run = find_pretrained(ws, ref)
    if run is not None:
        return _from_pretrain(model, arch, run, ws)  # type: ignore[arg-type]
    ckpt = resolve_checkpoint(ref)  # a path, or hub:OWNER/REPO[@REVISION][:FILE] fetched into the HF cache
    # the classifier may differ (other classes); for the small zoo models every key must match
    head = head_name(arch) if arch in BACKBONES else None
    done = load_weights(model.net, ckpt.path, head=head, keep_head=keep_head)
    # the file's content, never its name; for the hub, the repo, file and commit it came from
    pretrained: dict[str, Any] = {"sha256": ckpt.sha256, **({"hub": ckpt.hub} if ckpt.hub else {})}
    pretrained |= {"loaded": done["loaded"], "skipped_head": done["skipped_head"]}
    return dataclasses.replace(model, lineage={**model.lineage, "pretrained": pretrained})


def _from_pretrain(model: Model, arch: str, run: dict[str, Any], ws: Workspace) -> Model:
    """`model` with a pretrain run's backbone loaded; its classifier (absent from the file) stays fresh."""
    from datamoat.models.weights import load_weights
    from datamoat.train.pretrain import PRETRAIN_PREFIX, pretrained_file

    result = run["result"]
    shape = [model.config.in_channels, *model.config.image_size]
    if run["arch"] != arch:
        raise BadInput(
            f"pretrain run {run['id']} trained a {run['arch']} backbone, not {arch}: pass --arch {run['arch']}"
        )
    if list(result["input_shape"]) != shape:
        raise BadInput(
            f"pretrain run {run['id']} saw images of shape {tuple(result['input_shape'])} but this dataset's are "
            f"{tuple(shape)}: pretrain on images like the dataset's"
        )
    done = load_weights(model.net, pretrained_file(ws, result["weights_sha"]), head=result["head"], keep_head=False)
    pretrained = {
        "sha256": result["weights_sha"],
        "pretrain": {"ref": PRETRAIN_PREFIX + run["id"], "run_id": run["id"], "pool_id": run["dataset_id"]},
        "method": run["config"]["pretrain"]["method"],
        "loaded": done["loaded"],
        "skipped_head": done["skipped_head"],
    }
    return dataclasses.replace(model, lineage={**model.lineage, "pretrained": pretrained})
