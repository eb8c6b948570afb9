"""Put a catalog model into the registry as a servable ONNX version, open one to run it, and
record its reference profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamoat.errors import BadInput, NotFound
from datamoat.inference.engine import LoadedVersion, open_version
from datamoat.registry.core import Registry
from datamoat.workspace import Workspace

__all__ = ["register_model", "register_compressed", "resolve_version", "load_version", "profile_version"]


def load_version(
    reg: Registry, ref: str, threads: int = 0, *, embeddings: bool = False, device: str = "cpu"
) -> LoadedVersion:
    """Read a version's ONNX bytes from the registry and open a session on `device` (`embeddings`: with its
    penultimate layer as a second output, for drift monitoring): what servers, profiles and
    `datamoat drift` run.

    >>> v = load_version(Registry("sqlite:///reg.db"), "0e25a8328810")  # doctest: +SKIP
    """
    row = reg.version(ref)
    meta = {**row["info"], "version_id": row["id"], "name": row["name"], "kind": row["kind"]}
    return open_version(reg.artifact(row["onnx_sha"]), meta, threads, embeddings=embeddings, device=device)


def register_model(ws: Workspace, reg: Registry, model_ref: str, *, actor: str, int8: bool = False) -> str:
    """Export a catalog model to ONNX (int8 if asked), register it, return the version id.

    >>> vid = register_model(ws, Registry("sqlite://"), "teacher-fashion-mnist", actor="ci")  # doctest: +SKIP
    """
    from datamoat.compress.export import export_bytes
    from datamoat.models import load_model

    model = load_model(ws, model_ref)
    info: dict[str, Any] = {
        "model_id": model.id,
        "classes": model.classes,
        "preprocess": model.preprocess,
        "input_shape": [model.config.in_channels, *model.config.image_size],
        "arch": model.config.arch,
        "params": model.params,
        "lineage": model.lineage,
        "val_accuracy": model.history.get("val_accuracy"),
        "policy": model.lineage.get("policy", {}),
    }
    if int8:
        from datamoat.compress.quantize import quantize_in_workspace

        path, result = quantize_in_workspace(ws, model.id)
        data = path.read_bytes()
        info["quantize"] = {"fp32_accuracy": result.fp32_accuracy, "int8_accuracy": result.int8_accuracy}
        kind = "int8"
    else:
        data, _ = export_bytes(model)
        kind = "fp32"
    return reg.register(data, name=f"{model.name}{'-int8' if int8 else ''}", kind=kind, info=info, actor=actor)


def resolve_version(ws: Workspace, reg: Registry, ref: str, *, actor: str) -> str:
    """A registry version id for `ref`: a version, or a catalog model registered on the fly."""
    try:
        return reg.version(ref)["id"]
    except NotFound:
        try:
            ws.resolve("models", ref)
        except NotFound:
            raise NotFound(
                f"unknown model or version {ref!r}: `datamoat models list` and `datamoat registry list` show them"
            ) from None
        return register_model(ws, reg, ref, actor=actor)


def register_compressed(reg: Registry, out: dict[str, Any], *, actor: str) -> str:
    """Register the candidate `datamoat.compress.compress_in_workspace` chose; returns the version id.

    >>> out = compress_in_workspace(ws, "teacher", CompressConfig())  # doctest: +SKIP
    >>> vid = register_compressed(reg, out, actor="ci")  # doctest: +SKIP
    """
    c = out["candidate"]
    return reg.register(Path(c["onnx_path"]).read_bytes(), name=c["name"], kind=c["kind"], info=c["info"], actor=actor)


def profile_version(
    ws: Workspace, reg: Registry, ref: str, *, actor: str, data: str | None = None, config: Any = None
) -> dict[str, Any]:
    """Profile registry version `ref` on the validation split of `data` (default: the dataset its
    model was trained on, from the workspace) through the inference core, and record it.

    >>> prof = profile_version(ws, reg, "production-candidate", actor="ci")  # doctest: +SKIP
    """
    from datamoat.data.dataset import SPLITS, load_dataset
    from datamoat.evaluate.drift import DriftConfig, reference_profile

    row = reg.version(ref)
    dataset = data or row["info"].get("lineage", {}).get("dataset_id")
    if not dataset:
        raise BadInput(f"version {row['id']} does not name its training data: pass --data DATASET to profile it")
    try:
        ds = load_dataset(ws, dataset)
    except NotFound:
        raise NotFound(f"dataset {dataset} is not in this workspace: pass --data with one that is") from None
    if not (ds.split == SPLITS["val"]).any():
        raise BadInput(f"dataset {ds.id} has no val split to profile on: re-import it with a val fraction")
    version = load_version(reg, row["id"], 1, embeddings=True)
    if version.embedding is None:
        raise BadInput(f"version {row['id']}'s graph has no classifier layer to read embeddings from")
    prof = reference_profile(version, ds, config=config or DriftConfig())
    reg.set_profile(row["id"], prof, actor=actor)
    return prof
