"""The ESipa push endpoint (InjectServer) over real TLS, with a recording stub callback.

The callback stands in for the engine's persist-then-acknowledge step; the tests check the
HTTP contract around it: routing per binding, status codes, never a crash.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.backhaul.http import ASN1_CONTENT_TYPE, BackhaulHttp, HttpStatusError, Server, TlsTrust
from gateway.backhaul.inject_server import InjectServer, server_ssl_context
from gateway.errors import DecodeError, StoreError, TlsVerificationError, is_retryable
from hil.pki import RspPki

TRANSFER = bytes.fromhex("bf4e03bf5300")  # shape only: the callback is a stub and decodes nothing
RECEIVED = bytes.fromhex("bf4e03800100")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, str]] = []
        self.fail_with: BaseException | None = None

    async def __call__(self, body: bytes, binding: str) -> bytes:
        self.calls.append((body, binding))
        if self.fail_with is not None:
            raise self.fail_with
        return RECEIVED if binding == "asn1" else b'{"eimPackageReceived":true}'


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def inject(pki: RspPki, recorder: Recorder) -> AsyncIterator[Server]:
    ctx = server_ssl_context(str(pki.dptls.cert_path), str(pki.dptls.key_path))
    async with InjectServer(recorder, ctx, host="127.0.0.1", port=0, max_body_bytes=1024,
                            shutdown_timeout_s=0.1) as srv:
        yield Server(f"https://127.0.0.1:{srv.port}", _ci(pki))


@pytest.fixture
async def raw(pki: RspPki) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client (trusting the CI) to send what BackhaulHttp never would."""
    ctx = ssl.create_default_context(cafile=str(pki.ci.cert_path))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        yield s


async def test_asn1_binding_hands_the_exact_body_to_the_callback(inject: Server, recorder: Recorder,
                                                                 pki: RspPki) -> None:
    server = inject
    async with BackhaulHttp() as http:
        reply = await http.post_esipa_asn1(server, TRANSFER)
    assert recorder.calls == [(TRANSFER, "asn1")]
    assert reply.status == 200 and reply.body == RECEIVED and reply.content_type == ASN1_CONTENT_TYPE
    assert reply.admin_protocol == server.admin_protocol


async def test_json_binding_route(inject: Server, recorder: Recorder, pki: RspPki) -> None:
    async with BackhaulHttp() as http:
        reply = await http.post_esipa_json(inject, "transferEimPackage", b'{"x":1}')
    assert recorder.calls == [(b'{"x":1}', "json")]
    assert reply.body == b'{"eimPackageReceived":true}'
    assert reply.content_type.startswith("application/json")


@pytest.mark.parametrize(("path", "content_type", "body", "status"), [
    ("/gsma/rsp2/asn1", "application/json", TRANSFER, 415),
    ("/gsma/rsp2/asn1", "text/plain", TRANSFER, 415),
    ("/gsma/rsp2/esipa/transferEimPackage", ASN1_CONTENT_TYPE, b"{}", 415),
    ("/gsma/rsp2/asn1", ASN1_CONTENT_TYPE, b"", 400),
    ("/gsma/rsp2/asn1", ASN1_CONTENT_TYPE, b"\x00" * 5000, 413),
    ("/gsma/rsp2/esipa/getEimPackage", "application/json", b"{}", 404),
])
async def test_bad_requests_get_4xx_and_never_reach_the_callback(
        inject: Server, recorder: Recorder, raw: aiohttp.ClientSession,
        path: str, content_type: str, body: bytes, status: int) -> None:
    async with raw.post(inject.base_url + path, data=body, headers={"Content-Type": content_type}) as resp:
        assert resp.status == status
    assert recorder.calls == []


async def test_chunked_oversized_body_is_413(inject: Server, recorder: Recorder, raw: aiohttp.ClientSession) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"\x00" * 500

    async with raw.post(inject.base_url + "/gsma/rsp2/asn1", data=chunks(),
                        headers={"Content-Type": ASN1_CONTENT_TYPE}) as resp:
        assert resp.status == 413
    assert recorder.calls == []


