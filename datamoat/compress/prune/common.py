"""What both pruning methods share: fine-tuning, measuring, and the result's lineage."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, TypedDict

import numpy as np
import torch

from datamoat.compress.flops import count_flops
from datamoat.configs import Config, check, check_choice
from datamoat.data.dataset import Dataset
from datamoat.data.transforms import AUGMENTATIONS
from datamoat.errors import BadInput
from datamoat.models.model import Model
from datamoat.models.sparse import dense_state_bytes
from datamoat.train.device import DEVICES
from datamoat.train.loop import TrainConfig, train

LATENCY_BACKENDS = ("onnxruntime", "torch", "none")

__all__ = [
    "FinetuneConfig",
    "nest_finetune",
    "LATENCY_BACKENDS",
    "latency",
    "PruneReport",
    "measure",
    "compare",
    "need_data",
    "finetune",
    "val_accuracy",
    "finish",
]


@dataclasses.dataclass
class FinetuneConfig(Config):
    """How a pruned model is fine-tuned (`finetune`): `epochs` of training (0: none) on the
    model's dataset, with this peak `lr`, batch size, seed and augmentation.

    >>> FinetuneConfig(epochs=2, augment="crop").lr
    0.001
    """

    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0
    augment: str = "none"
    device: str = "auto"  # auto (CUDA, then MPS, then the CPU), cpu, cuda or mps

    def validate(self) -> None:
        check(self.epochs >= 0, f"epochs must be >= 0, got {self.epochs} (0: no fine-tuning)")
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.batch_size >= 2, f"batch_size must be at least 2, got {self.batch_size}")
        check_choice("augmentation", self.augment, AUGMENTATIONS)
        check_choice("device", self.device, DEVICES)


# Version 1 of the prune configs kept the fine-tune fields flat, under these names.
_FLAT_FINETUNE = {
    "finetune_epochs": "epochs",
    "lr": "lr",
    "batch_size": "batch_size",
    "seed": "seed",
    "augment": "augment",
}


def nest_finetune(d: dict[str, Any]) -> dict[str, Any]:
    """A version 1 prune config's fields with its flat fine-tune fields moved under `finetune`.

    >>> nest_finetune({"ratio": 0.5, "finetune_epochs": 0, "lr": 0.01})
    {'ratio': 0.5, 'finetune': {'epochs': 0, 'lr': 0.01}}
    """
    out = {k: v for k, v in d.items() if k not in _FLAT_FINETUNE}
    finetune = {new: d[old] for old, new in _FLAT_FINETUNE.items() if old in d}
    return {**out, "finetune": finetune} if finetune else out


class PruneReport(TypedDict, total=False):
    """What `prune` records in `history["prune"]` (method-specific keys may be absent).

    bytes_* are real artifact sizes: `torch.save` for dense storage, the sparse
    container for `storage == "sparse"`. latency_ms_* is the median of batch-1
    forward passes on one CPU thread of this machine (`latency_backend` says
    with what, see `latency`): a relative number, only comparable within one
    report.
    """

    method: str
    params_before: int
    params_after: int
    nonzero_params_before: int
    nonzero_params_after: int
    flops_before: int
    flops_after: int
    nonzero_flops_after: int
    bytes_before: int
    bytes_after: int
    dense_bytes_after: int
    latency_ms_before: float
    latency_ms_after: float
    latency_backend: str
    latency_note: str
    val_accuracy_before: float | None
    val_accuracy_pruned: float | None
    val_accuracy_after: float | None
    storage: str
    target_sparsity: float
    sparsity: float
    steps: list[dict[str, Any]]
    channels_removed_fraction: float
    widths_before: dict[str, list[int]]
    widths_after: dict[str, list[int]]


def need_data(config: Config, data: Dataset | None) -> None:
    ft = getattr(config, "finetune", None)
    epochs = ft.epochs if ft is not None else 0
    if epochs and data is None:
        raise BadInput(
            f"{type(config).__name__} fine-tunes for {epochs} epoch(s) and needs a dataset: pass data, "
            "or set finetune=FinetuneConfig(epochs=0)"
        )


def finetune(model: Model, data: Dataset, config: FinetuneConfig, seed_offset: int = 0) -> Model:
    """`train` for `config.epochs` epochs with the config's lr, batch size, seed and augmentation.

    A cosine schedule from `lr` down (no warm-up: the weights are already
    trained), no early stopping (there are only a few epochs), and the
    caller's torch thread count.
    """
    tc = TrainConfig(
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        seed=config.seed + seed_offset,
        augment=config.augment,
        schedule="cosine",
        patience=0,
        threads=torch.get_num_threads(),  # the caller's setting; train's 0 would take every core
        device=config.device,
    )
    return train(dataclasses.replace(model, id=None), data, tc, progress=False)


def val_accuracy(model: Model, data: Dataset | None) -> float | None:
    """Accuracy on the val split (None without data)."""
    if data is None:
        return None
    x, y = data.subset("val")
    if len(y) == 0:
        return None
    return float(np.mean(model.logits(x).argmax(1) == y))


@torch.inference_mode()
def _torch_latency_ms(model: Model, runs: int = 30) -> float:
    # One thread: at batch 1 a second thread buys little, and on a shared
    # machine a descheduled worker thread inflates the median 100x.
    net, threads = model.net, torch.get_num_threads()
    was_training = net.training
    net.eval()
    torch.set_num_threads(1)
    try:
        x = model.example_inputs(1)  # (1, C, H, W)
        for _ in range(5):  # warm-up: first calls allocate
            net(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
        net.train(was_training)
    return 1000.0 * statistics.median(times)


def measure(model: Model, data: Dataset | None) -> dict[str, Any]:
    """Params (all and nonzero), MACs (dense and nonzero), torch.save bytes, val accuracy."""
    params = list(model.net.parameters())
    return {
        "params": sum(p.numel() for p in params),
        "nonzero_params": sum(int(torch.count_nonzero(p)) for p in params),
        "flops": count_flops(model),
        "nonzero_flops": count_flops(model, nonzero=True),
        "bytes": len(dense_state_bytes(model.net.state_dict())),
        "val_accuracy": val_accuracy(model, data),
    }


def compare(before: dict[str, Any], after: dict[str, Any]) -> PruneReport:
    """The before/after half of a `PruneReport`."""
    return PruneReport(
        params_before=before["params"],
        params_after=after["params"],
        nonzero_params_before=before["nonzero_params"],
        nonzero_params_after=after["nonzero_params"],
        flops_before=before["flops"],
        flops_after=after["flops"],
        nonzero_flops_after=after["nonzero_flops"],
        bytes_before=before["bytes"],
        bytes_after=after["bytes"],
        val_accuracy_before=before["val_accuracy"],
        val_accuracy_after=after["val_accuracy"],
    )


def latency(before: Model, after: Model, backend: str) -> dict[str, Any]:
    """Batch-1 median latency of both models on one CPU thread, as PruneReport keys.

    "onnxruntime" exports both (parity-checked) and times them interleaved
    with `datamoat.inference.onnx.measure_latency`, so machine noise hits both alike;
    if export fails the reason is kept in `latency_note` and PyTorch times
    them instead. "torch" times the PyTorch modules; "none" skips it.
    """
    check_choice("latency backend", backend, LATENCY_BACKENDS)
    if backend == "none":
        return {}
    out: dict[str, Any] = {}
    if backend == "onnxruntime":
        try:
            from datamoat.compress.export import export_bytes
            from datamoat.inference.onnx import measure_latency

            onnx = {"before": export_bytes(before)[0], "after": export_bytes(after)[0]}
            shape = (before.config.in_channels, *before.config.image_size)
            res = measure_latency(onnx, shape, batch_sizes=(1,), threads=1)  # type: ignore[arg-type]
            return {
                "latency_ms_before": res["before"]["latency_ms_b1"],
                "latency_ms_after": res["after"]["latency_ms_b1"],
                "latency_backend": "onnxruntime-cpu-1-thread",
            }
        except Exception as e:  # a measurement must not fail the prune; the note says why
            out["latency_note"] = f"onnxruntime latency unavailable ({e}); timed in PyTorch instead"
    return {
        **out,
        "latency_ms_before": _torch_latency_ms(before),
        "latency_ms_after": _torch_latency_ms(after),
        "latency_backend": "torch-cpu-1-thread",
    }


def finish(
    source: Model, pruned: Model, config: Config, data: Dataset | None, report: PruneReport, latency_backend: str
) -> Model:
    """The returned model: lineage points at `source`, recipe gains `config` only.

    Fine-tuning calls `train`, which appends its own TrainConfig to the
    recipe; those are dropped, because the prune config already implies them
    and replaying the recipe must not fine-tune twice.
    """
    lineage = dict(source.lineage)
    if source.id:
        lineage["parent_id"] = source.id
    if data is not None:
        lineage["dataset_id"] = data.id
    lineage["recipe"] = [*source.lineage.get("recipe", []), config.to_dict()]
    pruned.net.eval()
    report.update(latency(source, pruned, latency_backend))  # type: ignore[typeddict-item]
    history = {"val_accuracy": report.get("val_accuracy_after"), "prune": dict(report)}
    return dataclasses.replace(pruned, lineage=lineage, history=history, id=None, name=None)
