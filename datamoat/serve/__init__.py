"""Cloud serving: a FastAPI app over ONNX Runtime, following the registry live.

- `config`: `ServeConfig`, the knobs of one server process.
- `app`: `create_app(registry, config)`, endpoints and error mapping.
- `engine`: sessions per version, normalisation, suppression and top-k.
- `inputs`: safe decoding of uploads and JSON pixel arrays.
- `batcher`: dynamic batching of concurrent requests.
- `control`: the registry watcher, acknowledgements, and the takedown
  guarantee with its documented bound.
- `logstore`: the prediction log and feedback tables.
- `admin`: tokens and the HTTP control endpoints.
- `metrics`: Prometheus metrics.
"""

from __future__ import annotations

from datamoat.serve.app import create_app
from datamoat.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
