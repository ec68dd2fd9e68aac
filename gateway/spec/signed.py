"""Signed data as the exact bytes received: locate it, keep it, splice it into messages.

Theory of operation. A signature covers bytes, not values. Decoding a signed structure and
encoding it again can change those bytes (an extension field a newer eUICC or eIM added is
dropped by a decoder that does not know it; a BER length becomes DER), and the signature
then fails at the far end. So the IPA never re-encodes what someone else signed:

- `Received` keeps a message's raw bytes next to its decoded value: decisions are taken on
  the value, forwarding uses the bytes.
- `element()` and the named helpers find a nested signed element (the EuiccPackageRequest
  in a GetEimPackageResponse, euiccSigned1 in an AuthenticateServerResponse, each
  PendingNotification of a RetrieveNotificationsList response) by walking tags with
  gateway.spec.tlv, and return a slice of the received buffer.
- The `*_request` / `provide_*` builders compose the ESipa messages that carry eUICC-signed
  data by wrapping the exact bytes in new TLV headers (the only place the project writes
  TLV headers by hand: asn1tools cannot embed pre-encoded bytes). Each built message is
  decoded once with the codec as a check, so a builder cannot emit an invalid message.

Tags are those of sgp32.asn / rsp.asn; an ESipa message's outer tag is also its tag in the
wrapper CHOICEs, so a built message is a valid EsipaMessageFromIpaToEim body as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import DecodeError, LocalProtocolError
from gateway.spec import codec, tlv

TAG_EID = 0x5A
TAG_TRANSACTION_ID = 0x80
TAG_EUICC_PACKAGE_REQUEST = 0xBF51
TAG_EUICC_PACKAGE_RESULT = 0xBF51
TAG_IPA_EUICC_DATA = 0xBF52
TAG_PROFILE_DOWNLOAD_TRIGGER = 0xBF54
TAG_AUTHENTICATE_SERVER_RESPONSE = 0xBF38
TAG_PREPARE_DOWNLOAD_RESPONSE = 0xBF21
TAG_CANCEL_SESSION_RESPONSE = 0xBF41
TAG_PROFILE_INSTALLATION_RESULT = 0xBF37
TAG_RETRIEVE_NOTIFICATIONS_LIST = 0xBF2B
TAG_GET_EIM_PACKAGE = 0xBF4F
TAG_TRANSFER_EIM_PACKAGE = 0xBF4E


@dataclass(frozen=True, slots=True)
class Received:
    """A message as received: its exact bytes and its decoded value."""

    type_name: str
    raw: bytes
    value: Any

    @classmethod
    def decode(cls, type_name: str, data: bytes) -> Received:
        raw = bytes(data)
        return cls(type_name, raw, codec.decode(type_name, raw))


def element(raw: bytes, tags: Sequence[int]) -> bytes:
    """The exact bytes of the TLV at a tag path from the outer TLV (see tlv.descend)."""
    return tlv.descend(raw, tags).raw_of(raw)


def _expect_outer(raw: bytes, tags: Iterable[int], what: str) -> tlv.Tlv:
    outer = tlv.read_single(raw)
    allowed = tuple(tags)
    if outer.tag not in allowed:
        raise DecodeError(f"tag {outer.tag:X} is not a {what}", type_name=what, offset=0)
    return outer


def euicc_package_request(message: bytes) -> bytes:
    """The EuiccPackageRequest (BF51) of a GetEimPackageResponse (BF4F), a
    TransferEimPackageRequest (BF4E) or the EuiccPackageRequest itself."""
    outer = _expect_outer(message, (TAG_GET_EIM_PACKAGE, TAG_TRANSFER_EIM_PACKAGE,
                                    TAG_EUICC_PACKAGE_REQUEST), "EuiccPackageRequest carrier")
    if outer.tag == TAG_EUICC_PACKAGE_REQUEST:
        return bytes(message)
    return tlv.child(message, outer, TAG_EUICC_PACKAGE_REQUEST).raw_of(message)


def eim_package(message: bytes) -> bytes:
    """The eIM package (BF51, BF52, BF53 or BF54) inside a GetEimPackageResponse or a
    TransferEimPackageRequest; DecodeError for eimPackageError or any other content."""
    outer = _expect_outer(message, (TAG_GET_EIM_PACKAGE, TAG_TRANSFER_EIM_PACKAGE), "eIM package carrier")
    inner = tlv.children(message, outer)
    if len(inner) != 1 or inner[0].tag not in (0xBF51, 0xBF52, 0xBF53, 0xBF54):
        raise DecodeError("no eIM package in the message", type_name="eIM package", offset=outer.value_start)
    return inner[0].raw_of(message)


def euicc_package_signed(euicc_package_request_raw: bytes) -> bytes:
    """euiccPackageSigned (30 ...) of an EuiccPackageRequest: the data eimSignature covers
    (followed by the association token when one is configured, SGP.32 section 2.11.1)."""
    outer = _expect_outer(euicc_package_request_raw, (TAG_EUICC_PACKAGE_REQUEST,), "EuiccPackageRequest")
    return tlv.child(euicc_package_request_raw, outer, 0x30).raw_of(euicc_package_request_raw)


def euicc_signed1(authenticate_server_response: bytes) -> bytes:
    """euiccSigned1 (30) of an AuthenticateServerResponse (BF38 A0 30 ...)."""
    return element(authenticate_server_response, (TAG_AUTHENTICATE_SERVER_RESPONSE, 0xA0, 0x30))


def euicc_signed2(prepare_download_response: bytes) -> bytes:
    """euiccSigned2 (30) of a PrepareDownloadResponse (BF21 A0 30 ...)."""
    return element(prepare_download_response, (TAG_PREPARE_DOWNLOAD_RESPONSE, 0xA0, 0x30))


def profile_installation_result_data(profile_installation_result: bytes) -> bytes:
    """profileInstallationResultData (BF27) of a ProfileInstallationResult (BF37): what
    euiccSignPIR covers."""
    return element(profile_installation_result, (TAG_PROFILE_INSTALLATION_RESULT, 0xBF27))


def pending_notifications(retrieve_notifications_list_response: bytes) -> list[bytes]:
    """Each PendingNotification, exact bytes, of a RetrieveNotificationsList response
    (BF2B A0 {...}); empty for the error or eIM-result alternatives."""
    return _list_items(retrieve_notifications_list_response, TAG_RETRIEVE_NOTIFICATIONS_LIST, 0xA0)


def euicc_package_results(retrieve_notifications_list_response: bytes) -> list[bytes]:
    """Each EuiccPackageResult (BF51) of a RetrieveNotificationsList response (BF2B A2 {...})."""
    return _list_items(retrieve_notifications_list_response, TAG_RETRIEVE_NOTIFICATIONS_LIST, 0xA2)


def _list_items(raw: bytes, outer_tag: int, list_tag: int) -> list[bytes]:
    outer = _expect_outer(raw, (outer_tag,), f"tag {outer_tag:X} response")
    for c in tlv.children(raw, outer):
        if c.tag == list_tag:
            return [item.raw_of(raw) for item in tlv.children(raw, c)]
    return []


def wrap(tag: int, *parts: bytes) -> bytes:
    """A constructed TLV around parts that are passed through as they are."""
    body = b"".join(parts)
    return tlv.header(tag, len(body)) + body


def retag(raw: bytes, tag: int) -> bytes:
    """The TLV `raw` under another tag (IMPLICIT tagging of a pre-encoded element)."""
    one = tlv.read_single(raw)
    return wrap(tag, one.value_of(raw))


def _checked(type_name: str, built: bytes) -> bytes:
    try:
        codec.decode(type_name, built)
    except DecodeError as exc:
        raise LocalProtocolError(f"built an invalid {type_name}: {exc}") from exc
    return built


def _one(raw: bytes, tag: int, what: str) -> bytes:
    try:
        one = tlv.read_single(raw)
    except DecodeError as exc:
        raise LocalProtocolError(f"{what} is not one TLV: {exc}") from exc
    if one.tag != tag:
        raise LocalProtocolError(f"{what} has tag {one.tag:X}, expected {tag:X}")
    return bytes(raw)


def _eid(eid: bytes | None) -> bytes:
    if eid is None:
        return b""
    if len(eid) != 16:
        raise LocalProtocolError(f"an EID is 16 bytes, not {len(eid)}")
    return wrap(TAG_EID, eid)


def _transaction_id(transaction_id: bytes) -> bytes:
    if not 1 <= len(transaction_id) <= 16:
        raise LocalProtocolError(f"a transactionId is 1 to 16 bytes, not {len(transaction_id)}")
    return wrap(TAG_TRANSACTION_ID, transaction_id)


# --- ESipa messages that carry eUICC-signed data (SGP.32 section 6.3) ---------------------

def authenticate_client_request(transaction_id: bytes, authenticate_server_response: bytes) -> bytes:
    """AuthenticateClientRequestEsipa (BF3B) around the eUICC's AuthenticateServerResponse."""
    return _checked("AuthenticateClientRequestEsipa", wrap(
        0xBF3B, _transaction_id(transaction_id),
        _one(authenticate_server_response, TAG_AUTHENTICATE_SERVER_RESPONSE, "AuthenticateServerResponse")))


