"""ES10b (IPA -> eUICC ISD-R): one table of functions, their ASN.1 types and tags.

Theory of operation. Every ES10b function is one DER object sent with STORE DATA (framing:
gateway/spec/apdu.py) and answered by one DER object whose outer tag equals the request's,
except LoadBoundProfilePackage, whose BPP (BF36) goes in ES8+ segments (gateway/spec/bpp.py)
and is answered by a ProfileInstallationResult (BF37). This module only knows the types:
`encode_request` builds the command data, `decode_response` checks and decodes the answer.
The software eUICC in hil/ uses the mirror pair `decode_request` / `encode_response`.

Function names are spelled as in SGP.22 v2.x and SGP.32 v1.2. Type names resolve as in
`gateway.spec.codec` (the SGP.32 form of a type first), so an IoT eUICC's extra fields
(compact responses, IoT EUICCInfo2, eIM package results in RetrieveNotificationsList) decode.

Signed responses (AuthenticateServer, PrepareDownload, CancelSession, LoadEuiccPackage,
notifications) must be relayed as the exact bytes received: keep the response bytes and use
`gateway.spec.signed`; the decoded value is for decisions, never for re-encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import DecodeError, LocalProtocolError
from gateway.spec import codec, tlv


@dataclass(frozen=True, slots=True)
class Es10bFunction:
    name: str
    request: str          # ASN.1 type of the command data
    response: str         # ASN.1 type of the response data
    tag: int              # outer tag of the request
    response_tag: int     # outer tag of the response (= tag except for LoadBoundProfilePackage)
    spec: str             # where the function is specified


def _f(name: str, request: str, response: str, tag: int, spec: str,
       response_tag: int | None = None) -> Es10bFunction:
    return Es10bFunction(name, request, response, tag,
                         tag if response_tag is None else response_tag, spec)


_TABLE = (
    # SGP.22 v2.x ES10b (section 5.7), in their SGP.32 v1.2 form where SGP.32 redefines them
    _f("GetEUICCInfo1", "GetEuiccInfo1Request", "EUICCInfo1", 0xBF20, "SGP.22 5.7.8"),
    _f("GetEUICCInfo2", "GetEuiccInfo2Request", "EUICCInfo2", 0xBF22, "SGP.22 5.7.8, SGP.32 5.9"),
    _f("PrepareDownload", "PrepareDownloadRequest", "PrepareDownloadResponse", 0xBF21,
       "SGP.22 5.7.5, SGP.32 5.9 (compact response)"),
    _f("LoadBoundProfilePackage", "BoundProfilePackage", "ProfileInstallationResult", 0xBF36,
       "SGP.22 2.5.5, 5.7.6", response_tag=0xBF37),
    _f("GetEuiccChallenge", "GetEuiccChallengeRequest", "GetEuiccChallengeResponse", 0xBF2E,
       "SGP.22 5.7.7"),
    _f("AuthenticateServer", "AuthenticateServerRequest", "AuthenticateServerResponse", 0xBF38,
       "SGP.22 5.7.13, SGP.32 5.9 (compact response)"),
    _f("CancelSession", "CancelSessionRequest", "CancelSessionResponse", 0xBF41,
       "SGP.22 5.7.14, SGP.32 5.9 (compact response)"),
    _f("ListNotification", "ListNotificationRequest", "ListNotificationResponse", 0xBF28,
       "SGP.22 5.7.9"),
    _f("RetrieveNotificationsList", "RetrieveNotificationsListRequest",
       "RetrieveNotificationsListResponse", 0xBF2B, "SGP.22 5.7.10, SGP.32 5.9 (eIM results)"),
    _f("RemoveNotificationFromList", "NotificationSentRequest", "NotificationSentResponse", 0xBF30,
       "SGP.22 5.7.11"),
    _f("GetProfilesInfo", "ProfileInfoListRequest", "ProfileInfoListResponse", 0xBF2D,
       "SGP.22 5.7.15, SGP.32 5.9 (IoT ProfileInfo)"),
    _f("GetRAT", "GetRatRequest", "GetRatResponse", 0xBF43, "SGP.22 5.7.22"),
    _f("GetEID", "GetEuiccDataRequest", "GetEuiccDataResponse", 0xBF3E, "SGP.22 5.7.20"),
    # SGP.32 v1.2 additions (section 5.9)
    _f("IpaeActivation", "IpaeActivationRequest", "IpaeActivationResponse", 0xBF42, "SGP.32 5.9"),
    _f("LoadEuiccPackage", "EuiccPackageRequest", "EuiccPackageResult", 0xBF51,
       "SGP.32 2.11.1, 5.9"),
    _f("IpaEuiccData", "IpaEuiccDataRequest", "IpaEuiccDataResponse", 0xBF52, "SGP.32 2.11.2, 5.9"),
    _f("GetEimConfigurationData", "GetEimConfigurationDataRequest",
       "GetEimConfigurationDataResponse", 0xBF55, "SGP.32 5.9"),
    _f("GetCerts", "GetCertsRequest", "GetCertsResponse", 0xBF56, "SGP.32 5.9"),
    _f("AddInitialEim", "AddInitialEimRequest", "AddInitialEimResponse", 0xBF57, "SGP.32 5.9"),
    _f("ProfileRollback", "ProfileRollbackRequest", "ProfileRollbackResponse", 0xBF58, "SGP.32 5.9"),
    _f("ConfigureImmediateProfileEnabling", "ConfigureImmediateProfileEnablingRequest",
       "ConfigureImmediateProfileEnablingResponse", 0xBF59, "SGP.32 5.9"),
    _f("ImmediateEnable", "ImmediateEnableRequest", "ImmediateEnableResponse", 0xBF5A, "SGP.32 5.9"),
    _f("EnableEmergencyProfile", "EnableEmergencyProfileRequest", "EnableEmergencyProfileResponse",
       0xBF5B, "SGP.32 5.9"),
    _f("DisableEmergencyProfile", "DisableEmergencyProfileRequest",
       "DisableEmergencyProfileResponse", 0xBF5C, "SGP.32 5.9"),
    _f("ExecuteFallbackMechanism", "ExecuteFallbackMechanismRequest",
       "ExecuteFallbackMechanismResponse", 0xBF5D, "SGP.32 5.9"),
    _f("ReturnFromFallback", "ReturnFromFallbackRequest", "ReturnFromFallbackResponse", 0xBF5E,
       "SGP.32 5.9"),
    _f("GetConnectivityParameters", "GetConnectivityParametersRequest",
       "GetConnectivityParametersResponse", 0xBF5F, "SGP.32 5.9"),
    _f("EuiccMemoryReset", "EuiccMemoryResetRequest", "EuiccMemoryResetResponse", 0xBF64,
       "SGP.32 5.9"),
    _f("SetDefaultDpAddress", "SetDefaultDpAddressRequest", "SetDefaultDpAddressResponse", 0xBF65,
       "SGP.32 5.9"),
)

FUNCTIONS: dict[str, Es10bFunction] = {f.name: f for f in _TABLE}
BY_REQUEST_TAG: dict[int, Es10bFunction] = {f.tag: f for f in _TABLE}

# v1.0 names of two functions renamed by SGP.32 v1.2
ALIASES = {
    "ConfigureAutoProfileEnabling": "ConfigureImmediateProfileEnabling",
    "EnableUsingDD": "ImmediateEnable",
}


def function(name: str) -> Es10bFunction:
    """The ES10b function called `name` (SGP.32 v1.0 names accepted); LocalProtocolError if none."""
    try:
        return FUNCTIONS[ALIASES.get(name, name)]
    except KeyError:
        raise LocalProtocolError(f"no ES10b function {name!r}") from None


def encode_request(fn: str, value: Any) -> bytes:
    """The command data of ES10b function `fn` (DER), to be sent with STORE DATA."""
    f = function(fn)
    return codec.encode(f.request, value)


def decode_response(fn: str, data: bytes) -> Any:
    """The eUICC's response to `fn`; DecodeError if it is not that function's response."""
    f = function(fn)
    _expect_tag(data, f.response_tag, f.response)
    return codec.decode(f.response, data)


def decode_request(data: bytes) -> tuple[Es10bFunction, Any]:
    """The function and value of an ES10b command (the eUICC side, used by hil/)."""
    f = BY_REQUEST_TAG.get(tlv.outer_tag(data)) if data else None
    if f is None:
        tag = f"{tlv.outer_tag(data):X}" if data else "none"
        raise DecodeError(f"tag {tag} is not an ES10b request", type_name="ES10b request", offset=0)
    return f, codec.decode(f.request, data)


def encode_response(fn: str, value: Any) -> bytes:
    """The response data of `fn` (the eUICC side, used by hil/)."""
    return codec.encode(function(fn).response, value)


def _expect_tag(data: bytes, tag: int, type_name: str) -> None:
    if not data:
        raise DecodeError("no response data", type_name=type_name, offset=0)
    got = tlv.outer_tag(data)
    if got != tag:
        raise DecodeError(f"tag {got:X} where {tag:X} was expected", type_name=type_name, offset=0)
