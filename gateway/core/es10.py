"""ES10b requests the IPA sends and the parts of responses it reads (SGP.22 §5.7, SGP.32 §5.9).

Theory of operation. Requests without signed content are encoded, and responses checked
and decoded, with the codec's ES10b table (gateway.spec.es10b: function name -> types and
tags). Requests that carry server-signed structures (AuthenticateServer, PrepareDownload)
are assembled from the exact TLVs the server sent (gateway.spec.signed.wrap): decoding and
re-encoding them could change a byte and break the eUICC's signature check (DESIGN 8).
Readers return the exact bytes of signed responses and decode only what the IPA decides on.
Every decoding failure is `DecodeError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import DecodeError
from gateway.spec import codec, signed, tlv
from gateway.spec.es10b import decode_response, encode_request

TAG_GET_EUICC_CHALLENGE = 0xBF2E
TAG_GET_EUICC_INFO1 = 0xBF20
TAG_GET_EUICC_INFO2 = 0xBF22
TAG_AUTHENTICATE_SERVER = 0xBF38
TAG_PREPARE_DOWNLOAD = 0xBF21
TAG_CANCEL_SESSION = 0xBF41
TAG_RETRIEVE_NOTIFICATIONS_LIST = 0xBF2B
TAG_REMOVE_NOTIFICATION = 0xBF30
TAG_LOAD_EUICC_PACKAGE = 0xBF51
TAG_IPA_EUICC_DATA = 0xBF52
TAG_GET_EIM_CONFIGURATION_DATA = 0xBF55
TAG_ADD_INITIAL_EIM = 0xBF57
TAG_PROFILE_INSTALLATION_RESULT = 0xBF37

CANCEL_REASON = {  # CancelSessionReason, SGP.22 §5.7.14
    "endUserRejection": 0, "postponed": 1, "timeout": 2, "pprNotAllowed": 3,
    "metadataMismatch": 4, "loadBppExecutionError": 5, "undefinedReason": 127,
}


def get_euicc_challenge() -> bytes:  # SGP.22 §5.7.7
    return encode_request("GetEuiccChallenge", {})


def get_euicc_info1() -> bytes:  # SGP.22 §5.7.8
    return encode_request("GetEUICCInfo1", {})


def get_euicc_info2() -> bytes:  # SGP.22 §5.7.8
    return encode_request("GetEUICCInfo2", {})


def get_eim_configuration_data() -> bytes:  # SGP.32 §5.9.18
    return encode_request("GetEimConfigurationData", {})


def add_initial_eim(eim_configuration_data: list[dict[str, Any]]) -> bytes:  # SGP.32 §5.9.x
    return encode_request("AddInitialEim", {"eimConfigurationDataList": eim_configuration_data})


def ipa_euicc_data_request(tag_list: bytes) -> bytes:  # SGP.32 §5.9.x, IpaEuiccDataRequest
    return encode_request("IpaEuiccData", {"tagList": tag_list})


def retrieve_notifications_list(*, euicc_package_results: bool = False,
                                seq_number: int | None = None) -> bytes:  # SGP.22 §5.7.10, SGP.32
    value: dict[str, Any] = {}
    if euicc_package_results:
        value["searchCriteria"] = ("euiccPackageResults", None)
    elif seq_number is not None:
        value["searchCriteria"] = ("seqNumber", seq_number)
    return encode_request("RetrieveNotificationsList", value)


def remove_notification_from_list(seq_number: int) -> bytes:  # SGP.22 §5.7.11
    return encode_request("RemoveNotificationFromList", {"seqNumber": seq_number})


def cancel_session(transaction_id: bytes, reason: str) -> bytes:  # SGP.22 §5.7.14
    return encode_request("CancelSession", {"transactionId": transaction_id,
                                                 "reason": CANCEL_REASON[reason]})


def ctx_params1(matching_id: str | None, device_info: dict[str, Any]) -> bytes:
    value: dict[str, Any] = {"deviceInfo": device_info}
    if matching_id is not None:
        value["matchingId"] = matching_id
    return codec.encode("CtxParams1", ("ctxParamsForCommonAuthentication", value))


def authenticate_server(server_signed1: bytes, server_signature1: bytes, euicc_ci_pkid: bytes,
                        server_certificate: bytes, ctx_params: bytes) -> bytes:  # SGP.22 §5.7.13
    """From the exact TLVs of InitiateAuthentication's answer (tags 30, 5F37, 04, 30)."""
    return signed.wrap(TAG_AUTHENTICATE_SERVER, server_signed1, server_signature1, euicc_ci_pkid,
                 server_certificate, ctx_params)


