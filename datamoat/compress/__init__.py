"""Make a model fit the edge: export to ONNX, prune, quantize to int8, distill, and the recipe that tries them.

- `export`: PyTorch -> ONNX, with a parity check.
- `prune`: one verb, two methods (`MagnitudeConfig`, `StructuredConfig`).
- `quantize`: ONNX Runtime int8, with an accuracy guard.
- `distill`: a student learns from a teacher's soft targets.
- `flops`: parameter and MAC counts.
- `recipe`: `compress(teacher, data, CompressConfig)`, every step and the Pareto choice.
"""

from datamoat.compress.recipe import CompressConfig, CompressResult, compress, compress_in_workspace

__all__ = ["CompressConfig", "CompressResult", "compress", "compress_in_workspace"]
