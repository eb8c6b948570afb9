"""`export`: a `Model` to a self-describing ONNX file, checked against PyTorch.

The graph takes ``input``, float32 ``(B, C, H, W)`` already normalised with
the model's preprocess, and returns ``logits`` ``(B, K)``. The batch axis is
dynamic. Classes, preprocess, model id, recipe and export config ride along
as ONNX ``metadata_props`` (JSON strings), so a serving process needs only
the file.

We use the torch.export-based ("dynamo") exporter, the default since torch
2.9: the legacy TorchScript exporter still runs on torch 2.13 but warns that
it is deprecated and leaves stray ``Identity`` nodes for shared constants.
The dynamo exporter's optimiser folds eval-mode BatchNorm into the Conv
weights and emits a plain opset-18 graph (Conv, Gemm, Relu, MaxPool,
Reshape, Add, ReduceMean) that stock onnxruntime loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamoat.configs import Config, check
from datamoat.errors import BadInput, DatamoatError, NotFound
from datamoat.models.model import Model, load_model
from datamoat.workspace import Workspace, atomic_write

__all__ = [
    "ExportConfig",
    "ExportParityError",
    "export",
    "export_bytes",
    "check_parity",
    "onnx_metadata",
    "set_onnx_metadata",
    "export_in_workspace",
]

META_PREFIX = "datamoat."
# Opsets the dynamo exporter emits natively and onnxruntime 1.18+ runs. Not
# 17: its down-converter fails on ReduceMean (axes moved from input to
# attribute) and silently leaves the graph at 18.
OPSETS = (18, 19, 20, 21)


@dataclasses.dataclass
class ExportConfig(Config):
    """How to export. `atol` bounds max |ORT - PyTorch| over `parity_batch` inputs."""

    opset: int = 18
    dynamic_batch: bool = True
    atol: float = 1e-4
    parity_batch: int = 32

    def validate(self) -> None:
        check(self.opset in OPSETS, f"opset {self.opset} is not supported: choose one of {', '.join(map(str, OPSETS))}")
        check(self.atol > 0, f"atol must be positive, got {self.atol}")
        check(self.parity_batch >= 1, f"parity_batch must be at least 1, got {self.parity_batch}")


class ExportParityError(DatamoatError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


@contextlib.contextmanager
def _quiet_exporter():
    # The exporter logs "torchvision is not installed" and a FutureWarning from
    # torch internals on every call; neither is actionable for our users.
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _ort_run(onnx_model: str | Path | bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    src = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else len(x)
    return np.concatenate([sess.run(None, {name: x[i : i + step]})[0] for i in range(0, len(x), step)])


def check_parity(model: Model, onnx_model: str | Path | bytes, atol: float = 1e-4, batch: int = 32) -> float:
    """Max |ORT - PyTorch| logits on `batch` example inputs; raises
    `ExportParityError` when it exceeds `atol`.

    >>> check_parity(model, "model.onnx")  # doctest: +SKIP
    3.5e-07
    """
    x = model.example_inputs(batch)  # (B, C, H, W)
    was_training = model.net.training
    model.net.eval()
    with torch.no_grad():
        ref = model.net(x).numpy()  # (B, K)
    model.net.train(was_training)
    out = _ort_run(onnx_model, x.numpy())
    diff = float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf")
    if not diff <= atol:  # also catches NaN
        raise ExportParityError(
            f"export parity failed: max abs diff {diff:.3g} > atol {atol:g}: the ONNX graph does not compute "
            "what the PyTorch model does: report it with the model's arch, or loosen ExportConfig.atol"
        )
    return diff


def export_bytes(model: Model, config: ExportConfig | None = None) -> tuple[bytes, float]:
    """Serialised ONNX model and its parity max abs diff (already checked).

    >>> data, diff = export_bytes(model)  # doctest: +SKIP
    """
    import onnx

    cfg = config or ExportConfig()
    net = model.net
    was_training = net.training
    net.eval()  # BatchNorm uses running stats and folds; Dropout is a no-op
    # Batch 2, not 1: torch.export specialises a size-1 dim to a constant.
    example = model.example_inputs(2 if cfg.dynamic_batch else 1)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                net,
                (example,),
                input_names=["input"],
                output_names=["logits"],
                opset_version=cfg.opset,
                dynamo=True,
                external_data=False,
                optimize=True,
                verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},) if cfg.dynamic_batch else None,
            )
    finally:
        net.train(was_training)
    assert program is not None  # the dynamo exporter returns its ONNXProgram
    proto = program.model_proto
    for node in proto.graph.node:
        # The exporter stamps each node with its Python stack trace: local
        # paths we should not ship, and ~2% of a small model's bytes.
        del node.metadata_props[:]
    got = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    check(got == cfg.opset, f"the exporter produced opset {got}, not {cfg.opset}: export with --opset {got}")
    meta = {
        "classes": model.classes,
        "preprocess": model.preprocess,
        "model_id": model.id,
        "model_name": model.name,
        "arch": model.config.arch,
        "input_shape": [model.config.in_channels, *model.config.image_size],
        "recipe": [*model.lineage.get("recipe", []), cfg.to_dict()],
        "export_config": cfg.to_dict(),
    }
    set_onnx_metadata(proto, meta)
    diff = check_parity(model, proto.SerializeToString(), cfg.atol, cfg.parity_batch)
    # Metadata does not change the computation, so the diff stays valid.
    set_onnx_metadata(proto, {"parity_max_abs_diff": diff})
    onnx.checker.check_model(proto)
    return proto.SerializeToString(), diff


def set_onnx_metadata(proto: Any, values: dict[str, Any]) -> None:
    """Store `values` as JSON ``datamoat.*`` metadata_props on an ONNX ModelProto."""
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({META_PREFIX + k: json.dumps(v, sort_keys=True) for k, v in values.items()})
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The datamoat metadata stored in an ONNX file, JSON-decoded.

    >>> onnx_metadata("model.onnx")["classes"]  # doctest: +SKIP
    ['0', '1', ...]
    """
    import onnx

    if not Path(path).is_file():
        raise NotFound(f"no ONNX file at {path}: run `datamoat export` first")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise BadInput(
            f"{path} is not an ONNX model ({type(e).__name__}): give a file written by `datamoat export`"
        ) from e
    n = len(META_PREFIX)
    return {p.key[n:]: json.loads(p.value) for p in proto.metadata_props if p.key.startswith(META_PREFIX)}


