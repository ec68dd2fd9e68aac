"""ES11 client (SGP.22 §6.6.2): SM-DS event retrieval over `BackhaulHttp`.

Theory of operation: the same JSON style as ES9+ (see es9p_client); bodies are
gateway.spec.es11's, errors come from its header parsing.
"""

from __future__ import annotations

from gateway.backhaul.http import BackhaulHttp, Server, require_content_type
from gateway.spec import es11


async def initiate_authentication(http: BackhaulHttp, server: Server,
                                  request: es11.InitiateAuthenticationRequest
                                  ) -> es11.InitiateAuthenticationResponse:  # §6.6.2.1
    reply = await http.post_json(server, es11.es11_path(es11.INITIATE_AUTHENTICATION), request.to_json())
    require_content_type(reply, "application/json", "ES11 initiateAuthentication")
    return es11.InitiateAuthenticationResponse.from_json(reply.body)


async def authenticate_client(http: BackhaulHttp, server: Server,
                              request: es11.AuthenticateClientRequest
                              ) -> es11.AuthenticateClientResponse:  # §6.6.2.2
    reply = await http.post_json(server, es11.es11_path(es11.AUTHENTICATE_CLIENT), request.to_json())
    require_content_type(reply, "application/json", "ES11 authenticateClient")
    return es11.AuthenticateClientResponse.from_json(reply.body)