async def test_admin_protocol_versions(inject: Server, recorder: Recorder, raw: aiohttp.ClientSession) -> None:
    for version, status in (("gsma/rsp/v1.0.0", 200), ("gsma/rsp/v2.1.0", 200), ("garbage", 400)):
        async with raw.post(inject.base_url + "/gsma/rsp2/asn1", data=TRANSFER,
                            headers={"Content-Type": ASN1_CONTENT_TYPE, "X-Admin-Protocol": version}) as resp:
            assert resp.status == status
            if status == 200:
                assert resp.headers["X-Admin-Protocol"] == version
    assert len(recorder.calls) == 2


async def test_callback_errors_map_to_status(inject: Server, recorder: Recorder, pki: RspPki) -> None:
    server = inject
    async with BackhaulHttp() as http:
        recorder.fail_with = DecodeError("not an EsipaMessageFromEimToIpa")
        with pytest.raises(HttpStatusError) as info:
            await http.post_esipa_asn1(server, TRANSFER)
        assert info.value.status == 400 and not is_retryable(info.value)
        recorder.fail_with = StoreError("disk full")
        with pytest.raises(HttpStatusError) as info:
            await http.post_esipa_asn1(server, TRANSFER)
        assert info.value.status == 503 and is_retryable(info.value) and info.value.retry_after_s == 30
        recorder.fail_with = RuntimeError("bug")
        with pytest.raises(HttpStatusError) as info:
            await http.post_esipa_asn1(server, TRANSFER)
        assert info.value.status == 500
        recorder.fail_with = None
        assert (await http.post_esipa_asn1(server, TRANSFER)).body == RECEIVED  # still serving


async def test_concurrent_pushes_are_all_delivered(inject: Server, recorder: Recorder, pki: RspPki) -> None:
    server = inject
    async with BackhaulHttp() as http:
        replies = await asyncio.gather(*(http.post_esipa_asn1(server, TRANSFER + bytes([i])) for i in range(20)))
    assert all(r.body == RECEIVED for r in replies)
    assert sorted(b for b, _ in recorder.calls) == sorted(TRANSFER + bytes([i]) for i in range(20))


async def test_client_that_does_not_trust_the_gateway_cannot_push(inject: Server, pki: RspPki) -> None:
    async with BackhaulHttp() as http:
        with pytest.raises(TlsVerificationError):
            await http.post_esipa_asn1(Server(inject.base_url, TlsTrust(ca_file=str(pki.tls_ca.cert_path))), TRANSFER)


def _ci(pki: RspPki) -> TlsTrust:
    return TlsTrust(ca_file=str(pki.ci.cert_path))


async def test_random_requests_never_crash_the_endpoint(inject: Server, recorder: Recorder,
                                                        raw: aiohttp.ClientSession) -> None:
    import random
    rng = random.Random(5)
    types = [ASN1_CONTENT_TYPE, "application/json", "application/json;charset=UTF-8", "text/plain",
             "application/x-gsma-rsp-asn1;x=1", "", "multipart/form-data; boundary=x"]
    recorder.fail_with = DecodeError("stub decodes nothing")
    for _ in range(60):
        path = rng.choice(["/gsma/rsp2/asn1", "/gsma/rsp2/esipa/transferEimPackage"])
        body = rng.randbytes(rng.choice([0, 1, 17, 900, 1500]))
        headers = {"Content-Type": rng.choice(types)} if rng.random() < 0.9 else {}
        async with raw.post(inject.base_url + path, data=body, headers=headers) as resp:
            assert resp.status in (400, 413, 415)
    async with raw.post(inject.base_url + "/gsma/rsp2/asn1", data=TRANSFER,
                        headers={"Content-Type": ASN1_CONTENT_TYPE}) as resp:
        assert resp.status == 400   # still alive, still answering
