"""datamoat: from data to a safe deployment, and the flywheel that improves it.

Importing the package is cheap: every name below is loaded on first use, so
`import datamoat` pulls in neither torch nor onnxruntime.

>>> import datamoat
>>> datamoat.TrainConfig(epochs=2).epochs
2
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# ONNX Runtime otherwise writes a device id and a usage database under ~/.cache/Microsoft on every
# server and edge device that runs a model; set ORT_DISABLE_TELEMETRY=0 to allow it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# public name -> module that defines it
_EXPORTS = {
    "Workspace": "datamoat.workspace",
    "DatamoatError": "datamoat.errors",
    "BadInput": "datamoat.errors",
    "NotFound": "datamoat.errors",
    "Dataset": "datamoat.data",
    "load_dataset": "datamoat.data",
    "import_idx": "datamoat.data",
    "import_fashion_mnist": "datamoat.data",
    "import_folder": "datamoat.data",
    "import_digits": "datamoat.data",
    "Model": "datamoat.models",
    "ModelConfig": "datamoat.models",
    "new_model": "datamoat.models",
    "save_model": "datamoat.models",
    "load_model": "datamoat.models",
    "TrainConfig": "datamoat.train.loop",
    "train": "datamoat.train.loop",
    "EvalConfig": "datamoat.evaluate.metrics",
    "evaluate": "datamoat.evaluate.metrics",
    "PredictConfig": "datamoat.evaluate.predict",
    "predict": "datamoat.evaluate.predict",
    "DistillConfig": "datamoat.compress.distill",
    "distill": "datamoat.compress.distill",
    "MagnitudeConfig": "datamoat.compress.prune",
    "StructuredConfig": "datamoat.compress.prune",
    "FinetuneConfig": "datamoat.compress.prune",
    "prune": "datamoat.compress.prune",
    "ExportConfig": "datamoat.compress.export",
    "export": "datamoat.compress.export",
    "QuantizeConfig": "datamoat.compress.quantize",
    "quantize": "datamoat.compress.quantize",
    "CompressConfig": "datamoat.compress.recipe",
    "compress": "datamoat.compress.recipe",
    "Registry": "datamoat.registry.core",
    "ServeConfig": "datamoat.serve",
    "create_app": "datamoat.serve",
    "LoadTestConfig": "datamoat.serve.loadtest",
    "loadtest": "datamoat.serve.loadtest",
    "capacity": "datamoat.serve.capacity",
    "calibrate_threshold": "datamoat.evaluate.selective",
    "SelectivePolicy": "datamoat.evaluate.selective",
    "feasibility": "datamoat.evaluate.feasibility",
    "Predictor": "datamoat.edge.client",
    "TuneConfig": "datamoat.train.tune",
    "tune": "datamoat.train.tune",
    "ImproveConfig": "datamoat.train.improve",
    "improve": "datamoat.train.improve",
    "find_issues": "datamoat.train.cleaning",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'datamoat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
