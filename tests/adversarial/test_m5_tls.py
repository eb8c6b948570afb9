"""M5 (in part): no datamoat server spoke TLS, so anyone on the network could
read tokens and rewrite a device's sync answers. Servers now take a
certificate, and a device can insist on https and on a given CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
import time

import httpx
import pytest

from datamoat.edge.agent import SyncAgent
from datamoat.edge.config import EdgeConfig
from datamoat.edge.control import ControlConfig, create_control_app
from datamoat.edge.keys import generate_keys, load_private_key
from datamoat.edge.runtime import EdgeRuntime
from datamoat.errors import BadInput
from datamoat.registry.core import Registry


def self_signed(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files; the certificate is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "datamoat-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(folder / "cert.pem"), str(folder / "key.pem")


@pytest.mark.slow
def test_m5_a_device_syncs_over_https_with_the_operators_ca_and_refuses_anything_else(world, tmp_path):
    import uvicorn

    cert, key = self_signed(tmp_path)
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    ctl = generate_keys(tmp_path / "control.pem")
    app = create_control_app(reg, ControlConfig(), load_private_key(ctl["private"]))
    token = app.state.edge.fleet.enroll("cam-1", "lab", actor="ops")
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="error", lifespan="off", ssl_certfile=cert, ssl_keyfile=key
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url = f"https://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    base = {
        "device_id": "cam-1",
        "group": "lab",
        "trust": (str(world.pub),),
        "token": token,
        "require_https": True,
        "control_trust": (ctl["public"],),
    }
    try:
        rt = EdgeRuntime(EdgeConfig(state_dir=str(tmp_path / "a"), server=url, ca_cert=cert, **base))
        assert "policy" in SyncAgent(rt).sync_once()  # the operator's CA: it works
        rt.close()
        stranger = EdgeRuntime(EdgeConfig(state_dir=str(tmp_path / "b"), server=url, **base))
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            SyncAgent(stranger).sync_once()  # a certificate nobody vouched for: refused
        stranger.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    with pytest.raises(BadInput, match="is not https://"):
        EdgeConfig(state_dir=str(tmp_path / "c"), server=url.replace("https", "http"), **base)
