"""`prune`: one verb, two methods, chosen by the config's type.

- `MagnitudeConfig`: zero the globally smallest conv/linear weights (same
  shapes, same latency; the artifact shrinks through sparse storage, see
  `save_sparse_model`).
- `StructuredConfig`: remove whole filters and hidden units; the result is a
  smaller dense model, faster on any runtime.

Both fine-tune on `data` afterwards as their shared `FinetuneConfig` (the
config's `finetune`) says, when its `epochs` > 0; both return a new `Model`
whose lineage points at the input and whose recipe gains the config, and
record a `PruneReport` (params, MACs, bytes, latency, val accuracy before and
after) in `history["prune"]`.

Adding a method means adding a config and a function to `_METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable

from datamoat.compress.prune.common import FinetuneConfig, PruneReport
from datamoat.compress.prune.structured import StructuredConfig, slice_network, structured_prune
from datamoat.compress.prune.unstructured import MagnitudeConfig, magnitude_prune, weight_sparsity
from datamoat.configs import Config
from datamoat.data.dataset import Dataset
from datamoat.errors import BadInput
from datamoat.models.model import Model, load_sparse_model, save_sparse_model
from datamoat.models.sparse import MAGIC, dense_state_bytes, load_state_bytes, sparse_state_bytes

__all__ = [
    "prune",
    "MagnitudeConfig",
    "StructuredConfig",
    "FinetuneConfig",
    "PruneReport",
    "MAGIC",
    "sparse_state_bytes",
    "load_state_bytes",
    "dense_state_bytes",
    "save_sparse_model",
    "load_sparse_model",
    "slice_network",
    "weight_sparsity",
]

_METHODS: dict[type[Config], Callable[..., Model]] = {
    MagnitudeConfig: magnitude_prune,
    StructuredConfig: structured_prune,
}


def prune(model: Model, config: Config, data: Dataset | None = None, *, latency: str = "onnxruntime") -> Model:
    """Prune `model` by the method `config` names; fine-tune on `data` if the config asks.

    `latency` picks how the report times the models before and after:
    "onnxruntime" (exported, the deployment runtime), "torch" (cheaper), or "none".

    >>> from datamoat.data import import_digits
    >>> from datamoat.models import new_model
    >>> from datamoat.workspace import Workspace
    >>> m = new_model("cnn_small", import_digits(Workspace.init("/tmp/dm-doc")))
    >>> small = prune(m, StructuredConfig(ratio=0.5, finetune=FinetuneConfig(epochs=0)), latency="none")
    >>> small.config.channels, small.params < m.params
    ((8, 16), True)
    """
    method = _METHODS.get(type(config))
    if method is None:
        known = ", ".join(c.__name__ for c in _METHODS)
        raise BadInput(f"prune has no method for {type(config).__name__}: pass one of {known}")
    return method(model, config, data, latency=latency)
