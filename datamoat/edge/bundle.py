"""Signed model bundles: one deterministic file a device can trust.

A bundle is an uncompressed zip with fixed timestamps (same inputs, same
bytes) holding

- ``model.onnx``: the registry version's ONNX (fp32 or int8),
- ``meta.json``: version id, name, kind, classes, preprocessing, input shape,
- ``policy.json``: suppressed labels, the review threshold and per-class
  thresholds (the version's `Registry.policy`), an optional abstain
  threshold, and the registry generation they were read at,
- ``selftest.json``: a few inputs with the probabilities the ONNX gave for
  them at bundle time,
- ``manifest.json``: format, sequence number, version, and the sha256 and
  size of every part above,
- ``manifest.sig``: the Ed25519 signature of the manifest's exact bytes.

`read_bundle` trusts nothing before the signature checks out against one of
the device's keys, then checks every part against the manifest and refuses
extra or missing members. Parts are read by name into memory, never
extracted, so member paths cannot escape anywhere. Because packing is
deterministic, a verified bundle must also re-pack to exactly its own
bytes: a change to any byte of the file, even zip metadata nobody reads,
is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from typing import Any

import numpy as np

from datamoat.configs import Config, check
from datamoat.errors import BadInput, DatamoatError
from datamoat.inference.engine import LoadedVersion, open_version
from datamoat.registry.core import Registry

__all__ = [
    "FORMAT",
    "PARTS",
    "OPTIONAL_PARTS",
    "Bundle",
    "BundleConfig",
    "BundleError",
    "build_bundle",
    "pack_bundle",
    "read_bundle",
    "peek_manifest",
    "load_bundle_model",
    "self_test",
]

FORMAT = "datamoat-bundle/1"
PARTS = ("model.onnx", "meta.json", "policy.json", "selftest.json")
OPTIONAL_PARTS = ("profile.json",)  # the version's drift reference profile, where the registry has one
MAX_BUNDLE_BYTES = 1 << 30
MAX_MANIFEST_BYTES = 64 << 10
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: fixed for byte-identical builds


class BundleError(DatamoatError):
    """A bundle that must not be installed: unsigned, untrusted, tampered, truncated."""

    http_status = 422


@dataclasses.dataclass
class BundleConfig(Config):
    """What goes into a bundle besides the model.

    >>> BundleConfig(abstain_threshold=0.4).selftest_count
    4
    """

    selftest_count: int = 4
    selftest_atol: float = 1e-3  # max |Δp| a device may see against bundle time
    abstain_threshold: float | None = None  # top probability below this: abstain (needs review)
    seed: int = 0

    def validate(self) -> None:
        check(1 <= self.selftest_count <= 64, f"selftest_count must be in 1..64, got {self.selftest_count}")
        check(0 < self.selftest_atol < 1, f"selftest_atol must be in (0, 1), got {self.selftest_atol}")
        t = self.abstain_threshold
        check(t is None or 0 < t < 1, f"abstain_threshold must be in (0, 1), got {t}")


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest, parts, file hash and signing key id."""

    manifest: dict[str, Any]
    parts: dict[str, bytes]
    sha256: str
    key_id: str

    @property
    def sequence(self) -> int:
        return int(self.manifest["sequence"])

    @property
    def version_id(self) -> str:
        return str(self.manifest["version_id"])

    def part_json(self, name: str) -> dict[str, Any]:
        return json.loads(self.parts[name])


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def pack_bundle(parts: dict[str, bytes], *, sequence: int, version_id: str, name: str, kind: str, key: Any) -> bytes:
    """Sign a manifest over `parts` and zip everything, deterministically.

    The low-level step under `build_bundle`; tests use it to craft bundles.

    >>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    >>> k = Ed25519PrivateKey.generate()
    >>> parts = {p: b"{}" for p in PARTS}
    >>> a = pack_bundle(parts, sequence=1, version_id="v", name="n", kind="fp32", key=k)
    >>> a == pack_bundle(parts, sequence=1, version_id="v", name="n", kind="fp32", key=k)
    True
    """
    from datamoat.edge.keys import key_id

    check(
        set(PARTS) <= set(parts) <= {*PARTS, *OPTIONAL_PARTS},
        f"a bundle holds {', '.join(PARTS)}, and may hold {', '.join(OPTIONAL_PARTS)}",
    )
    check(isinstance(sequence, int) and sequence >= 1, f"sequence must be a positive integer, got {sequence!r}")
    manifest = _dumps(
        {
            "format": FORMAT,
            "sequence": sequence,
            "version_id": version_id,
            "name": name,
            "kind": kind,
            "key_id": key_id(key.public_key()),
            "parts": {p: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for p, d in sorted(parts.items())},
        }
    )
    return _zip(manifest, key.sign(manifest), parts)


