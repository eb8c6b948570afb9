"""The main job: import real data, train a teacher, evaluate it, write the report."""

from __future__ import annotations

import time
from typing import Any

from datamoat.data import fashion_mnist_missing, import_default
from datamoat.train.loop import TrainConfig, train_in_workspace
from datamoat.workspace import Workspace

__all__ = ["DEMO_ARCH", "DEMO_TRAIN", "run_demo"]

# The teacher `datamoat compress` needs: with cnn_medium, ONNX Runtime's per-call
# overhead already sets most of its batch-1 latency, so no student can be 5x faster
# (issue 14); cnn_large has the compute per image that compression removes.
# bench/results/compression.md measures the recipe's defaults on this teacher.
DEMO_ARCH = "cnn_large"
DEMO_TRAIN = TrainConfig(epochs=5, batch_size=128, lr=2e-3, schedule="onecycle", augment="crop", patience=0, seed=0)


def run_demo(
    ws: Workspace, *, arch: str = DEMO_ARCH, config: TrainConfig = DEMO_TRAIN, progress: bool = True
) -> dict[str, Any]:
    """Import Fashion-MNIST (or digits), train, evaluate on test, write the report.

    Where Fashion-MNIST is not installed, the result's `fallback` says which
    dataset was used instead and the command that installs the real one.

    >>> out = run_demo(Workspace.init("/tmp/dm-demo"))  # doctest: +SKIP
    >>> sorted(out)[:3]  # doctest: +SKIP
    ['arch', 'dataset', 'dataset_id']
    """
    from datamoat.evaluate.report import evaluate_in_workspace

    t0 = time.perf_counter()
    data = import_default(ws)
    fallback = None if data.name == "fashion-mnist" else fashion_mnist_missing(data.name)
    model, run_id = train_in_workspace(ws, data.id, arch, config, name=f"teacher-{data.name}", progress=progress)
    assert model.id is not None  # train_in_workspace saves the model
    evaluation, paths, eval_id = evaluate_in_workspace(ws, model.id, data.id)
    return {
        "dataset_id": data.id,
        "dataset": data.name,
        "model_id": model.id,
        "run_id": run_id,
        "eval_id": eval_id,
        "arch": arch,
        "params": model.params,
        "epochs_run": len(model.history["curve"]),
        "val_accuracy": model.history["val_accuracy"],
        "test_accuracy": evaluation.accuracy,
        "ece": evaluation.ece,
        "plateau": model.history["plateau"],
        "seconds": time.perf_counter() - t0,
        "report": str(paths["html"]),
        "report_md": str(paths["md"]),
        "fallback": fallback,
    }