def get_bound_profile_package_request(transaction_id: bytes, prepare_download_response: bytes) -> bytes:
    """GetBoundProfilePackageRequestEsipa (BF3A) around the eUICC's PrepareDownloadResponse."""
    return _checked("GetBoundProfilePackageRequestEsipa", wrap(
        0xBF3A, _transaction_id(transaction_id),
        _one(prepare_download_response, TAG_PREPARE_DOWNLOAD_RESPONSE, "PrepareDownloadResponse")))


def cancel_session_request(transaction_id: bytes, cancel_session_response: bytes) -> bytes:
    """CancelSessionRequestEsipa (BF41) around the eUICC's CancelSessionResponse ([1] EXPLICIT)."""
    return _checked("CancelSessionRequestEsipa", wrap(
        0xBF41, _transaction_id(transaction_id),
        wrap(0xA1, _one(cancel_session_response, TAG_CANCEL_SESSION_RESPONSE, "CancelSessionResponse"))))


def handle_notification(pending_notification: bytes) -> bytes:
    """HandleNotificationEsipa (BF3D) carrying one PendingNotification as read from the eUICC."""
    tag = tlv.outer_tag(pending_notification) if pending_notification else 0
    if tag not in (0xBF37, 0x30, 0xA0, 0xA1):
        raise LocalProtocolError(f"tag {tag:X} is not a PendingNotification")
    return _checked("HandleNotificationEsipa", wrap(0xBF3D, wrap(0xA0, pending_notification)))


