"""Real TLS on 127.0.0.1 for the backhaul tests.

Certificates come from the project's test PKI (hil.pki): the SM-DP+ TLS certificate chains
to the CI (what ES9+ clients trust), the eIM's to an unrelated TLS CA (so trusting one is
the "wrong CA" for the other). One extra certificate, issued by the CI for a host name
that is not 127.0.0.1, tests host-name verification.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.backhaul.http import Server, TlsTrust
from gateway.backhaul.inject_server import server_ssl_context
from hil.pki import RspPki


@pytest.fixture(scope="session")
def other_host_cert(pki: RspPki, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cert, key) PEM files: issued by the CI, valid only for other.example."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other.example")]))
        .issuer_name(pki.ci.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("other.example")]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.ci.key.public_key()),
                       critical=False)
        .sign(pki.ci.key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("otherhost")
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def smdp_ssl(pki: RspPki) -> ssl.SSLContext:
    return server_ssl_context(str(pki.dptls.cert_path), str(pki.dptls.key_path))


@pytest.fixture
def ci_trust(pki: RspPki) -> TlsTrust:
    return TlsTrust(ca_file=str(pki.ci.cert_path))


Serve = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve(ci_trust: TlsTrust, smdp_ssl: ssl.SSLContext) -> AsyncIterator[Serve]:
    """serve(app, ssl_context=None, trust=None) -> Server on 127.0.0.1 over real TLS."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, ssl_context: ssl.SSLContext | None = None,
                    trust: TlsTrust | None = None) -> Server:
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context or smdp_ssl)
        await site.start()
        port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
        return Server(f"https://127.0.0.1:{port}", trust or ci_trust)

    yield start
    for r in runners:
        await r.cleanup()
