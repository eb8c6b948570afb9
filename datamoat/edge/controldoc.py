"""Signed control documents: what a control server may tell a device.

A sync answer decides which bundle a device runs, whether it may go back
to an older one, which labels it suppresses and which versions are taken
down. Sent in the clear, whoever sits between the two (or a proxy, a cache,
or someone who can only write the fleet's database) could force a
downgrade or a policy. So the control server signs each answer with a
*control key*, an Ed25519 key of its own (never the release key that signs
bundles: a stolen control key chooses among signed bundles and policy, it
cannot make a model):

    {"control": {"doc": "<the answer as JSON text>", "sig": "<hex>", "key_id": "..."}, ...}

The signature covers ``b"datamoat-control-v1\\n" + doc``, so it can never
be mistaken for a bundle manifest's. A device that trusts the key (its
``control_trust``) acts on the signed text only, and only if

- the document names this device, and
- its ``seq`` (the registry's policy generation, the fleet log's last
  event number) is not older, component by component, than the newest
  document the device has applied; the device stores that floor in its
  state, so a replayed answer (an old rollback permission, a policy from
  before a takedown) is refused, even after a restart.
"""

from __future__ import annotations

import json
from typing import Any

from datamoat.errors import DatamoatError

__all__ = ["ControlRefused", "sign_answer", "open_answer", "DOMAIN"]

DOMAIN = b"datamoat-control-v1\n"


class ControlRefused(DatamoatError):
    """A control answer that is unsigned, forged, for another device, or older than one applied."""


def sign_answer(answer: dict[str, Any], key: Any) -> dict[str, Any]:
    """The answer with its signed copy under ``"control"``.

    >>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    >>> k = Ed25519PrivateKey.generate()
    >>> a = sign_answer({"device_id": "d", "seq": [1, 2]}, k)
    >>> open_answer(a, [k.public_key()], "d", [0, 0])["seq"]
    [1, 2]
    """
    from datamoat.edge.keys import key_id

    doc = json.dumps(answer, sort_keys=True, separators=(",", ":"), default=str)
    sig = key.sign(DOMAIN + doc.encode())
    return {**answer, "control": {"doc": doc, "sig": sig.hex(), "key_id": key_id(key.public_key())}}


def open_answer(answer: dict[str, Any], trusted: list[Any], device_id: str, floor: list[int]) -> dict[str, Any]:
    """The signed document inside `answer`, or `ControlRefused` saying why not.

    `floor` is the `seq` of the newest document this device applied.
    """
    from cryptography.exceptions import InvalidSignature

    ctl = answer.get("control")
    if not isinstance(ctl, dict) or not isinstance(ctl.get("doc"), str) or not isinstance(ctl.get("sig"), str):
        raise ControlRefused(
            "control answer refused: it is not signed; start the control server with --control-key, "
            "the key whose .pub this device trusts (--control-trust)"
        )
    try:
        sig = bytes.fromhex(ctl["sig"])
    except ValueError:
        raise ControlRefused("control answer refused: its signature is not hex") from None
    data = DOMAIN + ctl["doc"].encode()
    for pub in trusted:
        try:
            pub.verify(sig, data)
            break
        except InvalidSignature:
            continue
    else:
        raise ControlRefused("control answer refused: not signed by a control key this device trusts")
    doc = json.loads(ctl["doc"])
    if not isinstance(doc, dict) or doc.get("device_id") != device_id:
        got = doc.get("device_id") if isinstance(doc, dict) else None
        raise ControlRefused(f"control answer refused: it was signed for device {got!r}, not {device_id!r}")
    seq = doc.get("seq")
    if not (isinstance(seq, list) and len(seq) == len(floor) and all(isinstance(s, int) for s in seq)):
        raise ControlRefused("control answer refused: it has no valid sequence")
    if any(s < f for s, f in zip(seq, floor, strict=True)):
        raise ControlRefused(
            f"control answer refused: sequence {seq} is older than {floor}, already applied (a replay?)"
        )
    return doc
