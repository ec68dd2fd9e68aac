"""ES9+ (LPA/IPA <-> SM-DP+) JSON bodies, SGP.22 v2.5 §6.5; pure, no I/O.

Theory of operation. Each ES9+ function has a request dataclass (`to_json() -> bytes`) and,
where the function returns data, a response dataclass (`from_json(body) -> response`).
Binary fields travel base64 in JSON and are `bytes` here; a signed blob (serverSigned1,
smdpSigned2, the eUICC's signed responses, the BPP) is kept as the exact bytes received and
is never decoded and re-encoded by this module. transactionId is hex in JSON (§6.5.1.1:
"^[0-9A-F]{2,32}$") and bytes here.

Every response first goes through `parse_header`: status Executed-Success and
Executed-WithWarning return the parsed `ResponseHeader`; Failed and Expired raise
`gateway.errors.FunctionFailed` carrying subjectCode/reasonCode, with `retryable` taken
from `RETRY_BY_REASON_CODE`, the one table that says which reason codes are transient.
Any malformed body (not UTF-8, not JSON, not an object, missing field, wrong type, bad
base64/hex) raises `gateway.errors.DecodeError` naming the function and the field.

The helpers prefixed `json_` are shared with ES11 (`gateway.spec.es11`), which uses the same
JSON conventions.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.errors import DecodeError, FunctionFailed

# §6.5 / §6.1 transport conventions shared by ES9+ and ES11.
ES9P_PATH_PREFIX: Final = "/gsma/rsp2/es9plus/"
ADMIN_PROTOCOL_HEADER: Final = "X-Admin-Protocol"
ADMIN_PROTOCOL: Final = "gsma/rsp/v2.2.0"   # gsma/rsp/v2.x.y; per server in backhaul.http.Server
JSON_CONTENT_TYPE: Final = "application/json;charset=UTF-8"
HANDLE_NOTIFICATION_STATUS: Final = 204    # §6.5.2.9: no response body

INITIATE_AUTHENTICATION: Final = "initiateAuthentication"   # §6.5.2.6
GET_BOUND_PROFILE_PACKAGE: Final = "getBoundProfilePackage"  # §6.5.2.7
AUTHENTICATE_CLIENT: Final = "authenticateClient"           # §6.5.2.8
HANDLE_NOTIFICATION: Final = "handleNotification"           # §6.5.2.9
CANCEL_SESSION: Final = "cancelSession"                     # §6.5.2.10


def es9p_path(function: str) -> str:
    return ES9P_PATH_PREFIX + function


# --- header and error classification -------------------------------------------------------

EXECUTED_SUCCESS: Final = "Executed-Success"
EXECUTED_WITH_WARNING: Final = "Executed-WithWarning"
FAILED: Final = "Failed"
EXPIRED: Final = "Expired"
_STATUSES: Final = frozenset({EXECUTED_SUCCESS, EXECUTED_WITH_WARNING, FAILED, EXPIRED})

# Reason codes (SGP.22 v2.5 §8.5, the SGP.02 §5.1.6.4 families) -> (retryable, why).
# An exact code wins over its family ("4.1" over "4"); an unknown family is definitive.
# Definitive is the safe default: the SM-DP+ counts download attempts and answers
# 8.8.5/6.4 ("maximum number of retries exceeded") once they are spent, so resending
# a request it refused on purpose can only burn the order.
RETRY_BY_REASON_CODE: Final[Mapping[str, tuple[bool, str]]] = {
    "1": (False, "Access error (1.x: unknown/unauthorised requester, 8.2/1.2 profile not "
                 "released): the same request is refused again"),
    "2": (False, "Format error (2.x: e.g. 8.2.7/2.2 confirmation code missing): the request "
                 "itself is wrong"),
    "3": (False, "Conditions of use not satisfied (3.1 unsupported, 3.7 unavailable, "
                 "3.8 refused, 3.9 unknown e.g. 8.10.1/3.9 transactionId, 3.10 invalid "
                 "association): a decision of the server"),
    "4": (False, "Processing error (4.x) other than 4.1: 4.2 stopped on warning, 4.3 no "
                 "eligible profile (8.2.5), 4.8 insufficient memory (8.1), 4.10 time to live "
                 "expired (8.8.5)"),
    "4.1": (True, "Execution error: the server failed while executing, without refusing "
                  "the request; a later attempt may succeed"),
    "5": (True, "Transport error (5.x: 5.1 inaccessible, 5.3 transaction timeout): a party "
                "the server depends on was not reachable"),
    "6": (False, "Security error (6.1 verification failed, 6.3 expired, 6.4 maximum number "
                 "of retries exceeded): resending the same signed data cannot change it"),
}
# Header status Expired (§6.5.1, functionExecutionStatus): the function was not executed in its validity period.
# ES9+/ES11 requests carry no validity period, so a server saying Expired is refusing a
# session or order that has expired: definitive.
RETRYABLE_EXPIRED: Final = False


def is_transient_reason(reason_code: str | None) -> bool:
    """Whether a Failed status with this reasonCode may be retried (see RETRY_BY_REASON_CODE)."""
    if not reason_code:
        return False
    entry = RETRY_BY_REASON_CODE.get(reason_code)
    if entry is None:
        entry = RETRY_BY_REASON_CODE.get(reason_code.split(".", 1)[0])
    return entry[0] if entry is not None else False


@dataclass(frozen=True, slots=True)
class StatusCodeData:
    subject_code: str
    reason_code: str
    subject_identifier: str | None = None
    message: str | None = None

    def to_obj(self) -> dict[str, str]:
        obj = {"subjectCode": self.subject_code, "reasonCode": self.reason_code}
        if self.subject_identifier is not None:
            obj["subjectIdentifier"] = self.subject_identifier
        if self.message is not None:
            obj["message"] = self.message
        return obj


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    status: str
    status_code_data: StatusCodeData | None = None

    def to_obj(self) -> dict[str, Any]:
        fes: dict[str, Any] = {"status": self.status}
        if self.status_code_data is not None:
            fes["statusCodeData"] = self.status_code_data.to_obj()
        return {"functionExecutionStatus": fes}


SUCCESS_HEADER: Final = ResponseHeader(EXECUTED_SUCCESS)


def parse_header(obj: Mapping[str, Any], function: str) -> ResponseHeader:
    """Read `header.functionExecutionStatus`; raise FunctionFailed on Failed/Expired."""
    header = json_object(obj, "header", function)
    fes = json_object(header, "functionExecutionStatus", function)
    status = json_str(fes, "status", function)
    if status not in _STATUSES:
        raise DecodeError(f"unknown functionExecutionStatus.status {status!r}", type_name=function)
    scd: StatusCodeData | None = None
    if "statusCodeData" in fes:
        raw = json_object(fes, "statusCodeData", function)
        scd = StatusCodeData(
            subject_code=json_str(raw, "subjectCode", function),
            reason_code=json_str(raw, "reasonCode", function),
            subject_identifier=json_opt_str(raw, "subjectIdentifier", function),
            message=json_opt_str(raw, "message", function),
        )
    if status in (FAILED, EXPIRED):
        raise function_failed(function, status, scd)
    return ResponseHeader(status, scd)


def function_failed(function: str, status: str, scd: StatusCodeData | None) -> FunctionFailed:
    subject = scd.subject_code if scd else None
    reason = scd.reason_code if scd else None
    retryable = RETRYABLE_EXPIRED if status == EXPIRED else is_transient_reason(reason)
    text = f"{function}: {status}"
    if scd and scd.subject_identifier:
        text += f" ({scd.subject_identifier})"
    if scd and scd.message:
        text += f": {scd.message}"
    return FunctionFailed(text, subject_code=subject, reason_code=reason, retryable=retryable)


# --- JSON field helpers (shared with ES11) ------------------------------------------------

_HEX_TRANSACTION_ID = re.compile(r"[0-9A-Fa-f]{2,32}")


def json_load(body: bytes, function: str) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DecodeError(f"body is not UTF-8: {exc.reason}", type_name=function,
                          offset=exc.start) from None
    except json.JSONDecodeError as exc:
        raise DecodeError(f"body is not JSON: {exc.msg}", type_name=function,
                          offset=exc.pos) from None
    except RecursionError:
        raise DecodeError("body nests too deeply", type_name=function) from None
    if not isinstance(obj, dict):
        raise DecodeError(f"body is a JSON {type(obj).__name__}, not an object", type_name=function)
    return obj


def json_dump(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _field(obj: Mapping[str, Any], key: str, function: str) -> Any:
    if key not in obj:
        raise DecodeError(f"missing field {key!r}", type_name=function)
    return obj[key]


def json_object(obj: Mapping[str, Any], key: str, function: str) -> dict[str, Any]:
    value = _field(obj, key, function)
    if not isinstance(value, dict):
        raise DecodeError(f"field {key!r} is not an object", type_name=function)
    return value


def json_str(obj: Mapping[str, Any], key: str, function: str) -> str:
    value = _field(obj, key, function)
    if not isinstance(value, str):
        raise DecodeError(f"field {key!r} is not a string", type_name=function)
    return value


def json_opt_str(obj: Mapping[str, Any], key: str, function: str) -> str | None:
    return json_str(obj, key, function) if obj.get(key) is not None else None


def b64decode_field(value: str, key: str, function: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise DecodeError(f"field {key!r} is not valid base64", type_name=function) from None


def json_b64(obj: Mapping[str, Any], key: str, function: str) -> bytes:
    return b64decode_field(json_str(obj, key, function), key, function)


def json_opt_b64(obj: Mapping[str, Any], key: str, function: str) -> bytes | None:
    return json_b64(obj, key, function) if obj.get(key) is not None else None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def json_transaction_id(obj: Mapping[str, Any], key: str, function: str) -> bytes:
    value = json_str(obj, key, function)
    if not _HEX_TRANSACTION_ID.fullmatch(value) or len(value) % 2:
        raise DecodeError(f"field {key!r} is not a 1-16 byte hex transactionId", type_name=function)
    return bytes.fromhex(value)


def transaction_id_hex(transaction_id: bytes) -> str:
    if not 1 <= len(transaction_id) <= 16:
        raise ValueError("transactionId is 1 to 16 bytes (SGP.22 §6.5.1.1)")
    return transaction_id.hex().upper()


# --- ES9+ functions -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class InitiateAuthenticationRequest:  # §6.5.2.6
    euicc_challenge: bytes
    euicc_info1: bytes
    smdp_address: str

    def to_json(self) -> bytes:
        return json_dump({"euiccChallenge": b64(self.euicc_challenge),
                          "euiccInfo1": b64(self.euicc_info1),
                          "smdpAddress": self.smdp_address})

    @classmethod
    def from_json(cls, body: bytes) -> InitiateAuthenticationRequest:
        f = INITIATE_AUTHENTICATION
        obj = json_load(body, f)
        return cls(json_b64(obj, "euiccChallenge", f), json_b64(obj, "euiccInfo1", f),
                   json_str(obj, "smdpAddress", f))


@dataclass(frozen=True, slots=True)
class InitiateAuthenticationResponse:  # §6.5.2.6
    transaction_id: bytes
    server_signed1: bytes
    server_signature1: bytes
    euicc_ci_pkid_to_be_used: bytes
    server_certificate: bytes
    header: ResponseHeader = SUCCESS_HEADER

    @classmethod
    def from_json(cls, body: bytes) -> InitiateAuthenticationResponse:
        return cls.from_obj(json_load(body, INITIATE_AUTHENTICATION), INITIATE_AUTHENTICATION)

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any], f: str) -> InitiateAuthenticationResponse:
        header = parse_header(obj, f)
        return cls(
            transaction_id=json_transaction_id(obj, "transactionId", f),
            server_signed1=json_b64(obj, "serverSigned1", f),
            server_signature1=json_b64(obj, "serverSignature1", f),
            euicc_ci_pkid_to_be_used=json_b64(obj, "euiccCiPKIdToBeUsed", f),
            server_certificate=json_b64(obj, "serverCertificate", f),
            header=header,
        )

    def to_obj(self) -> dict[str, Any]:
        return {"header": self.header.to_obj(),
                "transactionId": transaction_id_hex(self.transaction_id),
                "serverSigned1": b64(self.server_signed1),
                "serverSignature1": b64(self.server_signature1),
                "euiccCiPKIdToBeUsed": b64(self.euicc_ci_pkid_to_be_used),
                "serverCertificate": b64(self.server_certificate)}

    def to_json(self) -> bytes:
        return json_dump(self.to_obj())


@dataclass(frozen=True, slots=True)
class AuthenticateClientRequest:  # §6.5.2.8
    transaction_id: bytes
    authenticate_server_response: bytes  # the eUICC's signed AuthenticateServerResponse (BF38)

    def to_json(self) -> bytes:
        return json_dump({"transactionId": transaction_id_hex(self.transaction_id),
                          "authenticateServerResponse": b64(self.authenticate_server_response)})

    @classmethod
    def from_json(cls, body: bytes) -> AuthenticateClientRequest:
        return cls.from_obj(json_load(body, AUTHENTICATE_CLIENT), AUTHENTICATE_CLIENT)

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any], f: str) -> AuthenticateClientRequest:
        return cls(json_transaction_id(obj, "transactionId", f),
                   json_b64(obj, "authenticateServerResponse", f))


@dataclass(frozen=True, slots=True)
class AuthenticateClientResponse:  # §6.5.2.8 (ES9+ flavour: SM-DP+ answers with smdpSigned2)
    transaction_id: bytes
    profile_metadata: bytes   # StoreMetadataRequest (BF25)
    smdp_signed2: bytes
    smdp_signature2: bytes
    smdp_certificate: bytes
    header: ResponseHeader = SUCCESS_HEADER

    @classmethod
    def from_json(cls, body: bytes) -> AuthenticateClientResponse:
        f = AUTHENTICATE_CLIENT
        obj = json_load(body, f)
        header = parse_header(obj, f)
        return cls(
            transaction_id=json_transaction_id(obj, "transactionId", f),
            profile_metadata=json_b64(obj, "profileMetadata", f),
            smdp_signed2=json_b64(obj, "smdpSigned2", f),
            smdp_signature2=json_b64(obj, "smdpSignature2", f),
            smdp_certificate=json_b64(obj, "smdpCertificate", f),
            header=header,
        )

    def to_json(self) -> bytes:
        return json_dump({"header": self.header.to_obj(),
                          "transactionId": transaction_id_hex(self.transaction_id),
                          "profileMetadata": b64(self.profile_metadata),
                          "smdpSigned2": b64(self.smdp_signed2),
                          "smdpSignature2": b64(self.smdp_signature2),
                          "smdpCertificate": b64(self.smdp_certificate)})


@dataclass(frozen=True, slots=True)
class GetBoundProfilePackageRequest:  # §6.5.2.7
    transaction_id: bytes
    prepare_download_response: bytes  # the eUICC's signed PrepareDownloadResponse (BF21)

    def to_json(self) -> bytes:
        return json_dump({"transactionId": transaction_id_hex(self.transaction_id),
                          "prepareDownloadResponse": b64(self.prepare_download_response)})

    @classmethod
    def from_json(cls, body: bytes) -> GetBoundProfilePackageRequest:
        f = GET_BOUND_PROFILE_PACKAGE
        obj = json_load(body, f)
        return cls(json_transaction_id(obj, "transactionId", f),
                   json_b64(obj, "prepareDownloadResponse", f))


@dataclass(frozen=True, slots=True)
class GetBoundProfilePackageResponse:  # §6.5.2.7
    transaction_id: bytes
    bound_profile_package: bytes  # BF36, exact bytes: segmented later without re-encoding
    header: ResponseHeader = SUCCESS_HEADER

    @classmethod
    def from_json(cls, body: bytes) -> GetBoundProfilePackageResponse:
        f = GET_BOUND_PROFILE_PACKAGE
        obj = json_load(body, f)
        header = parse_header(obj, f)
        return cls(json_transaction_id(obj, "transactionId", f),
                   json_b64(obj, "boundProfilePackage", f), header)

    def to_json(self) -> bytes:
        return json_dump({"header": self.header.to_obj(),
                          "transactionId": transaction_id_hex(self.transaction_id),
                          "boundProfilePackage": b64(self.bound_profile_package)})


@dataclass(frozen=True, slots=True)
class HandleNotificationRequest:  # §6.5.2.9
    pending_notification: bytes  # PendingNotification as read from the eUICC (signed)

    def to_json(self) -> bytes:
        return json_dump({"pendingNotification": b64(self.pending_notification)})

    @classmethod
    def from_json(cls, body: bytes) -> HandleNotificationRequest:
        f = HANDLE_NOTIFICATION
        return cls(json_b64(json_load(body, f), "pendingNotification", f))


@dataclass(frozen=True, slots=True)
class CancelSessionRequest:  # §6.5.2.10
    transaction_id: bytes
    cancel_session_response: bytes  # the eUICC's signed CancelSessionResponse (BF41)

    def to_json(self) -> bytes:
        return json_dump({"transactionId": transaction_id_hex(self.transaction_id),
                          "cancelSessionResponse": b64(self.cancel_session_response)})

    @classmethod
    def from_json(cls, body: bytes) -> CancelSessionRequest:
        f = CANCEL_SESSION
        obj = json_load(body, f)
        return cls(json_transaction_id(obj, "transactionId", f),
                   json_b64(obj, "cancelSessionResponse", f))


def parse_header_only(body: bytes, function: str) -> ResponseHeader:
    """A response that carries nothing but the header (cancelSession; handleNotification
    when a server answers 200 with a body instead of 204)."""
    return parse_header(json_load(body, function), function)


def header_only_json(header: ResponseHeader) -> bytes:
    return json_dump({"header": header.to_obj()})
