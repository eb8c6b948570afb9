"""Score a model, report it, and decide what can be automated.

- `metrics`: accuracy, per-class scores, calibration (`evaluate`).
- `predict`: every sample's prediction, streamed into a Parquet file (`predict`; not re-exported
  here, where the function would hide its module).
- `report`: the HTML and Markdown report (`evaluate_in_workspace`).
- `selective`: a confidence threshold with a statistical accuracy guarantee.
- `feasibility`: the proof-of-concept verdict: automate what meets the target, people review the rest.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use: `metrics` imports torch, and the edge runtime and the registry import
# `drift` and `compare` from this package without needing it.
_EXPORTS = {
    "EvalConfig": "datamoat.evaluate.metrics",
    "Evaluation": "datamoat.evaluate.metrics",
    "evaluate": "datamoat.evaluate.metrics",
    "evaluate_in_workspace": "datamoat.evaluate.report",
    "write_report": "datamoat.evaluate.report",
}
__all__ = ["EvalConfig", "Evaluation", "evaluate", "evaluate_in_workspace", "write_report"]

if TYPE_CHECKING:
    from datamoat.evaluate.metrics import EvalConfig, Evaluation, evaluate
    from datamoat.evaluate.report import evaluate_in_workspace, write_report


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'datamoat.evaluate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
