"""Ed25519 signing keys for bundles: generate, load, and a short key id.

The private key signs bundle manifests on the build machine and never
travels to a device; devices hold only public keys (their trust list).
Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public), so
`openssl pkey -in key.pem -text` can inspect them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from datamoat.errors import BadInput, NotFound

__all__ = ["generate_keys", "load_private_key", "load_public_key", "load_trust", "key_id"]


def key_id(public_key: Any) -> str:
    """A short fingerprint of a public key: sha256 of its raw 32 bytes, 16 hex digits.

    >>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    >>> len(key_id(Ed25519PrivateKey.generate().public_key()))
    16
    """
    from cryptography.hazmat.primitives import serialization as ser

    raw = public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keys(private_path: str | Path, public_path: str | Path | None = None, force: bool = False) -> dict:
    """Write a new key pair: the private key readable by its owner only (0600).

    >>> generate_keys("keys/release.pem")  # doctest: +SKIP
    {'private': 'keys/release.pem', 'public': 'keys/release.pub', 'key_id': '3f0c...'}
    """
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    priv_path = Path(private_path)
    pub_path = Path(public_path) if public_path else priv_path.with_suffix(".pub")
    for p in (priv_path, pub_path):
        if p.exists() and not force:
            raise BadInput(f"{p} already exists: pass --force to replace it (bundles it signed stop verifying)")
    priv_path.parent.mkdir(parents=True, exist_ok=True)
    pub_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    # Created 0600 from the first byte: a chmod after writing would leave a window.
    priv_path.unlink(missing_ok=True)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = key.public_key()
    pub_path.write_bytes(pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return {"private": str(priv_path), "public": str(pub_path), "key_id": key_id(pub)}


def load_private_key(path: str | Path) -> Any:
    """The Ed25519 private key in a PEM file; refuses one others can read."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    if not p.is_file():
        raise NotFound(f"no private key at {p}: create one with `datamoat keys generate`")
    if os.name == "posix" and p.stat().st_mode & 0o077:
        raise BadInput(f"private key {p} is readable by others: run `chmod 600 {p}`")
    try:
        key = ser.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise BadInput(f"{p} is not an unencrypted PEM private key: create one with `datamoat keys generate`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput(f"{p} is not an Ed25519 key: create one with `datamoat keys generate`")
    return key


def load_public_key(path: str | Path) -> Any:
    """The Ed25519 public key in a PEM file."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    p = Path(path)
    if not p.is_file():
        raise NotFound(f"no public key at {p}: pass the .pub file written by `datamoat keys generate`")
    try:
        key = ser.load_pem_public_key(p.read_bytes())
    except ValueError:
        raise BadInput(f"{p} is not a PEM public key: pass the .pub file written by `datamoat keys generate`") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadInput(f"{p} is not an Ed25519 public key: pass a key from `datamoat keys generate`")
    return key


def load_trust(paths: list[str | Path] | tuple[str | Path, ...]) -> list[Any]:
    """A device's trust list: every public key it accepts bundles from."""
    if not paths:
        raise BadInput("a device needs at least one trusted public key: pass --trust KEY.pub")
    return [load_public_key(p) for p in paths]
