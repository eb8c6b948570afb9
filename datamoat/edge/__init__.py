"""The edge fleet: signed bundles, over-the-air updates with automatic
rollback, staged rollouts, offline operation.

- `keys`: Ed25519 key pairs; a device trusts a list of public keys.
- `bundle`: build, sign and verify bundles (model, labels, preprocessing,
  policy, self-test vectors, signed manifest).
- `store`: a device's files and the crash-safe install sequence.
- `config`: `EdgeConfig`, one device's settings.
- `runtime`: install / self-test / swap / roll back / predict on a device.
- `agent`: the device's polling loop, resumable downloads, heartbeats.
- `server`: the device's local HTTP API (`datamoat edge run`).
- `rollout`: stable-hash device selection, baselines, abort verdicts.
- `fleet`: devices, rollouts and assignments in the registry DB, over
  `publish` (published bundles) and `events` (the hash-chained timeline).
- `uploads`: the checks and the store of low-confidence samples a device sends back.
- `controldoc`: signing and opening control answers (the device acts on signed text only).
- `control`: the control server's HTTP API (`datamoat fleet serve`).
- `client`: `Predictor`, a client that falls back from a device to the cloud.
"""

from __future__ import annotations

__all__ = ["BundleConfig", "ControlConfig", "EdgeConfig", "Fleet", "build_bundle", "read_bundle", "generate_keys"]

_EXPORTS = {
    "BundleConfig": "datamoat.edge.bundle",
    "build_bundle": "datamoat.edge.bundle",
    "read_bundle": "datamoat.edge.bundle",
    "ControlConfig": "datamoat.edge.control",
    "EdgeConfig": "datamoat.edge.config",
    "Fleet": "datamoat.edge.fleet",
    "generate_keys": "datamoat.edge.keys",
}


def __getattr__(name: str):  # lazy: `import datamoat.edge` stays light
    import importlib

    if name not in _EXPORTS:
        raise AttributeError(f"module 'datamoat.edge' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