def provide_eim_package_result(eid: bytes | None, euicc_package_result: bytes) -> bytes:
    """ProvideEimPackageResult (BF50) with the eUICC's EuiccPackageResult (BF51).

    Without `eid` the bytes are also the SGP.32 v1.0 form (there a bare CHOICE), so this is
    what a v1.0 eIM is sent."""
    return _checked("ProvideEimPackageResult", wrap(
        0xBF50, _eid(eid), _one(euicc_package_result, TAG_EUICC_PACKAGE_RESULT, "EuiccPackageResult")))


def provide_epr_and_notifications(eid: bytes | None, euicc_package_result: bytes,
                                  notifications: Sequence[bytes], *, v1_0: bool = False) -> bytes:
    """ProvideEimPackageResult (BF50) with ePRAndNotifications: the result and the pending
    notifications it caused (e.g. the enable/disable notifications).

    `v1_0` writes the SGP.32 v1.0 form for an eIM of that version: no eidValue, and the
    notifications inside a RetrieveNotificationsListResponse (BF2B A0 {...}) instead of [0]."""
    result = _one(euicc_package_result, TAG_EUICC_PACKAGE_RESULT, "EuiccPackageResult")
    if v1_0:
        if eid is not None:
            raise LocalProtocolError("SGP.32 v1.0 ProvideEimPackageResult has no eidValue")
        return wrap(0xBF50, wrap(0x30, result, wrap(TAG_RETRIEVE_NOTIFICATIONS_LIST,
                                                    wrap(0xA0, *notifications))))
    body = wrap(0x30, result, wrap(0xA0, *notifications))
    return _checked("ProvideEimPackageResult", wrap(0xBF50, _eid(eid), body))


