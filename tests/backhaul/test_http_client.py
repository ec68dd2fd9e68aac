"""BackhaulHttp against real aiohttp servers over real TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from gateway.backhaul.http import (
    ASN1_CONTENT_TYPE,
    BackhaulHttp,
    HttpLimits,
    HttpStatusError,
    Server,
    TlsTrust,
)
from gateway.backhaul.inject_server import server_ssl_context
from gateway.core.retry import BreakerState, CircuitBreaker, CircuitOpen
from gateway.errors import (
    ConfigError,
    NetworkError,
    RemoteProtocolError,
    TlsVerificationError,
    TransportTimeout,
    is_retryable,
)
from hil.pki import RspPki

Serve = Callable[..., Awaitable[Server]]  # the `serve` fixture of conftest


def echo_app(seen: list[web.Request] | None = None, peers: list[object] | None = None) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(request)
        if peers is not None and request.transport is not None:
            peers.append(request.transport.get_extra_info("peername"))
        body = await request.read()
        return web.Response(body=body[::-1], content_type=request.content_type,
                            headers={"X-Admin-Protocol": request.headers.get("X-Admin-Protocol", "")})

    app = web.Application()
    app.router.add_post("/gsma/rsp2/asn1", echo)
    app.router.add_post("/gsma/rsp2/esipa/getEimPackage", echo)
    return app


def status_app(status: int, headers: dict[str, str] | None = None) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text="nope", headers=headers)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    return app


async def test_asn1_binding_posts_bytes_with_headers_and_returns_bytes(serve: Serve) -> None:
    seen: list[web.Request] = []
    server = await serve(echo_app(seen))
    async with BackhaulHttp() as http:
        reply = await http.post_esipa_asn1(server, b"\xbf\x4f\x03\x5a\x01\x89")
    assert reply.status == 200 and reply.body == b"\x89\x01\x5a\x03\x4f\xbf"
    assert reply.content_type == ASN1_CONTENT_TYPE
    req = seen[0]
    assert req.headers["Content-Type"] == ASN1_CONTENT_TYPE
    assert req.headers["X-Admin-Protocol"] == server.admin_protocol
    assert req.headers["User-Agent"].startswith("gsma-rsp-lpad")


async def test_json_binding_and_connection_reuse(serve: Serve) -> None:
    seen: list[web.Request] = []
    peers: list[object] = []
    server = await serve(echo_app(seen, peers))
    async with BackhaulHttp() as http:
        for _ in range(3):
            reply = await http.post_esipa_json(server, "getEimPackage", b'{"a":1}')
            assert reply.body == b'}1:"a"{'
    assert seen[0].headers["Content-Type"] == "application/json;charset=UTF-8"
    assert len(peers) == 3 and len(set(peers)) == 1  # one pooled connection


async def test_trust_anchors_given_as_der_pin_the_server(serve: Serve, pki: RspPki) -> None:
    # How an eIM's TLS trust learnt from the eUICC (trustedPublicKeyDataTls) is used.
    eim_ssl = server_ssl_context(str(pki.eim_tls.cert_path), str(pki.eim_tls.key_path))
    server = await serve(echo_app(), ssl_context=eim_ssl, trust=TlsTrust(ca_der=(pki.tls_ca.cert_der,)))
    async with BackhaulHttp() as http:
        assert (await http.post_esipa_asn1(server, b"\x01\x02")).body == b"\x02\x01"
        wrong = Server(server.base_url, TlsTrust(ca_der=(pki.ci.cert_der,)))
        with pytest.raises(TlsVerificationError):
            await http.post_esipa_asn1(wrong, b"\x01")


async def test_an_eim_that_demands_a_client_certificate_gets_the_configured_one(serve: Serve, pki: RspPki) -> None:
    eim_ssl = server_ssl_context(str(pki.eim_tls.cert_path), str(pki.eim_tls.key_path),
                                 client_ca_file=str(pki.client_ca.cert_path))
    seen: list[web.Request] = []
    anchors = str(pki.tls_ca.cert_path)
    mutual = TlsTrust(ca_file=anchors, client_cert_file=str(pki.gateway_client.cert_path),
                      client_key_file=str(pki.gateway_client.key_path))
    server = await serve(echo_app(seen), ssl_context=eim_ssl, trust=mutual)
    async with BackhaulHttp() as http:
        assert (await http.post_esipa_asn1(server, b"\x01\x02")).body == b"\x02\x01"
        peer = seen[0].transport.get_extra_info("peercert") if seen[0].transport else None
        assert peer is not None and int(peer["serialNumber"], 16) == pki.gateway_client.cert.serial_number
        anonymous = Server(server.base_url, TlsTrust(ca_file=anchors))
        with pytest.raises((NetworkError, TlsVerificationError)):
            await http.post_esipa_asn1(anonymous, b"\x01")
    assert len(seen) == 1


def test_an_unusable_client_certificate_is_a_config_error_naming_the_file(tmp_path: Path, pki: RspPki) -> None:
    bad = tmp_path / "client.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError) as err:
        TlsTrust(ca_file=str(pki.tls_ca.cert_path), client_cert_file=str(bad),
                 client_key_file=str(pki.gateway_client.key_path)).ssl_context()
    assert err.value.file == str(bad)


async def test_wrong_ca_is_a_tls_verification_error_not_retryable(serve: Serve, pki: RspPki) -> None:
    server = await serve(echo_app(), trust=TlsTrust(ca_file=str(pki.tls_ca.cert_path)))
    async with BackhaulHttp() as http:
        with pytest.raises(TlsVerificationError) as info:
            await http.post_esipa_asn1(server, b"\x01")
    assert not is_retryable(info.value)


async def test_wrong_hostname_is_a_tls_verification_error(serve: Serve,
                                                          other_host_cert: tuple[Path, Path]) -> None:
    server = await serve(echo_app(), ssl_context=server_ssl_context(*map(str, other_host_cert)))
    async with BackhaulHttp() as http:
        with pytest.raises(TlsVerificationError) as info:
            await http.post_esipa_asn1(server, b"\x01")
    assert "127.0.0.1" in str(info.value) or "match" in str(info.value).lower()


async def test_timeout_is_transport_timeout(serve: Serve) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(body=b"late")

    app = web.Application()
    app.router.add_post("/gsma/rsp2/asn1", slow)
    server = await serve(app)
    async with BackhaulHttp(HttpLimits(request_timeout_s=5)) as http:
        with pytest.raises(TransportTimeout) as info:
            await http.post_esipa_asn1(server, b"\x01", timeout_s=0.3)
    release.set()
    assert is_retryable(info.value)


async def test_connection_refused_is_network_error(free_tcp_port: int, ci_trust: TlsTrust) -> None:
    async with BackhaulHttp() as http:
        with pytest.raises(NetworkError) as info:
            await http.post_esipa_asn1(Server(f"https://127.0.0.1:{free_tcp_port}", ci_trust), b"\x01")
    assert is_retryable(info.value)


async def test_plain_http_peer_is_a_network_error_not_a_crash(free_tcp_port: int, ci_trust: TlsTrust) -> None:
    runner = web.AppRunner(echo_app(), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", free_tcp_port).start()
    try:
        async with BackhaulHttp() as http:
            with pytest.raises(NetworkError):
                await http.post_esipa_asn1(Server(f"https://127.0.0.1:{free_tcp_port}", ci_trust), b"\x01")
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("status", "retryable"), [
    (500, True), (502, True), (503, True), (504, True), (408, True), (429, True),
    (400, False), (401, False), (403, False), (404, False), (415, False), (302, False),
])
async def test_http_status_mapping(serve: Serve, status: int, retryable: bool) -> None:
    headers = {"Location": "https://elsewhere.example/"} if status == 302 else None
    server = await serve(status_app(status, headers))
    async with BackhaulHttp() as http:
        with pytest.raises(HttpStatusError) as info:
            await http.post_json(server, "/gsma/rsp2/es9plus/initiateAuthentication", b"{}")
    assert info.value.status == status
    assert is_retryable(info.value) is retryable


async def test_retry_after_is_reported(serve: Serve) -> None:
    server = await serve(status_app(503, {"Retry-After": "120"}))
    async with BackhaulHttp() as http:
        with pytest.raises(HttpStatusError) as info:
            await http.post_esipa_asn1(server, b"\x01")
    assert info.value.retry_after_s == 120.0


async def test_oversized_response_is_refused(serve: Serve) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(20):
            await resp.write(b"x" * 1024)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/gsma/rsp2/asn1", big)
    server = await serve(app)
    async with BackhaulHttp(HttpLimits(max_response_bytes=4096)) as http:
        with pytest.raises(RemoteProtocolError):
            await http.post_esipa_asn1(server, b"\x01")


async def test_circuit_breaker_fails_fast_once_open_then_probes(free_tcp_port: int, ci_trust: TlsTrust) -> None:
    now = [0.0]
    http = BackhaulHttp(breaker_factory=lambda s: CircuitBreaker(s, failure_threshold=2, reset_timeout_s=60),
                        clock=lambda: now[0])
    server = Server(f"https://127.0.0.1:{free_tcp_port}", ci_trust)
    async with http:
        for _ in range(2):
            with pytest.raises(NetworkError):
                await http.post_esipa_asn1(server, b"\x01")
        with pytest.raises(CircuitOpen):
            await http.post_esipa_asn1(server, b"\x01")
        breaker = http.breaker(server)
        assert breaker is not None and breaker.current_state(now[0]) is BreakerState.OPEN
        now[0] = 61.0
        with pytest.raises(NetworkError) as info:   # the probe really connects, and fails
            await http.post_esipa_asn1(server, b"\x01")
        assert not isinstance(info.value, CircuitOpen)
        assert breaker.current_state(now[0]) is BreakerState.OPEN


def test_server_urls_must_be_https_without_path() -> None:
    for bad in ("http://dp.example", "https://dp.example/x", "dp.example", "https://"):
        with pytest.raises(ConfigError):
            Server(bad)
    assert Server.from_fqdn("dp.example:8443").url("/a") == "https://dp.example:8443/a"


def test_unusable_trust_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError):
        TlsTrust(ca_file=str(bad)).ssl_context()
    ctx = TlsTrust().ssl_context()
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname


async def test_esipa_exchange_returns_exact_bytes_none_for_204_and_checks_content_type(serve: Serve) -> None:
    from gateway.backhaul import esipa_client
    from gateway.errors import DecodeError

    answers = {b"a": web.Response(body=b"\xbf\x4f\x81\x01\x00", content_type=ASN1_CONTENT_TYPE),
               b"b": web.Response(status=204),
               b"c": web.Response(text="<html/>", content_type="text/html")}

    async def eim(request: web.Request) -> web.Response:
        return answers[await request.read()]

    app = web.Application()
    app.router.add_post("/gsma/rsp2/asn1", eim)
    server = await serve(app)
    async with BackhaulHttp() as http:
        assert await esipa_client.exchange_asn1(http, server, b"a") == b"\xbf\x4f\x81\x01\x00"
        assert await esipa_client.exchange_asn1(http, server, b"b") is None
        with pytest.raises(DecodeError):
            await esipa_client.exchange_asn1(http, server, b"c")


def test_given_anchors_replace_the_system_store(pki: RspPki) -> None:
    ctx = TlsTrust(ca_der=(pki.tls_ca.cert_der,)).ssl_context()
    # ssl prints the serial as whole hex octets (a leading 0 when the top nibble is empty)
    assert [int(c["serialNumber"], 16) for c in ctx.get_ca_certs()] == [pki.tls_ca.cert.serial_number]
    assert len(TlsTrust(ca_file=str(pki.ci.cert_path)).ssl_context().get_ca_certs()) == 1
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