def prepare_download(smdp_signed2: bytes, smdp_signature2: bytes, smdp_certificate: bytes,
                     hash_cc: bytes | None = None) -> bytes:  # SGP.22 §5.7.5
    return signed.wrap(TAG_PREPARE_DOWNLOAD, smdp_signed2, smdp_signature2,
                 hash_cc if hash_cc is not None else b"", smdp_certificate)


def ensure_tlv(data: bytes, tag: int) -> bytes:
    """`data` as a full TLV with `tag`: ES9+ JSON carries full TLVs, some servers only values."""
    try:
        if data and tlv.read_single(data).tag == tag:
            return data
    except DecodeError:
        pass
    return tlv.header(tag, len(data)) + data


# --- responses ------------------------------------------------------------------------------


def outer(data: bytes, expected: int, what: str) -> tlv.Tlv:
    node = tlv.read_single(data)
    if node.tag != expected:
        raise DecodeError(f"{what}: tag {node.tag:X}, expected {expected:X}", type_name=what)
    return node


def euicc_challenge(data: bytes) -> bytes:
    value = decode_response("GetEuiccChallenge", data)
    return bytes(value["euiccChallenge"])


@dataclass(frozen=True, slots=True)
class SignedAnswer:
    """A signed ES10b response: exact bytes, whether it is the Ok alternative, its error code."""

    raw: bytes
    ok: bool
    error: int | None = None
    transaction_id: bytes | None = None


def authenticate_server_response(data: bytes) -> SignedAnswer:
    value = decode_response("AuthenticateServer", data)
    kind, inner = value
    if kind == "authenticateResponseOk":
        return SignedAnswer(data, True, None, bytes(inner["euiccSigned1"]["transactionId"]))
    if kind == "authenticateResponseError":
        return SignedAnswer(data, False, int(inner["authenticateErrorCode"]), bytes(inner["transactionId"]))
    return SignedAnswer(data, kind.startswith("compact"), None)


def prepare_download_response(data: bytes) -> SignedAnswer:
    kind, inner = decode_response("PrepareDownload", data)
    if kind == "downloadResponseOk":
        return SignedAnswer(data, True, None, bytes(inner["euiccSigned2"]["transactionId"]))
    if kind == "downloadResponseError":
        return SignedAnswer(data, False, int(inner["downloadErrorCode"]), bytes(inner["transactionId"]))
    return SignedAnswer(data, kind.startswith("compact"), None)


def cancel_session_response(data: bytes) -> SignedAnswer:
    kind, inner = decode_response("CancelSession", data)
    if kind == "cancelSessionResponseError":
        return SignedAnswer(data, False, int(inner))
    return SignedAnswer(data, True)


@dataclass(frozen=True, slots=True)
class InstallResult:
    raw: bytes
    success: bool
    seq_number: int
    notification_address: str
    iccid: bytes | None
    transaction_id: bytes
    error_reason: int | None


def profile_installation_result(data: bytes) -> InstallResult:
    value = decode_response("LoadBoundProfilePackage", data)
    pir = value["profileInstallationResultData"]
    meta = pir["notificationMetadata"]
    kind, inner = pir["finalResult"]
    return InstallResult(
        raw=data, success=kind == "successResult", seq_number=int(meta["seqNumber"]),
        notification_address=str(meta["notificationAddress"]),
        iccid=bytes(meta["iccid"]) if "iccid" in meta else None,
        transaction_id=bytes(pir["transactionId"]),
        error_reason=int(inner["errorReason"]) if kind == "errorResult" else None)


@dataclass(frozen=True, slots=True)
class Notification:
    """One pending notification as read from the eUICC: exact signed bytes + where it goes."""

    seq_number: int
    address: str
    raw: bytes
    event: str   # "install" | "enable" | "disable" | "delete" | "other"
    iccid: bytes | None = None


_EVENT_BITS = ("install", "enable", "disable", "delete")


