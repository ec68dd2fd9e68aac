"""The typed ES9+ and ES11 clients against JSON servers over real TLS.

The servers here are scripted stand-ins that answer with fixed ES9+/ES11 bodies (they do no
RSP cryptography); the real SM-DP+/SM-DS peers live in hil/peers and run in the engine's
end-to-end tests.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from gateway.backhaul import es9p_client, es11_client
from gateway.backhaul.http import BackhaulHttp, Server
from gateway.errors import DecodeError, FunctionFailed, is_retryable
from gateway.spec import es9p, es11

TID = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
SERVER_SIGNED1 = bytes.fromhex("3081058001AA8100")  # non-canonical on purpose: must pass unchanged
BPP = b"\xbf\x36\x82\x01\x00" + bytes(256)


Serve = Callable[..., Awaitable[Server]]  # the `serve` fixture of conftest


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


OK = {"functionExecutionStatus": {"status": "Executed-Success"}}
Handler = Callable[[str, dict[str, object]], web.StreamResponse]


def json_server(answer: Handler, seen: list[tuple[str, dict[str, object], str]]) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        function = request.match_info["function"]
        body = json.loads(await request.read())
        seen.append((request.path, body, request.headers.get("Content-Type", "")))
        return answer(function, body)

    app = web.Application()
    app.router.add_post("/gsma/rsp2/es9plus/{function}", handle)
    app.router.add_post("/gsma/rsp2/es11/{function}", handle)
    return app


def smdp_answers(function: str, body: dict[str, object]) -> web.StreamResponse:
    if function == "initiateAuthentication":
        return web.json_response({"header": OK, "transactionId": TID.hex().upper(),
                                  "serverSigned1": b64(SERVER_SIGNED1), "serverSignature1": b64(b"\x5f\x37\x00"),
                                  "euiccCiPKIdToBeUsed": b64(b"\x04\x01\x01"), "serverCertificate": b64(b"\x30\x00")})
    if function == "authenticateClient":
        return web.json_response({"header": OK, "transactionId": body["transactionId"],
                                  "profileMetadata": b64(b"\xbf\x25\x00"), "smdpSigned2": b64(b"\x30\x00"),
                                  "smdpSignature2": b64(b"\x5f\x37\x00"), "smdpCertificate": b64(b"\x30\x00")})
    if function == "getBoundProfilePackage":
        return web.json_response({"header": OK, "transactionId": body["transactionId"],
                                  "boundProfilePackage": b64(BPP)})
    if function == "handleNotification":
        return web.Response(status=204)
    if function == "cancelSession":
        return web.json_response({"header": OK})
    raise web.HTTPNotFound()


async def test_direct_download_functions_round_trip(serve: Serve) -> None:
    seen: list[tuple[str, dict[str, object], str]] = []
    server = await serve(json_server(smdp_answers, seen))
    async with BackhaulHttp() as http:
        ia = await es9p_client.initiate_authentication(
            http, server, es9p.InitiateAuthenticationRequest(b"\x07" * 16, b"\xbf\x20\x00", "127.0.0.1"))
        assert ia.transaction_id == TID and ia.server_signed1 == SERVER_SIGNED1
        ac = await es9p_client.authenticate_client(
            http, server, es9p.AuthenticateClientRequest(TID, b"\xbf\x38\x01\x00"))
        assert ac.transaction_id == TID and ac.profile_metadata == b"\xbf\x25\x00"
        bpp = await es9p_client.get_bound_profile_package(
            http, server, es9p.GetBoundProfilePackageRequest(TID, b"\xbf\x21\x01\x00"))
        assert bpp.bound_profile_package == BPP
        await es9p_client.handle_notification(http, server, es9p.HandleNotificationRequest(b"\xbf\x37\x00"))
        header = await es9p_client.cancel_session(http, server, es9p.CancelSessionRequest(TID, b"\xbf\x41\x00"))
        assert header.status == es9p.EXECUTED_SUCCESS
    paths = [p for p, _, _ in seen]
    assert paths == ["/gsma/rsp2/es9plus/initiateAuthentication", "/gsma/rsp2/es9plus/authenticateClient",
                     "/gsma/rsp2/es9plus/getBoundProfilePackage", "/gsma/rsp2/es9plus/handleNotification",
                     "/gsma/rsp2/es9plus/cancelSession"]
    assert seen[1][1] == {"transactionId": TID.hex().upper(), "authenticateServerResponse": b64(b"\xbf\x38\x01\x00")}
    assert all(ct == "application/json;charset=UTF-8" for _, _, ct in seen)


async def test_failed_status_reaches_the_caller_with_codes(serve: Serve) -> None:
    def refuse(function: str, body: dict[str, object]) -> web.StreamResponse:
        return web.json_response({"header": {"functionExecutionStatus": {
            "status": "Failed", "statusCodeData": {"subjectCode": "8.2.6", "reasonCode": "3.8",
                                                   "message": "MatchingID refused"}}}})

    server = await serve(json_server(refuse, []))
    async with BackhaulHttp() as http:
        with pytest.raises(FunctionFailed) as info:
            await es9p_client.authenticate_client(http, server, es9p.AuthenticateClientRequest(TID, b"\x00"))
        assert (info.value.subject_code, info.value.reason_code) == ("8.2.6", "3.8")
        assert not is_retryable(info.value)
        with pytest.raises(FunctionFailed):   # 200 with a Failed header on handleNotification
            await es9p_client.handle_notification(http, server, es9p.HandleNotificationRequest(b"\x00"))


async def test_transient_failed_status_is_retryable(serve: Serve) -> None:
    def busy(function: str, body: dict[str, object]) -> web.StreamResponse:
        return web.json_response({"header": {"functionExecutionStatus": {
            "status": "Failed", "statusCodeData": {"subjectCode": "8.8", "reasonCode": "5.3"}}}})

    server = await serve(json_server(busy, []))
    async with BackhaulHttp() as http:
        with pytest.raises(FunctionFailed) as info:
            await es9p_client.get_bound_profile_package(http, server, es9p.GetBoundProfilePackageRequest(TID, b"\x00"))
    assert is_retryable(info.value)


@pytest.mark.parametrize("reply", [
    web.Response(body=b"{not json", content_type="application/json"),
    web.Response(text="<html>captive portal</html>", content_type="text/html"),
    web.Response(body=b'{"header": {"functionExecutionStatus": {"status": "Executed-Success"}}}',
                 content_type="application/json"),   # fields missing
])
async def test_malformed_answers_are_decode_errors(serve: Serve, reply: web.Response) -> None:
    server = await serve(json_server(lambda f, b: reply, []))
    async with BackhaulHttp() as http:
        with pytest.raises(DecodeError):
            await es9p_client.initiate_authentication(
                http, server, es9p.InitiateAuthenticationRequest(b"\x00" * 16, b"\x00", "dp"))


async def test_es11_event_retrieval(serve: Serve) -> None:
    def smds(function: str, body: dict[str, object]) -> web.StreamResponse:
        if function == "initiateAuthentication":
            assert body["smdsAddress"] == "smds.example"
            return smdp_answers(function, body)
        return web.json_response({"header": OK, "transactionId": body["transactionId"],
                                  "eventEntries": [{"eventId": "EV-1", "rspServerAddress": "dp.example"}]})

    seen: list[tuple[str, dict[str, object], str]] = []
    server = await serve(json_server(smds, seen))
    async with BackhaulHttp() as http:
        ia = await es11_client.initiate_authentication(
            http, server, es11.InitiateAuthenticationRequest(b"\x01" * 16, b"\xbf\x20\x00", "smds.example"))
        events = await es11_client.authenticate_client(
            http, server, es11.AuthenticateClientRequest(ia.transaction_id, b"\xbf\x38\x00"))
    assert events.event_entries == (es11.EventEntry("EV-1", "dp.example"),)
    assert [p for p, _, _ in seen] == ["/gsma/rsp2/es11/initiateAuthentication", "/gsma/rsp2/es11/authenticateClient"]
