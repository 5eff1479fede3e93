"""HTTPS when configured: a node and a hub with a self-signed certificate (made here with
cryptography); the hub reaches the node over TLS, verifying it against that certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import httpx
import pytest

from federation_support import PROJECT, HubServer, NodeServer, make_site, small_study


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.slow
def test_node_and_hub_over_https(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    site = make_site(tmp_path / "site.duckdb", persons=3000, seed=1)
    with HubServer(tmp_path / "hub", tls=(cert, key)) as hub, \
            NodeServer(tmp_path / "node", cdm=site, hub_key=hub.key, site="secure", tls=(cert, key)) as node:
        assert node.url.startswith("https://") and hub.url.startswith("https://")
        # verified against the certificate, not merely accepted
        assert httpx.get(f"{node.url}/health", verify=ssl.create_default_context(cafile=str(cert))).json() == {"status": "ok"}
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{node.url}/health")  # the system CAs do not know it
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{node.port}/health", timeout=3)  # no plain HTTP on that port
        with hub.client(hub.admin_token) as admin:
            admin.add_node("secure", node.url, node.tokens["hub"], verify=str(cert))
            admin.add_project(PROJECT, ["secure"])
            token = admin.add_user("alice", "researcher", [PROJECT])["token"]
        pkg = small_study("over TLS")
        with hub.client(token) as c:
            c.submit(pkg, project=PROJECT)
            node.wait_status(pkg.content_hash, {"pending_approval"})
            node.approve(pkg.content_hash)
            closed = c.wait(pkg.content_hash, timeout=120)
        assert [s["status"] for s in closed["sites"]] == ["collected"]
