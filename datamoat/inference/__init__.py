"""The inference core the cloud server and the edge runtime share.

- `onnx`: the one ONNX Runtime session factory, and scoring helpers.
- `engine`: a loaded version (session + preprocessing) and `decide`, which
  turns probabilities into answers (suppression, top-k, review policy).
- `inputs`: safe decoding of images, JSON and .npy bodies.
- `http`: the bearer-token helper, streamed body limits, and the error
  handlers every datamoat app installs.

Light on import: a device loads only what it uses.
"""

__all__: list[str] = []  # import the submodules: a device loads only what it uses
