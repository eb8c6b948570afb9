"""Keys and bundles: build is deterministic, verification refuses anything
not signed by a trusted key or changed after signing."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile

import numpy as np
import pytest

from datamoat.edge.bundle import (
    PARTS,
    BundleConfig,
    BundleError,
    build_bundle,
    load_bundle_model,
    pack_bundle,
    read_bundle,
    self_test,
)
from datamoat.edge.keys import generate_keys, key_id, load_private_key, load_public_key, load_trust
from datamoat.errors import BadInput


def _trust(env, *names):
    return [load_public_key(env.keys[n].public) for n in names]


def test_keys_generate_private_0600_and_refuse_overwrite(tmp_path):
    out = generate_keys(tmp_path / "k" / "release.pem")
    assert stat.S_IMODE(os.stat(out["private"]).st_mode) == 0o600
    assert out["public"].endswith("release.pub")
    assert (
        key_id(load_private_key(out["private"]).public_key()) == out["key_id"] == key_id(load_public_key(out["public"]))
    )
    with pytest.raises(BadInput, match="already exists"):
        generate_keys(tmp_path / "k" / "release.pem")
    os.chmod(out["private"], 0o644)
    with pytest.raises(BadInput, match="chmod 600"):
        load_private_key(out["private"])
    with pytest.raises(BadInput, match="at least one trusted"):
        load_trust([])


def test_build_is_deterministic_and_verifies(fleet_env):
    key = fleet_env.keys["release"].private
    a = build_bundle(fleet_env.reg, fleet_env.v[0], key, 7)
    assert a == build_bundle(fleet_env.reg, fleet_env.v[0], key, 7)  # byte-identical rebuild
    b = read_bundle(a, _trust(fleet_env, "rogue", "release"))
    assert (b.sequence, b.version_id, b.key_id) == (7, fleet_env.v[0], fleet_env.keys["release"].key_id)
    meta, st = b.part_json("meta.json"), b.part_json("selftest.json")
    assert meta["classes"] == [str(i) for i in range(10)] and meta["input_shape"] == [1, 8, 8]
    assert np.asarray(st["inputs"]).shape == (4, 1, 8, 8)
    assert self_test(load_bundle_model(b), st) is None
    assert b.part_json("policy.json")["generation"] == fleet_env.reg.generation()


def test_policy_carries_suppressions_and_thresholds(fleet_env):
    fleet_env.reg.suppress("3", actor="t", reason="mislabelled class")
    data = build_bundle(
        fleet_env.reg,
        fleet_env.v[0],
        fleet_env.keys["release"].private,
        1,
        BundleConfig(abstain_threshold=0.3, selftest_count=2),
    )
    pol = read_bundle(data, _trust(fleet_env, "release")).part_json("policy.json")
    assert pol["suppressed"] == {"3": "abstain"} and pol["abstain_threshold"] == 0.3
    fleet_env.reg.takedown(fleet_env.v[0], actor="t", reason="bad")
    with pytest.raises(BadInput, match="taken down"):
        build_bundle(fleet_env.reg, fleet_env.v[0], fleet_env.keys["release"].private, 2)


def test_unknown_key_and_bad_signature_are_refused(fleet_env):
    data = build_bundle(fleet_env.reg, fleet_env.v[0], fleet_env.keys["rogue"].private, 1)
    with pytest.raises(BundleError, match="not signed by a trusted key"):
        read_bundle(data, _trust(fleet_env, "release", "rotated"))
    # A manifest edited after signing (sequence bumped) no longer matches its signature.
    zf = zipfile.ZipFile(io.BytesIO(build_bundle(fleet_env.reg, fleet_env.v[0], fleet_env.keys["release"].private, 1)))
    m = json.loads(zf.read("manifest.json"))
    m["sequence"] = 99
    forged = _rezip({**{n: zf.read(n) for n in zf.namelist()}, "manifest.json": json.dumps(m).encode()})
    with pytest.raises(BundleError, match="not signed by a trusted key"):
        read_bundle(forged, _trust(fleet_env, "release"))


def _rezip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    return buf.getvalue()


def test_every_tampered_byte_position_and_truncation_is_refused(fleet_env):
    data = build_bundle(
        fleet_env.reg, fleet_env.v[0], fleet_env.keys["release"].private, 1, BundleConfig(selftest_count=1)
    )
    trust = _trust(fleet_env, "release")
    zf = zipfile.ZipFile(io.BytesIO(data))
    # One byte inside each member's stored data, plus header and directory bytes.
    spots = [zi.header_offset + 30 + len(zi.filename) + zi.file_size // 2 for zi in zf.infolist()]
    spots += [0, 10, len(data) - 30, len(data) - 1]
    for pos in spots:
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(BundleError):
            read_bundle(bytes(bad), trust)
    for cut in (len(data) // 2, len(data) - 1, 100):
        with pytest.raises(BundleError):
            read_bundle(data[:cut], trust)


def test_members_must_be_the_signed_parts(fleet_env):
    key = fleet_env.keys["release"].private
    good = {p: b"{}" for p in PARTS}
    data = pack_bundle(good, sequence=1, version_id="v", name="n", kind="fp32", key=key)
    members = {n: zipfile.ZipFile(io.BytesIO(data)).read(n) for n in zipfile.ZipFile(io.BytesIO(data)).namelist()}
    with pytest.raises(BundleError, match="are not .* and optionally profile.json"):
        read_bundle(_rezip({**members, "../../etc/evil": b"x"}), _trust(fleet_env, "release"))
    with pytest.raises(BadInput, match="may hold profile.json"):
        pack_bundle({**good, "extra": b""}, sequence=1, version_id="v", name="n", kind="fp32", key=key)
    # The optional profile: signed when present, and neither added to nor taken from a signed bundle.
    with_profile = pack_bundle(
        {**good, "profile.json": b"{}"}, sequence=1, version_id="v", name="n", kind="fp32", key=key
    )
    assert "profile.json" in read_bundle(with_profile, _trust(fleet_env, "release")).parts
    with pytest.raises(BundleError, match="not the signed parts"):
        read_bundle(_rezip({**members, "profile.json": b"{}"}), _trust(fleet_env, "release"))
    signed = {
        n: zipfile.ZipFile(io.BytesIO(with_profile)).read(n)
        for n in zipfile.ZipFile(io.BytesIO(with_profile)).namelist()
    }
    with pytest.raises(BundleError, match="not the signed parts"):
        read_bundle(_rezip({k: v for k, v in signed.items() if k != "profile.json"}), _trust(fleet_env, "release"))


def test_self_test_catches_a_model_that_disagrees(fleet_env):
    trust = _trust(fleet_env, "release")
    a = read_bundle(build_bundle(fleet_env.reg, fleet_env.v[0], fleet_env.keys["release"].private, 1), trust)
    b = read_bundle(build_bundle(fleet_env.reg, fleet_env.v[1], fleet_env.keys["release"].private, 2), trust)
    assert self_test(load_bundle_model(b), a.part_json("selftest.json")).startswith("self-test failed")
