"""datamoat: from data to a safe deployment, and the flywheel that improves it.

Importing the package is cheap: every name below is loaded on first use, so
`import datamoat` pulls in neither torch nor onnxruntime.

>>> import datamoat
>>> datamoat.TrainConfig(epochs=2).epochs
2
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

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
    "TrainConfig": "datamoat.train",
    "train": "datamoat.train",
    "EvalConfig": "datamoat.evaluate",
    "evaluate": "datamoat.evaluate",
    "DistillConfig": "datamoat.distill",
    "distill": "datamoat.distill",
    "MagnitudeConfig": "datamoat.prune",
    "StructuredConfig": "datamoat.prune",
    "FinetuneConfig": "datamoat.prune",
    "prune": "datamoat.prune",
    "ExportConfig": "datamoat.export",
    "export": "datamoat.export",
    "QuantizeConfig": "datamoat.quantize",
    "quantize": "datamoat.quantize",
    "CompressConfig": "datamoat.compress",
    "compress": "datamoat.compress",
    "Registry": "datamoat.registry",
    "ServeConfig": "datamoat.serve",
    "create_app": "datamoat.serve",
    "LoadTestConfig": "datamoat.loadtest",
    "loadtest": "datamoat.loadtest",
    "capacity": "datamoat.capacity",
    "calibrate_threshold": "datamoat.selective",
    "SelectivePolicy": "datamoat.selective",
    "feasibility": "datamoat.poc",
    "Predictor": "datamoat.client",
    "TuneConfig": "datamoat.tune",
    "tune": "datamoat.tune",
    "ImproveConfig": "datamoat.improve",
    "improve": "datamoat.improve",
    "find_issues": "datamoat.data.cleaning",
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
