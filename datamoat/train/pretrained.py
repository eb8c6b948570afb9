"""Starting a run from a checkpoint: `train --weights`."""

from __future__ import annotations

import dataclasses
from typing import Any

from datamoat.models.model import Model

__all__ = ["start_from"]


def start_from(model: Model, arch: str, ref: str, keep_head: bool) -> Model:
    """`model` with checkpoint `ref` (a path or hub: reference) loaded, and what was loaded in its lineage."""
    from datamoat.models.backbones import BACKBONES, head_name
    from datamoat.models.weights import load_weights, resolve_checkpoint

    ckpt = resolve_checkpoint(ref)  # a path, or hub:OWNER/REPO[@REVISION][:FILE] fetched into the HF cache
    # the classifier may differ (other classes); for the small zoo models every key must match
    head = head_name(arch) if arch in BACKBONES else None
    done = load_weights(model.net, ckpt.path, head=head, keep_head=keep_head)
    # the file's content, never its name; for the hub, the repo, file and commit it came from
    pretrained: dict[str, Any] = {"sha256": ckpt.sha256, **({"hub": ckpt.hub} if ckpt.hub else {})}
    pretrained |= {"loaded": done["loaded"], "skipped_head": done["skipped_head"]}
    return dataclasses.replace(model, lineage={**model.lineage, "pretrained": pretrained})