def _zip(manifest: bytes, sig: bytes, parts: dict[str, bytes]) -> bytes:
    members = [("manifest.json", manifest), ("manifest.sig", sig)] + sorted(parts.items())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for member, data in members:
            zi = zipfile.ZipInfo(member, date_time=_EPOCH)
            zi.create_system, zi.external_attr = 3, 0o644 << 16  # unix, rw-r--r--: same on every OS
            zf.writestr(zi, data)
    return buf.getvalue()


def peek_manifest(data: bytes) -> dict[str, Any]:
    """The manifest of a bundle file, NOT verified (for listings and publishing)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return json.loads(zf.read("manifest.json"))
    except Exception:
        raise BundleError(
            "not a readable bundle (truncated or not a bundle): rebuild it with `datamoat bundle`"
        ) from None


def read_bundle(data: bytes, trusted: list[Any]) -> Bundle:
    """Verify a bundle file against trusted public keys; `BundleError` says why not.

    >>> read_bundle(b"garbage", [])
    Traceback (most recent call last):
    ...
    datamoat.edge.bundle.BundleError: bundle rejected: not a zip archive (truncated or not a bundle)
    """
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle rejected: {len(data)} bytes is over the {MAX_BUNDLE_BYTES}-byte limit")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        raise BundleError("bundle rejected: not a zip archive (truncated or not a bundle)") from None
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        expected = {"manifest.json", "manifest.sig", *PARTS}
        allowed = expected | set(OPTIONAL_PARTS)
        if len(names) != len(set(names)) or not expected <= set(names) <= allowed:
            raise BundleError(
                f"bundle rejected: members {sorted(names)} are not {sorted(expected)} and optionally "
                f"{', '.join(OPTIONAL_PARTS)}"
            )
        info = {i.filename: i for i in infos}
        # Nothing is inflated, ever: bundles store members as they are, so a
        # compressed member (a zip bomb) is refused from its header alone.
        for i in infos:
            if i.compress_type != zipfile.ZIP_STORED or i.file_size != i.compress_size or i.flag_bits & 0x1:
                raise BundleError(f"bundle rejected: member {i.filename} is compressed or encrypted (tampered)")
        try:
            manifest_bytes = _read_member(zf, info["manifest.json"], MAX_MANIFEST_BYTES)
            sig = _read_member(zf, info["manifest.sig"], 64)
            signer = _signer(trusted, sig, manifest_bytes)  # before any other member is read
            manifest = json.loads(manifest_bytes)
            if manifest.get("format") != FORMAT:
                raise BundleError(
                    f"bundle rejected: format {manifest.get('format')!r} is not {FORMAT!r}: upgrade datamoat"
                )
            present = sorted(set(names) - {"manifest.json", "manifest.sig"})
            if sorted(manifest["parts"]) != present:  # the signature covers which parts there are
                raise BundleError(f"bundle rejected: members {present} are not the signed parts (tampered)")
            parts = {}
            for p in present:
                want = manifest["parts"][p]
                if info[p].file_size != want["size"]:
                    raise BundleError(f"bundle rejected: part {p} is not its signed size (tampered)")
                parts[p] = _read_member(zf, info[p], want["size"])
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:  # CRC or header damage
            raise BundleError(f"bundle rejected: corrupt or tampered archive ({e})") from None
    from datamoat.edge.keys import key_id

    for p in parts:
        want = manifest["parts"][p]
        if len(parts[p]) != want["size"] or hashlib.sha256(parts[p]).hexdigest() != want["sha256"]:
            raise BundleError(f"bundle rejected: part {p} does not match its signed sha256 (tampered)")
    if _zip(manifest_bytes, sig, parts) != data:  # packing is deterministic: any other byte was changed
        raise BundleError("bundle rejected: container bytes differ from the canonical packing (tampered)")
    return Bundle(manifest, parts, hashlib.sha256(data).hexdigest(), key_id(signer))


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, most: int) -> bytes:
    """A stored member's bytes, never more than `most` (its header is not trusted)."""
    if info.file_size > most:
        raise BundleError(f"bundle rejected: member {info.filename} of {info.file_size} bytes is over {most}")
    with zf.open(info) as f:
        data = f.read(most + 1)
    if len(data) > most:
        raise BundleError(f"bundle rejected: member {info.filename} is longer than its header says (tampered)")
    return data


