"""Score a model, report it, and decide what can be automated.

- `metrics`: accuracy, per-class scores, calibration (`evaluate`).
- `predict`: every sample's prediction, streamed into a Parquet file (`predict`; not re-exported
  here, where the function would hide its module).
- `report`: the HTML and Markdown report (`evaluate_in_workspace`).
- `selective`: a confidence threshold with a statistical accuracy guarantee.
- `feasibility`: the proof-of-concept verdict: automate what meets the target, people review the rest.
"""

from datamoat.evaluate.metrics import EvalConfig, Evaluation, evaluate
from datamoat.evaluate.report import evaluate_in_workspace, write_report

__all__ = ["EvalConfig", "Evaluation", "evaluate", "evaluate_in_workspace", "write_report"]
