"""[northbound] TLS and protocol keys reach the daemon's backhaul: the eIM's CA, the client
certificate an eIM may demand (mutual TLS), and the X-Admin-Protocol version, checked against a
real aiohttp eIM over TLS on 127.0.0.1 that requires a client certificate."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.backhaul.http import BackhaulHttp, TlsTrust
from gateway.backhaul.inject_server import server_ssl_context
from gateway.config import load_config
from gateway.core.actions import PostEsipa
from gateway.errors import NetworkError, TlsVerificationError
from gateway.service.runtime import HttpBackhaul
from gateway.service.supervisor import configure_backhaul
from hil.pki import RspPki


Seen = list[tuple[str, int]]


@pytest.fixture
async def eim_at(pki: RspPki) -> AsyncIterator[Callable[..., Awaitable[int]]]:
    """eim_at(seen, client_ca=None) -> port of an ESipa eIM over TLS (its certificate from the
    test TLS CA) that records each request's (X-Admin-Protocol, client certificate serial or -1)
    and, with `client_ca`, accepts only clients holding a certificate from it."""
    runners: list[web.AppRunner] = []

    async def start(seen: Seen, client_ca: Path | None = None) -> int:
        async def esipa(request: web.Request) -> web.Response:
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            seen.append((request.headers.get("X-Admin-Protocol", ""), int(peer["serialNumber"], 16) if peer else -1))
            return web.Response(body=await request.read(), content_type="application/x-gsma-rsp-asn1")

        app = web.Application()
        app.router.add_post("/gsma/rsp2/asn1", esipa)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        ssl_context = server_ssl_context(str(pki.eim_tls.cert_path), str(pki.eim_tls.key_path),
                                         client_ca_file=str(client_ca) if client_ca else None)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        return int(next(a[1] for a in runner.addresses if isinstance(a, tuple)))

    yield start
    for runner in runners:
        await runner.cleanup()


def _post(port: int, tls_trust: tuple[str, bytes] | None = None) -> PostEsipa:
    return PostEsipa(eid=bytes(16), request_id="r1", eim_id="eim-1", eim_fqdn=f"127.0.0.1:{port}",
                     function="GetEimPackage", body=b"\x30\x00", tls_trust=tls_trust)


async def test_the_configured_client_certificate_ca_and_admin_protocol_reach_the_eim(
        etc: Path, dropin: Callable[[str, str], Path], write_credentials: Callable[[str], Path],
        pki: RspPki, eim_at: Callable[..., Awaitable[int]]) -> None:
    seen: Seen = []
    port = await eim_at(seen, client_ca=pki.client_ca.cert_path)
    dropin("50-eim.toml", f"""
[northbound]
eim_ca_file = "{pki.tls_ca.cert_path}"
eim_client_cert_file = "{pki.gateway_client.cert_path}"
admin_protocol_version = "1.0.0"
""")
    write_credentials(f'[tls]\neim_client_key_file = "{pki.gateway_client.key_path}"\n')
    config = load_config(etc / "gateway.toml")
    async with BackhaulHttp() as http:
        backhaul = HttpBackhaul(http, trust=TlsTrust())
        configure_backhaul(backhaul, config)
        assert await backhaul.post_esipa(_post(port)) == b"\x30\x00"
    assert seen == [("gsma/rsp/v1.0.0", pki.gateway_client.cert.serial_number)]


async def test_without_a_client_certificate_the_eim_that_demands_one_refuses_the_gateway(
        etc: Path, dropin: Callable[[str, str], Path], pki: RspPki,
        eim_at: Callable[..., Awaitable[int]]) -> None:
    seen: Seen = []
    port = await eim_at(seen, client_ca=pki.client_ca.cert_path)
    dropin("50-eim.toml", f'[northbound]\neim_ca_file = "{pki.tls_ca.cert_path}"\n')
    config = load_config(etc / "gateway.toml")
    async with BackhaulHttp() as http:
        backhaul = HttpBackhaul(http, trust=TlsTrust())
        configure_backhaul(backhaul, config)
        with pytest.raises((NetworkError, TlsVerificationError)):
            await backhaul.post_esipa(_post(port))
    assert seen == []


def _spki(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("pin", ["certificate", "publicKey"])
async def test_the_euiccs_trusted_eim_tls_data_replaces_the_configured_anchors_for_that_eim(
        etc: Path, dropin: Callable[[str, str], Path], pki: RspPki, eim_at: Callable[..., Awaitable[int]],
        pin: str) -> None:
    seen: Seen = []
    port = await eim_at(seen)
    # the configured CA is the wrong one for this eIM: only the eUICC's pin can make it pass
    dropin("50-eim.toml", f'[northbound]\neim_ca_file = "{pki.ci.cert_path}"\n')
    config = load_config(etc / "gateway.toml")
    right = (pin, pki.tls_ca.cert_der if pin == "certificate" else _spki(pki.eim_tls.cert))
    wrong = (pin, pki.ci.cert_der if pin == "certificate" else _spki(pki.ci.cert))
    async with BackhaulHttp() as http:
        backhaul = HttpBackhaul(http, trust=TlsTrust())
        configure_backhaul(backhaul, config)
        with pytest.raises(TlsVerificationError):
            await backhaul.post_esipa(_post(port))
        assert await backhaul.post_esipa(_post(port, right)) == b"\x30\x00"
        with pytest.raises(TlsVerificationError):
            await backhaul.post_esipa(_post(port, wrong))
    assert len(seen) == 1
