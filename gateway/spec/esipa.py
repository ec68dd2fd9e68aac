"""ESipa (IPA <-> eIM), ASN.1 binding: the wrapper CHOICEs, function pairing, HTTP constants.

Theory of operation. In the ASN.1 binding (SGP.32 section 6.3) every ESipa message is the
DER of one of two CHOICEs, POSTed to one path: `EsipaMessageFromIpaToEim` from the IPA,
`EsipaMessageFromEimToIpa` from the eIM. An alternative's tag is its message's own tag
(BF39 InitiateAuthentication ... BF50 ProvideEimPackageResult), so the outer tag of a body
identifies the message. `FUNCTIONS` pairs each function's request alternative with the
alternative that must answer it; `decode_response` refuses an answer of the wrong kind.
Most functions are requests from the IPA; TransferEimPackage is the eIM's push, answered
by the IPA. HandleNotification has no ASN.1 answer (HTTP 204 / empty body).

SGP.32 v1.0 eIMs: their messages decode as v1.2 ones (v1.2 added optional fields), except
the empty ProvideEimPackageResultResponse (BF50 00), read here as emptyResponse. Towards a
v1.0 eIM the IPA sends GetEimPackageRequest with eidValue (and notifyStateChange) only (v1.0
tagged rPLMN [1], v1.2 uses [1] for stateChangeCause) and ProvideEimPackageResult without
eidValue (gateway.spec.signed builds the v1.0 form of ePRAndNotifications).

Messages that carry eUICC-signed data are built by splicing the exact bytes received
(gateway.spec.signed); `encode_*` here is for messages whose fields the IPA composes itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.errors import DecodeError, RemoteProtocolError
from gateway.spec import codec

ASN1_PATH = "/gsma/rsp2/asn1"
ASN1_CONTENT_TYPE = "application/x-gsma-rsp-asn1"
ADMIN_PROTOCOL_HEADER = "X-Admin-Protocol"
# What the gateway sends; eIMs in the wild send and expect v1.0.0 or v2.1.0 style values.
ADMIN_PROTOCOL = "gsma/rsp/v2.1.0"
_ADMIN_PROTOCOL_RE = re.compile(r"gsma/rsp/v(\d+)\.(\d+)\.(\d+)")

# SGP.32 v1.0 answered ProvideEimPackageResult with a SEQUENCE whose only member is
# optional: with nothing to acknowledge that is BF50 00, which v1.2's CHOICE cannot hold.
V1_0_EMPTY_PROVIDE_RESULT_RESPONSE = bytes.fromhex("BF5000")

FROM_IPA = "EsipaMessageFromIpaToEim"
FROM_EIM = "EsipaMessageFromEimToIpa"


@dataclass(frozen=True, slots=True)
class EsipaFunction:
    name: str                     # SGP.32 function name
    json_name: str                # path element of the JSON binding
    request: str                  # alternative of the requester's wrapper CHOICE
    response: str | None          # alternative of the responder's wrapper (None: no body)
    from_ipa: bool                # True when the IPA sends the request
    request_type: str             # ASN.1 type of the request
    response_type: str | None


_TABLE = (
    # SGP.32 section 6.3.2 (ASN.1 binding of the functions of section 5.14)
    EsipaFunction("InitiateAuthentication", "initiateAuthentication",
                  "initiateAuthenticationRequestEsipa", "initiateAuthenticationResponseEsipa", True,
                  "InitiateAuthenticationRequestEsipa", "InitiateAuthenticationResponseEsipa"),
    EsipaFunction("AuthenticateClient", "authenticateClient",
                  "authenticateClientRequestEsipa", "authenticateClientResponseEsipa", True,
                  "AuthenticateClientRequestEsipa", "AuthenticateClientResponseEsipa"),
    EsipaFunction("GetBoundProfilePackage", "getBoundProfilePackage",
                  "getBoundProfilePackageRequestEsipa", "getBoundProfilePackageResponseEsipa", True,
                  "GetBoundProfilePackageRequestEsipa", "GetBoundProfilePackageResponseEsipa"),
    EsipaFunction("CancelSession", "cancelSession",
                  "cancelSessionRequestEsipa", "cancelSessionResponseEsipa", True,
                  "CancelSessionRequestEsipa", "CancelSessionResponseEsipa"),
    EsipaFunction("HandleNotification", "handleNotification",
                  "handleNotificationEsipa", None, True, "HandleNotificationEsipa", None),
    EsipaFunction("GetEimPackage", "getEimPackage",
                  "getEimPackageRequest", "getEimPackageResponse", True,
                  "GetEimPackageRequest", "GetEimPackageResponse"),
    EsipaFunction("ProvideEimPackageResult", "provideEimPackageResult",
                  "provideEimPackageResult", "provideEimPackageResultResponse", True,
                  "ProvideEimPackageResult", "ProvideEimPackageResultResponse"),
    EsipaFunction("TransferEimPackage", "transferEimPackage",
                  "transferEimPackageRequest", "transferEimPackageResponse", False,
                  "TransferEimPackageRequest", "TransferEimPackageResponse"),
)

FUNCTIONS: dict[str, EsipaFunction] = {f.name: f for f in _TABLE}
BY_JSON_NAME: dict[str, EsipaFunction] = {f.json_name: f for f in _TABLE}
_BY_IPA_ALTERNATIVE = {(f.request if f.from_ipa else f.response): f for f in _TABLE}
_BY_EIM_ALTERNATIVE = {(f.response if f.from_ipa else f.request): f for f in _TABLE}


def admin_protocol_ok(value: str | None) -> bool:
    """Is an X-Admin-Protocol header value one we accept (gsma/rsp/vX.Y.Z)?"""
    return value is not None and _ADMIN_PROTOCOL_RE.fullmatch(value.strip()) is not None


def is_asn1_content_type(value: str | None) -> bool:
    """Does a Content-Type header announce the ASN.1 binding (parameters and case ignored)?"""
    return value is not None and value.split(";")[0].strip().lower() == ASN1_CONTENT_TYPE


def encode_from_ipa(alternative: str, value: Any) -> bytes:
    """DER of an IPA -> eIM message (EsipaMessageFromIpaToEim)."""
    return codec.encode(FROM_IPA, (alternative, value))


def decode_from_ipa(data: bytes) -> tuple[str, Any]:
    """(alternative, value) of an IPA -> eIM body (the eIM side, used by hil/)."""
    return _tuple(codec.decode(FROM_IPA, data))


def encode_from_eim(alternative: str, value: Any) -> bytes:
    """DER of an eIM -> IPA message (the eIM side, used by hil/)."""
    return codec.encode(FROM_EIM, (alternative, value))


def decode_from_eim(data: bytes) -> tuple[str, Any]:
    """(alternative, value) of an eIM -> IPA body."""
    return _tuple(codec.decode(FROM_EIM, data))


def function_of_ipa_message(alternative: str) -> EsipaFunction:
    return _BY_IPA_ALTERNATIVE[alternative]


def function_of_eim_message(alternative: str) -> EsipaFunction:
    return _BY_EIM_ALTERNATIVE[alternative]


def decode_response(function: str, data: bytes) -> Any:
    """The eIM's answer to an IPA request of `function`, checked to be the paired alternative.

    Returns the alternative's value; RemoteProtocolError if the eIM answered with another
    message, DecodeError if the body is not an EsipaMessageFromEimToIpa at all.
    """
    f = FUNCTIONS[function]
    if not f.from_ipa or f.response is None:
        raise RemoteProtocolError(f"{function} has no eIM response body")
    if function == "ProvideEimPackageResult" and bytes(data) == V1_0_EMPTY_PROVIDE_RESULT_RESPONSE:
        return ("emptyResponse", {})
    alternative, value = decode_from_eim(data)
    if alternative != f.response:
        raise RemoteProtocolError(f"eIM answered {function} with {alternative}")
    return value


def _tuple(value: Any) -> tuple[str, Any]:
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)):
        raise DecodeError("not a CHOICE value", type_name="ESipa message")
    return value[0], value[1]
