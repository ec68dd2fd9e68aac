"""ESipa bodies <-> the one value form the eIM works on, for both bindings (SGP.32 §6.1-6.3).

Theory of operation. The eIM's logic works on *normalized* message values: asn1tools values
in which every structure signed by someone else (EuiccPackageResult, PendingNotification,
AuthenticateServerResponse, PrepareDownloadResponse, CancelSessionResponse, EUICCInfo1,
ProfileInstallationResult, certificates) is the exact DER received, as `bytes`. That is what
the JSON binding gives directly (`gateway.spec.esipa_json` keeps those types opaque); for the
ASN.1 binding `normalize_from_ipa` replaces them with slices of the received body, found by
walking its TLVs, so signatures are always checked over the bytes that came in.

Answers are built the other way: the eIM writes `Embedded(type, raw)` where it forwards bytes
it received (serverSigned1, smdpSigned2, the BPP, a signed EuiccPackageRequest). For JSON
they go out as base64 of `raw`; for ASN.1 the value is decoded and the whole message encoded
with the codec, then checked to contain every `raw` unchanged (DER re-encodes DER exactly; a
BER input would be refused here rather than forwarded altered).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import DecodeError, LocalProtocolError
from gateway.spec import codec, esipa, esipa_json, tlv


@dataclass(frozen=True)
class Embedded:
    """Bytes received from elsewhere, to be forwarded unchanged inside an answer."""

    type_name: str
    raw: bytes


def _kids(raw: bytes) -> list[tlv.Tlv]:
    return tlv.children(raw, tlv.read_single(raw))


def _child(raw: bytes, tag: int) -> bytes | None:
    for c in _kids(raw):
        if c.tag == tag:
            return c.raw_of(raw)
    return None


def _items(raw: bytes) -> list[bytes]:
    return [c.raw_of(raw) for c in _kids(raw)]


def _retag(raw: bytes, tag: int) -> bytes:
    node = tlv.read_single(raw)
    value = node.value_of(raw)
    return tlv.header(tag, len(value)) + value


def _only_child(raw: bytes) -> bytes:
    kids = _kids(raw)
    if len(kids) != 1:
        raise DecodeError(f"expected one element under {tlv.read_single(raw).tag:X}")
    return kids[0].raw_of(raw)


def normalize_result(choice: tuple[str, Any], raw: bytes) -> tuple[str, Any]:
    """An EimPackageResult / TransferEimPackageResponse alternative with signed parts as bytes.

    `raw` is the TLV of the alternative itself (BF51, 30, BF52, BF54, ...)."""
    kind, value = choice
    if kind == "euiccPackageResult":
        return kind, _retag(raw, 0xBF51)
    if kind == "ePRAndNotifications":
        epr = _child(raw, 0xBF51)
        notes = _child(raw, 0xA0)
        if epr is None or notes is None:
            raise DecodeError("ePRAndNotifications without its parts")
        return kind, {"euiccPackageResult": epr, "notificationList": _items(notes)}
    if kind == "ipaEuiccDataResponse":
        inner_kind, inner = value
        if inner_kind != "ipaEuiccData":
            return kind, value
        data_raw = _child(raw, 0xA0)
        if data_raw is None:
            raise DecodeError("ipaEuiccData without its content")
        out = dict(inner)
        for tag, key in ((0xA0, "notificationsList"), (0xA2, "euiccPackageResultList")):
            part = _child(data_raw, tag)
            if part is not None:
                out[key] = _items(part)
        for tag, key in ((0xBF20, "euiccInfo1"), (0xBF22, "euiccInfo2")):
            part = _child(data_raw, tag)
            if part is not None:
                out[key] = part
        for tag, key in ((0xA5, "eumCertificate"), (0xA6, "euiccCertificate")):
            part = _child(data_raw, tag)
            if part is not None:
                out[key] = _retag(part, 0x30)
        return kind, (inner_kind, out)
    if kind == "profileDownloadTriggerResult":
        pir = _child(raw, 0xBF37)
        if pir is None:
            return kind, value
        return kind, {**value, "profileDownloadTriggerResultData": ("profileInstallationResult", pir)}
    return kind, value


def normalize_from_ipa(alternative: str, value: Any, raw: bytes) -> Any:
    """The normalized value of one EsipaMessageFromIpaToEim alternative (`raw`: its TLV)."""
    if alternative == "provideEimPackageResult":
        result_raw = next(c.raw_of(raw) for c in _kids(raw) if c.tag != 0x5A)
        return {**value, "eimPackageResult": normalize_result(value["eimPackageResult"], result_raw)}
    if alternative == "handleNotificationEsipa":
        kind, inner = value
        if kind == "pendingNotification":
            return kind, _only_child(_only_child(raw))
        return kind, normalize_from_ipa("provideEimPackageResult", inner, _only_child(raw))
    if alternative == "initiateAuthenticationRequestEsipa":
        info1 = _child(raw, 0xBF20)
        return {**value, "euiccInfo1": info1} if info1 is not None else value
    if alternative == "authenticateClientRequestEsipa":
        return {**value, "authenticateServerResponse": _child(raw, 0xBF38)}
    if alternative == "getBoundProfilePackageRequestEsipa":
        return {**value, "prepareDownloadResponse": _child(raw, 0xBF21)}
    if alternative == "cancelSessionRequestEsipa":
        wrapper = _child(raw, 0xA1)
        if wrapper is None:
            raise DecodeError("CancelSessionRequestEsipa without cancelSessionResponse")
        return {**value, "cancelSessionResponse": _only_child(wrapper)}
    if alternative == "transferEimPackageResponse":
        return normalize_result(value, _only_child(raw))
    return value


def decode_asn1(body: bytes) -> tuple[str, Any]:
    """(alternative, normalized value) of a DER EsipaMessageFromIpaToEim."""
    alternative, value = esipa.decode_from_ipa(body)
    return alternative, normalize_from_ipa(alternative, value, body)


def decode_json(function: str, body: bytes) -> tuple[str, Any]:
    """(alternative, normalized value) of a JSON-binding request of `function`."""
    f = esipa.FUNCTIONS[function]
    return f.request, esipa_json.decode_request(function, body)


def _for_codec(value: Any, embedded: list[bytes]) -> Any:
    if isinstance(value, Embedded):
        embedded.append(value.raw)
        return codec.decode(value.type_name, value.raw)
    if isinstance(value, dict):
        return {k: _for_codec(v, embedded) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_codec(v, embedded) for v in value]
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return (value[0], _for_codec(value[1], embedded))
    return value


def _for_json(value: Any) -> Any:
    if isinstance(value, Embedded):
        return value.raw
    if isinstance(value, dict):
        return {k: _for_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_json(v) for v in value]
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return (value[0], _for_json(value[1]))
    return value


def encode_asn1(alternative: str, value: Any) -> bytes:
    """DER of EsipaMessageFromEimToIpa (alternative, value), forwarded bytes checked unchanged."""
    embedded: list[bytes] = []
    der = codec.encode(esipa.FROM_EIM, (alternative, _for_codec(value, embedded)))
    for raw in embedded:
        if raw not in der:
            raise LocalProtocolError("a forwarded structure would change on re-encoding (BER input?)")
    return der


def encode_json(function: str, value: Any, *, request: bool = False) -> bytes:
    """JSON body of the eIM's answer to `function` (or of its TransferEimPackage request)."""
    if request:
        return esipa_json.encode_request(function, _for_json(value))
    return esipa_json.encode_response(function, _for_json(value))
