"""ES9+ client (SGP.22 §6.5.2): one typed coroutine per function, over `BackhaulHttp`.

Theory of operation. Each function encodes its request with gateway.spec.es9p, posts it
with the JSON style (§6.5.1), checks the reply is JSON and hands the body back to
gateway.spec.es9p, which raises FunctionFailed for a Failed/Expired header. Signed blobs
go out and come back as the exact bytes. handleNotification succeeds on HTTP 204 (§6.5.2.9);
a server that answers 200 with a header instead is also understood.
"""

from __future__ import annotations

from gateway.backhaul.http import BackhaulHttp, HttpReply, Server, require_content_type
from gateway.spec import es9p


async def _call(http: BackhaulHttp, server: Server, function: str, body: bytes) -> HttpReply:
    return await http.post_json(server, es9p.es9p_path(function), body)


def _json_body(reply: HttpReply, function: str) -> bytes:
    require_content_type(reply, "application/json", f"ES9+ {function}")
    return reply.body


async def initiate_authentication(http: BackhaulHttp, server: Server,
                                  request: es9p.InitiateAuthenticationRequest
                                  ) -> es9p.InitiateAuthenticationResponse:  # §6.5.2.6
    f = es9p.INITIATE_AUTHENTICATION
    reply = await _call(http, server, f, request.to_json())
    return es9p.InitiateAuthenticationResponse.from_json(_json_body(reply, f))


async def authenticate_client(http: BackhaulHttp, server: Server,
                              request: es9p.AuthenticateClientRequest
                              ) -> es9p.AuthenticateClientResponse:  # §6.5.2.8
    f = es9p.AUTHENTICATE_CLIENT
    reply = await _call(http, server, f, request.to_json())
    return es9p.AuthenticateClientResponse.from_json(_json_body(reply, f))


async def get_bound_profile_package(http: BackhaulHttp, server: Server,
                                    request: es9p.GetBoundProfilePackageRequest
                                    ) -> es9p.GetBoundProfilePackageResponse:  # §6.5.2.7
    f = es9p.GET_BOUND_PROFILE_PACKAGE
    reply = await _call(http, server, f, request.to_json())
    return es9p.GetBoundProfilePackageResponse.from_json(_json_body(reply, f))


async def handle_notification(http: BackhaulHttp, server: Server,
                              request: es9p.HandleNotificationRequest) -> None:  # §6.5.2.9
    f = es9p.HANDLE_NOTIFICATION
    reply = await _call(http, server, f, request.to_json())
    if reply.status == es9p.HANDLE_NOTIFICATION_STATUS or not reply.body:
        return
    es9p.parse_header_only(_json_body(reply, f), f)


async def cancel_session(http: BackhaulHttp, server: Server,
                         request: es9p.CancelSessionRequest) -> es9p.ResponseHeader:  # §6.5.2.10
    f = es9p.CANCEL_SESSION
    reply = await _call(http, server, f, request.to_json())
    return es9p.parse_header_only(_json_body(reply, f), f)