def _event_name(bits: tuple[bytes, int]) -> str:
    data, n = bits
    for i, name in enumerate(_EVENT_BITS):
        if i < n and data[i // 8] & (0x80 >> (i % 8)):
            return name
    return "other"


def notification_of(raw: bytes) -> Notification:
    """Read a PendingNotification given as exact bytes: BF37 or 30, or the SGP.32 compact
    forms (A0/A1) an eUICC makes for an eIM that asked for fewer bytes. A compact installation
    result carries no address: it goes to the eIM (address "")."""
    kind, inner = codec.decode("PendingNotification", raw)
    if kind == "profileInstallationResult":
        pir = profile_installation_result(raw)
        return Notification(pir.seq_number, pir.notification_address, raw, "install", pir.iccid)
    if kind == "compactProfileInstallationResult":
        return Notification(int(inner["compactProfileInstallationResultData"]["seqNumber"]), "", raw, "install")
    meta = inner["tbsOtherNotification"]
    return Notification(int(meta["seqNumber"]), str(meta["notificationAddress"]), raw,
                        _event_name(meta["profileManagementOperation"]),
                        bytes(meta["iccid"]) if "iccid" in meta else None)


@dataclass(frozen=True, slots=True)
class PackageResult:
    """An EuiccPackageResult (BF51) held by the eUICC until the eIM acknowledged it."""

    raw: bytes
    eim_id: str
    seq_number: int | None
    transaction_id: bytes | None
    counter: int | None


def euicc_package_result(raw: bytes) -> PackageResult:
    kind, inner = decode_response("LoadEuiccPackage", raw)
    if kind == "euiccPackageResultSigned":
        d = inner["euiccPackageResultDataSigned"]
        return PackageResult(raw, d["eimId"], int(d["seqNumber"]), _opt_bytes(d, "eimTransactionId"),
                             int(d["counterValue"]))
    if kind == "euiccPackageErrorSigned":
        d = inner["euiccPackageErrorDataSigned"]
        return PackageResult(raw, d["eimId"], None, _opt_bytes(d, "eimTransactionId"), int(d["counterValue"]))
    return PackageResult(raw, inner["eimId"], None, _opt_bytes(inner, "eimTransactionId"), None)


def package_result_changes_profile(raw: bytes) -> bool:
    """Did this result enable or disable a Profile (so the device must refresh)?"""
    kind, inner = decode_response("LoadEuiccPackage", raw)
    if kind != "euiccPackageResultSigned":
        return False
    for name, code in inner["euiccPackageResultDataSigned"]["euiccResult"]:
        if name in ("enableResult", "disableResult", "rollbackResult") and code == 0:
            return True
    return False


def _opt_bytes(d: dict[str, Any], key: str) -> bytes | None:
    return bytes(d[key]) if key in d else None


@dataclass(frozen=True, slots=True)
class Retrieved:
    """A RetrieveNotificationsListResponse: notifications and package results (exact bytes),
    and the items that could not be read (kept out, reported, never dropped from the eUICC)."""

    notifications: list[Notification]
    package_results: list[PackageResult]
    unreadable: list[bytes]


def retrieved_list(data: bytes) -> Retrieved:
    node = outer(data, TAG_RETRIEVE_NOTIFICATIONS_LIST, "RetrieveNotificationsListResponse")
    out = Retrieved([], [], [])
    for alt in tlv.children(data, node):
        if alt.tag == 0x81:
            raise DecodeError("notificationsListResultError", type_name="RetrieveNotificationsListResponse")
        for c in tlv.children(data, alt) if alt.tag in (0xA0, 0xA2) else []:
            item = c.raw_of(data)
            try:
                if alt.tag == 0xA0:
                    out.notifications.append(notification_of(item))
                else:
                    out.package_results.append(euicc_package_result(signed.retag(item, 0xBF51)))
            except (DecodeError, KeyError, TypeError, ValueError):
                out.unreadable.append(item)
    return out


def eim_configurations(data: bytes) -> list[dict[str, Any]]:
    value = decode_response("GetEimConfigurationData", data)
    return list(value.get("eimConfigurationDataList", []))


def remove_status(data: bytes) -> int:
    return int(decode_response("RemoveNotificationFromList", data)["deleteNotificationStatus"])


def default_smdp_address(data: bytes) -> str | None:
    """defaultSmdpAddress of an IpaEuiccDataResponse, if the eUICC has one."""
    try:
        kind, value = decode_response("IpaEuiccData", data)
    except DecodeError:
        return None
    if kind != "ipaEuiccData":
        return None
    address = value.get("defaultSmdpAddress")
    return str(address) if address else None