def provide_ipa_euicc_data_response(eid: bytes | None, ipa_euicc_data_response: bytes) -> bytes:
    """ProvideEimPackageResult (BF50) with an IpaEuiccDataResponse (BF52)."""
    return _checked("ProvideEimPackageResult", wrap(
        0xBF50, _eid(eid), _one(ipa_euicc_data_response, TAG_IPA_EUICC_DATA, "IpaEuiccDataResponse")))


def provide_profile_download_trigger_result(eid: bytes | None, result: bytes) -> bytes:
    """ProvideEimPackageResult (BF50) with a ProfileDownloadTriggerResult (BF54)."""
    return _checked("ProvideEimPackageResult", wrap(
        0xBF50, _eid(eid), _one(result, TAG_PROFILE_DOWNLOAD_TRIGGER, "ProfileDownloadTriggerResult")))


def transfer_eim_package_response(euicc_package_result: bytes) -> bytes:
    """TransferEimPackageResponse (BF4E) answering a pushed package with its EuiccPackageResult."""
    return _checked("TransferEimPackageResponse", wrap(
        0xBF4E, _one(euicc_package_result, TAG_EUICC_PACKAGE_RESULT, "EuiccPackageResult")))


# IpaEuiccData components in declaration order (DER writes SEQUENCE members in this order)
_IPA_EUICC_DATA_ORDER = (0xA0, 0x81, 0xA2, 0xBF20, 0xBF22, 0x83, 0x84, 0xA5, 0xA6, 0x87, 0xA8, 0xA9)


def ipa_euicc_data_response(*, notifications: Sequence[bytes] | None = None,
                            default_smdp_address: str | None = None,
                            euicc_package_results: Sequence[bytes] | None = None,
                            euicc_info1: bytes | None = None, euicc_info2: bytes | None = None,
                            root_smds_address: str | None = None,
                            eum_certificate: bytes | None = None,
                            euicc_certificate: bytes | None = None,
                            eim_transaction_id: bytes | None = None,
                            rest: Any = None) -> bytes:
    """IpaEuiccDataResponse (BF52 A0 {...}) assembled by the IPA from what the eUICC returned,
    every eUICC-provided element spliced as received. `rest` is a value of the remaining
    IPA-composed fields (associationToken, ipaCapabilities, deviceInfo) encoded by the codec;
    DER order (the declaration order of IpaEuiccData) is restored after splicing."""
    parts: list[bytes] = []
    if notifications is not None:
        parts.append(wrap(0xA0, *notifications))
    if default_smdp_address is not None:
        parts.append(wrap(0x81, default_smdp_address.encode("utf-8")))
    if euicc_package_results is not None:
        parts.append(wrap(0xA2, *euicc_package_results))
    if euicc_info1 is not None:
        parts.append(_one(euicc_info1, 0xBF20, "EUICCInfo1"))
    if euicc_info2 is not None:
        parts.append(_one(euicc_info2, 0xBF22, "EUICCInfo2"))
    if root_smds_address is not None:
        parts.append(wrap(0x83, root_smds_address.encode("utf-8")))
    if eum_certificate is not None:
        parts.append(retag(_one(eum_certificate, 0x30, "EUM certificate"), 0xA5))
    if euicc_certificate is not None:
        parts.append(retag(_one(euicc_certificate, 0x30, "eUICC certificate"), 0xA6))
    if eim_transaction_id is not None:
        parts.append(wrap(0x87, eim_transaction_id))
    if rest:
        encoded = codec.encode("IpaEuiccData", dict(rest))
        parts.extend(c.raw_of(encoded) for c in tlv.children(encoded, tlv.read_single(encoded)))
    parts.sort(key=lambda p: _IPA_EUICC_DATA_ORDER.index(tlv.outer_tag(p)))
    return _checked("IpaEuiccDataResponse", wrap(0xBF52, wrap(0xA0, *parts)))


