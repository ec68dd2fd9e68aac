"""ESipa transport toward the eIM (SGP.32 §6.1 bindings), bytes in and bytes out.

Theory of operation. The engine encodes an EsipaMessageFromIpaToEim (ASN.1 binding) or a
JSON body (JSON binding) with gateway.spec.esipa / esipa_json and gets back the exact bytes
the eIM answered, so signed content inside (EuiccPackageRequest, BPP) is relayed without
re-encoding. An answer with no body (HTTP 204) is returned as None; a body of the wrong
content type is a DecodeError. Errors otherwise as in gateway.backhaul.http.
"""

from __future__ import annotations

from gateway.backhaul.http import ASN1_CONTENT_TYPE, BackhaulHttp, Server, require_content_type


async def exchange_asn1(http: BackhaulHttp, server: Server, message: bytes, *,
                        timeout_s: float | None = None) -> bytes | None:
    """POST /gsma/rsp2/asn1 with DER of EsipaMessageFromIpaToEim; DER of the answer or None."""
    reply = await http.post_esipa_asn1(server, message, timeout_s=timeout_s)
    if reply.status == 204 or not reply.body:
        return None
    require_content_type(reply, ASN1_CONTENT_TYPE, "ESipa ASN.1 binding")
    return reply.body


async def exchange_json(http: BackhaulHttp, server: Server, function: str, body: bytes, *,
                        timeout_s: float | None = None) -> bytes | None:
    """POST /gsma/rsp2/esipa/<function> with a JSON body; the JSON answer or None."""
    reply = await http.post_esipa_json(server, function, body, timeout_s=timeout_s)
    if reply.status == 204 or not reply.body:
        return None
    require_content_type(reply, "application/json", f"ESipa {function}")
    return reply.body
