"""Cloud serving: a FastAPI app over ONNX Runtime, following the registry live.

- `config`: `ServeConfig`, the knobs of one server process.
- `app`: `create_app(registry, config)`, endpoints and error mapping.
- `engine`: registry versions as cached sessions (the inference core,
  `datamoat.inference`, loads, decodes and decides).
- `batcher`: dynamic batching of concurrent requests.
- `control`: the registry watcher, acknowledgements, and the takedown
  guarantee with its documented bound.
- `logstore`: the prediction log's buffered writer (the tables are the
  ledger's, `datamoat.registry.ledger`).
- `review`: the /review page and API over `datamoat.feedback.review.ReviewQueue`.
- `quota`: per-token rate limits.
- `loadtest`, `capacity`: measure a server, size a deployment.
- `admin`: tokens and the HTTP control endpoints.
- `metrics`: Prometheus metrics.
"""

from __future__ import annotations

from datamoat.serve.app import create_app
from datamoat.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
