"""SGP.32 v1.2 compact eUICC responses (minimizeEsipaBytes) made whole again for ES9+.

An IPA that minimizes ESipa bytes leaves out of the eUICC's signed responses what the eIM
already knows; the SM-DP+ only takes the full SGP.22 forms, and the eUICC's signature covers
the full signed structure. So the eIM rebuilds exactly that structure from what it holds and
sends the result on; the SM-DP+'s signature check then proves the rebuild byte-exact.

- CompactAuthenticateResponseOk carrying the full euiccSigned1: the certificates the IPA left
  out are the device's, as the eIM verified them earlier. (The compactEuiccSigned1 variant
  would need the eUICC's whole EUICCInfo2 and is refused.)
- CompactPrepareDownloadResponseOk: EUICCSigned2 = {transactionId of the session, euiccOtpk,
  hashCc}; without euiccOtpk (a retry reusing bppEuiccOtpk) it is refused.
- CompactCancelSessionResponseOk: EuiccCancelSessionSigned = {transactionId, the SM-DP+ OID
  from CERT.DPauth of the session, reason}.

Each function returns the full DER, or None when it cannot be rebuilt. Rebuilt messages are
spliced with gateway.spec.signed (exact bytes under new headers) and decoded once as a check.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import DecodeError
from gateway.spec import codec, signed, tlv
from hil.peers import common

TAG_SIGNATURE = 0x5F37


def _kids(raw: bytes) -> dict[int, bytes]:
    return {c.tag: c.raw_of(raw) for c in tlv.children(raw, tlv.read_single(raw))}


def _retag(raw: bytes, tag: int) -> bytes:
    node = tlv.read_single(raw)
    return signed.wrap(tag, node.value_of(raw))


def _checked(type_name: str, der: bytes) -> bytes | None:
    try:
        codec.decode(type_name, der)
    except DecodeError:
        return None
    return der


def authenticate_server_response(raw: bytes, certs: common.EuiccCertificates | None) -> bytes | None:
    """Full AuthenticateServerResponse (BF38 A0 ...) from a compactAuthenticateResponseOk."""
    parts = _kids(common.raw_child(raw, 0))
    signed1, signature = parts.get(0x30), parts.get(TAG_SIGNATURE)
    if signed1 is None or signature is None:
        return None
    euicc_cert = _retag(parts[0xA1], 0x30) if 0xA1 in parts else (
        common.certificate_der(certs.certificate) if certs is not None else None)
    eum_cert = _retag(parts[0xA2], 0x30) if 0xA2 in parts else (
        common.certificate_der(certs.eum_certificate) if certs is not None else None)
    if euicc_cert is None or eum_cert is None:
        return None
    full = signed.wrap(0xBF38, signed.wrap(0xA0, signed1, signature, euicc_cert, eum_cert))
    return _checked("AuthenticateServerResponse", full)


def prepare_download_response(raw: bytes, value: dict[str, Any], transaction_id: bytes) -> bytes | None:
    """Full PrepareDownloadResponse (BF21 A0 ...) from a compactDownloadResponseOk."""
    compact = value["compactEuiccSigned2"]
    if "euiccOtpk" not in compact:
        return None
    signed2: dict[str, Any] = {"transactionId": transaction_id, "euiccOtpk": compact["euiccOtpk"]}
    if "hashCc" in compact:
        signed2["hashCc"] = compact["hashCc"]
    signature = _kids(common.raw_child(raw, 0)).get(TAG_SIGNATURE)
    if signature is None:
        return None
    full = signed.wrap(0xBF21, signed.wrap(0xA0, codec.encode("EUICCSigned2", signed2), signature))
    return _checked("PrepareDownloadResponse", full)


def cancel_session_response(raw: bytes, value: dict[str, Any], transaction_id: bytes,
                            smdp_oid: str | None) -> bytes | None:
    """Full CancelSessionResponse (BF41 A0 ...) from a compactCancelSessionResponseOk; None when
    it cannot be rebuilt (no reason, or no SM-DP+ OID known for the session the eUICC signed it in)."""
    compact = value["compactEuiccCancelSessionSigned"]
    if "reason" not in compact or smdp_oid is None:
        return None
    data = codec.encode("EuiccCancelSessionSigned", {"transactionId": transaction_id, "smdpOid": smdp_oid,
                                                     "reason": compact["reason"]})
    signature = _kids(common.raw_child(raw, 0)).get(TAG_SIGNATURE)
    if signature is None:
        return None
    full = signed.wrap(0xBF41, signed.wrap(0xA0, data, signature))
    return _checked("CancelSessionResponse", full)