def export(model: Model, path: str | Path, config: ExportConfig | None = None) -> Path:
    """Write `model` as ONNX to `path` (atomically) after a parity check.

    >>> from datamoat.data import import_digits
    >>> from datamoat.models import new_model
    >>> ws = Workspace.init("/tmp/dm-doc")
    >>> export(new_model("mlp", import_digits(ws)), "/tmp/dm-doc/mlp.onnx").name
    'mlp.onnx'
    """
    data, _ = export_bytes(model, config)
    path = Path(path)
    atomic_write(path, data)
    return path


def export_in_workspace(
    ws: Workspace, model_ref: str | Model, config: ExportConfig | None = None
) -> tuple[Path, dict[str, Any]]:
    """Export a catalog model into the artifact store and to
    ``<workspace>/onnx/<model id>.onnx``; returns (path, info).

    >>> path, info = export_in_workspace(ws, "cnn_small-digits")  # doctest: +SKIP
    >>> info["sha"]  # doctest: +SKIP
    '3f2a...'
    """
    cfg = config or ExportConfig()
    model = load_model(ws, model_ref) if isinstance(model_ref, str) else model_ref
    check(model.id is not None, "the model is not saved: save it to the workspace before exporting it there")
    data, diff = export_bytes(model, cfg)
    sha = ws.put_bytes(data)
    path = ws.path_for("onnx") / f"{model.id}.onnx"
    atomic_write(path, data)
    info = {
        "model_id": model.id,
        "model_name": model.name,
        "path": str(path),
        "sha": sha,
        "bytes": len(data),
        "parity_max_abs_diff": diff,
        "config": cfg.to_dict(),
    }
    return path, info
