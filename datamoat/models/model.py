"""`Model`: a network plus everything needed to rebuild, preprocess and trace it.

Every verb (`train`, `distill`, `prune`, ...) takes a `Model` and returns a
new one. Saving writes the weights to the artifact store and a catalog row
holding the architecture config, classes, preprocessing and lineage, so any
model can be rebuilt from the workspace alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from datamoat.configs import config_from_dict
from datamoat.data.dataset import Dataset, read_rows, release_freed_memory
from datamoat.errors import BadInput
from datamoat.models.zoo import ModelConfig, build, param_count, preset
from datamoat.workspace import Workspace, short_hash

__all__ = ["Model", "new_model", "save_model", "load_model", "save_sparse_model", "load_sparse_model"]


@dataclasses.dataclass
class Model:
    """A network with its config, classes, preprocessing and lineage."""

    net: nn.Module
    config: ModelConfig
    classes: list[str]
    preprocess: dict[str, Any]
    lineage: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: str | None = None
    name: str | None = None
    storage: str = "dense"  # "sparse": weights stored as bitmask + values (magnitude pruning)

    @property
    def params(self) -> int:
        return param_count(self.net)

    def example_inputs(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        """A random normalised input batch of the right shape, (B, C, H, W)."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, self.config.in_channels, *self.config.image_size, generator=g)

    def to_tensor(self, x: np.ndarray) -> torch.Tensor:
        """uint8 (N, C, H, W) images -> normalised float32 tensor."""
        mean = torch.tensor(self.preprocess["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocess["std"], dtype=torch.float32).view(1, -1, 1, 1)
        t = torch.from_numpy(np.asarray(x, dtype=np.float32)) * float(
            self.preprocess["scale"]
        )  # copies: x is read-only
        return (t - mean) / std

    @contextlib.contextmanager
    def placed(self, device: torch.device | None) -> Iterator[torch.device]:
        """The weights on `device` (None: where they are) for the block, then back where they were;
        a caller scoring many batches moves them once, not once a batch. Yields the device."""
        home = next(self.net.parameters()).device
        dev = device or home
        self.net.to(dev)
        try:
            yield dev
        finally:
            self.net.to(home)

    @torch.no_grad()
    def logits(
        self,
        x: np.ndarray,
        batch_size: int = 1024,
        device: torch.device | None = None,
        *,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Logits for uint8 images (N, C, H, W) -> (N, K), or for the images ``x[rows]`` in that order,
        read batch by batch (`read_rows`), so a mapped dataset is never copied whole. In eval mode and
        fp32, on `device` (default: where the weights are); the weights end where they started."""
        at = np.arange(len(x)) if rows is None else np.asarray(rows)
        # Filled in place: a list of small per-batch results, each left between the large freed
        # batches, would keep the allocator from reusing or returning their memory, and a pass would
        # then take more the more batches it has.
        out = np.empty((len(at), len(self.classes)), dtype=np.float32)  # (N, K)
        was_training = self.net.training
        self.net.eval()
        try:
            with self.placed(device) as dev:
                for i in range(0, len(at), batch_size):
                    xb = self.to_tensor(read_rows(x, at[i : i + batch_size])).to(dev, non_blocking=True)
                    out[i : i + len(xb)] = self.net(xb).float().cpu().numpy()  # (B, K)
                    del xb
                    release_freed_memory()  # the batch's activations, off the heap
        finally:
            self.net.train(was_training)
        return out

    def predict_proba(
        self,
        x: np.ndarray,
        *,
        rows: np.ndarray | None = None,
        batch_size: int = 1024,
        device: torch.device | None = None,
    ) -> np.ndarray:
        """Softmax probabilities for uint8 images (or ``x[rows]``, see `logits`), (N, K)."""
        return torch.softmax(torch.from_numpy(self.logits(x, batch_size, device, rows=rows)), dim=1).numpy()

    def meta(self) -> dict[str, Any]:
        meta = {
            "config": self.config.to_dict(),
            "classes": self.classes,
            "preprocess": self.preprocess,
            "lineage": self.lineage,
            "history": self.history,
            "params": self.params,
        }
        if self.storage != "dense":  # only then, so dense model ids stay as they were
            meta["storage"] = self.storage
        return meta


def new_model(arch: str, data: Dataset, *, seed: int = 0, **overrides: Any) -> Model:
    """A freshly initialised zoo model shaped for `data`.

    >>> from datamoat.data import import_digits
    >>> ws = Workspace.init("/tmp/dm-doc")
    >>> new_model("cnn_small", import_digits(ws)).params > 0
    True
    """
    c, h, w = data.input_shape
    cfg = preset(arch, in_channels=c, image_size=(h, w), num_classes=data.num_classes, **overrides)
    torch.manual_seed(seed)
    return Model(build(cfg), cfg, list(data.classes), dict(data.preprocess), {"dataset_id": data.id})


def _state_bytes(net: nn.Module, storage: str = "dense") -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if storage == "sparse":
        from datamoat.models.sparse import sparse_state_bytes

        return sparse_state_bytes(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_model(ws: Workspace, model: Model, *, name: str | None = None, run_id: str | None = None) -> Model:
    """Store weights + metadata; returns the model with its `id` set.

    The id hashes the weights and metadata, so saving the same model twice is a no-op.
    """
    weights_sha = ws.put_bytes(_state_bytes(model.net, model.storage))
    meta = model.meta()
    model_id = short_hash((weights_sha + json.dumps(meta, sort_keys=True)).encode())
    name = name or model.name or f"{model.config.arch}-{model_id[:6]}"
    ws.insert(
        "models",
        {
            "id": model_id,
            "name": name,
            "arch": model.config.arch,
            "dataset_id": model.lineage.get("dataset_id"),
            "parent_id": model.lineage.get("parent_id"),
            "run_id": run_id,
            "weights_sha": weights_sha,
            "meta": meta,
        },
    )
    return dataclasses.replace(model, id=model_id, name=name)


def load_model(ws: Workspace, ref: str) -> Model:
    """Rebuild a model from the catalog by id, id prefix or name."""
    row = ws.resolve("models", ref)
    meta = row["meta"]
    cfg = config_from_dict(meta["config"])
    if not isinstance(cfg, ModelConfig):
        raise BadInput(f"model {ref!r} has no architecture config: the catalog row is damaged")
    net = build(cfg)
    raw = ws.get_bytes(row["weights_sha"])
    storage = meta.get("storage", "dense")
    if storage == "sparse":
        from datamoat.models.sparse import load_state_bytes

        state = load_state_bytes(raw)
    else:
        state = torch.load(io.BytesIO(raw), weights_only=True)
    net.load_state_dict(state)
    net.eval()
    return Model(
        net,
        cfg,
        meta["classes"],
        meta["preprocess"],
        meta.get("lineage", {}),
        meta.get("history", {}),
        row["id"],
        row["name"],
        storage,
    )


def save_sparse_model(ws: Workspace, model: Model, *, name: str | None = None, run_id: str | None = None) -> Model:
    """`save_model`, but the weights go through `sparse_state_bytes`; meta gets ``"storage": "sparse"``.

    >>> from datamoat.data import import_digits
    >>> from datamoat.models import new_model
    >>> ws = Workspace.init("/tmp/dm-doc")
    >>> m = new_model("mlp", import_digits(ws))
    >>> load_sparse_model(ws, save_sparse_model(ws, m).id).params == m.params
    True
    """
    return save_model(ws, dataclasses.replace(model, storage="sparse"), name=name, run_id=run_id)


def load_sparse_model(ws: Workspace, ref: str) -> Model:
    """`load_model`: it reads sparse and dense rows alike (kept for symmetry)."""
    return load_model(ws, ref)
