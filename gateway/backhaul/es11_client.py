"""ES11 client (SGP.22 §6.6.2): SM-DS event retrieval over `BackhaulHttp`.

Theory of operation: the same JSON style as ES9+ (see es9p_client); bodies are
gateway.spec.es11's, errors come from its header parsing.
"""

from __future__ import annotations

from gateway.backhaul.http import BackhaulHttp, Server, require_content_type
from gateway.spec import es11


async def _json_call(http: BackhaulHttp, server: Server, function: str, body: bytes) -> bytes:
    reply = await http.post_json(server, es11.es11_path(function), body)
    require_content_type(reply, "application/json", f"ES11 {function}")
    return reply.body


async def initiate_authentication(http: BackhaulHttp, server: Server,
                                  request: es11.InitiateAuthenticationRequest
                                  ) -> es11.InitiateAuthenticationResponse:  # §6.6.2.1
    body = await _json_call(http, server, es11.INITIATE_AUTHENTICATION, request.to_json())
    return es11.InitiateAuthenticationResponse.from_json(body)


async def authenticate_client(http: BackhaulHttp, server: Server,
                              request: es11.AuthenticateClientRequest
                              ) -> es11.AuthenticateClientResponse:  # §6.6.2.2
    body = await _json_call(http, server, es11.AUTHENTICATE_CLIENT, request.to_json())
    return es11.AuthenticateClientResponse.from_json(body)