def _signer(trusted: list[Any], sig: bytes, manifest: bytes) -> Any:
    from cryptography.exceptions import InvalidSignature

    for pub in trusted:
        try:
            pub.verify(sig, manifest)
            return pub
        except InvalidSignature:
            continue
    raise BundleError("bundle rejected: not signed by a trusted key (bad signature or unknown key)")


def load_bundle_model(bundle: Bundle, threads: int = 1, drift: bool = False) -> LoadedVersion:
    """An ONNX Runtime session over the bundle's model, through the same core the cloud server uses;
    with `drift`, and a reference profile in the bundle, it also gives the embeddings drift tests use."""
    embeddings = drift and "profile.json" in bundle.parts
    return open_version(bundle.parts["model.onnx"], bundle.part_json("meta.json"), threads, embeddings=embeddings)


def self_test(model: LoadedVersion, selftest: dict[str, Any]) -> str | None:
    """None if the model reproduces the bundle-time outputs, else why not."""
    x = np.asarray(selftest["inputs"], np.uint8)  # (N, C, H, W)
    want = np.asarray(selftest["probabilities"], np.float64)  # (N, K)
    got = model.probabilities(x)  # (N, K)
    if got.shape != want.shape:
        return f"self-test failed: output shape {got.shape} != expected {want.shape}"
    diff = float(np.abs(got - want).max())
    labels_ok = bool((got.argmax(1) == want.argmax(1)).all())
    if diff > selftest["atol"] or not labels_ok:
        return f"self-test failed: max |Δp| {diff:.4f} (tolerance {selftest['atol']:g}), labels match: {labels_ok}"
    return None


def build_bundle(
    registry: Registry,
    ref: str,
    key: Any,
    sequence: int,
    config: BundleConfig | None = None,
    inputs: np.ndarray | None = None,
) -> bytes:
    """A signed bundle of registry version `ref` with bundle sequence `sequence`.

    `inputs` (N, C, H, W) uint8 are the self-test vectors; default: seeded noise.

    >>> data = build_bundle(reg, "mlp-seed0", load_private_key("release.pem"), 3)  # doctest: +SKIP
    """
    cfg = config or BundleConfig()
    row = registry.version(ref)
    snap = registry.snapshot()
    if row["id"] in snap["takedowns"]:
        raise BadInput(f"version {row['id']} is taken down: restore it or bundle another version")
    info = row["info"]
    onnx = registry.artifact(row["onnx_sha"])
    loaded = open_version(onnx, {**info, "version_id": row["id"], "name": row["name"], "kind": row["kind"]}, 1)
    shape = list(loaded.input_shape)
    meta = {
        "version_id": row["id"],
        "name": row["name"],
        "kind": row["kind"],
        "classes": info["classes"],
        "preprocess": info["preprocess"],
        "input_shape": shape,
        "recipe": [cfg.to_dict()],
    }
    if inputs is None:
        inputs = np.random.default_rng(cfg.seed).integers(0, 256, (cfg.selftest_count, *shape), dtype=np.uint8)
    check(inputs.ndim == 4 and list(inputs.shape[1:]) == shape, f"self-test inputs must be (N, {shape}) uint8")
    probs = loaded.probabilities(inputs)  # (N, K)
    review = Registry.policy_of(snap, row["id"], info)  # read in the same snapshot as the suppressions
    policy = {
        "suppressed": Registry.suppressed_for(snap, "*"),
        "threshold": review.get("threshold"),
        "per_class": review.get("per_class"),
        "abstain_threshold": cfg.abstain_threshold,
        "generation": snap["generation"],
    }
    selftest = {"inputs": inputs.astype(np.uint8).tolist(), "probabilities": probs.tolist(), "atol": cfg.selftest_atol}
    parts = {
        "model.onnx": onnx,
        "meta.json": _dumps(meta),
        "policy.json": _dumps(policy),
        "selftest.json": _dumps(selftest),
    }
    profile = registry.profile(row["id"])
    if profile is not None:  # the device tests its own traffic against it (`datamoat.edge.drift`)
        parts["profile.json"] = _dumps(profile)
    return pack_bundle(parts, sequence=sequence, version_id=row["id"], name=row["name"], kind=row["kind"], key=key)
