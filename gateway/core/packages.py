"""eIM packages on the IPA side: what arrived, its idempotency key, the result to return.

Theory of operation. A package reaches the IPA inside a GetEimPackageResponse (poll) or a
TransferEimPackageRequest (push), or bare; `classify` unwraps it with the TLV walker (never
re-encoding: an EuiccPackageRequest is signed) and names the procedure that runs it, or
returns the EimAcknowledgements it carries. `package_key` is the idempotency key the inbox
and the duplicate check use: eimId + eimTransactionId, else a hash of the exact bytes.
`result_message` builds the ProvideEimPackageResult for a finished procedure by splicing
the eUICC's signed bytes (gateway.spec.signed) and says which sequence numbers the eIM's
acknowledgement lets the IPA remove from the eUICC. `get_eim_package_request` builds the
poll, with notifyStateChange and rPLMN when the device's network changed (SGP.32 v1.2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from gateway.core.procedures.base import Finish, Procedure
from gateway.core.procedures.download import Download, trigger_result
from gateway.core.procedures.eim_data import EimData
from gateway.core.procedures.eim_package import EimPackage, error_result, package_facts
from gateway.errors import DecodeError
from gateway.spec import codec, esipa, signed, tlv

TAG_EIM_ACKNOWLEDGEMENTS = 0xBF53
KIND_BY_TAG = {0xBF51: EimPackage.KIND, 0xBF52: EimData.KIND, 0xBF54: Download.KIND}
ACKNOWLEDGEMENTS = "acknowledgements"


def classify(raw: bytes) -> tuple[str, bytes]:
    """(procedure kind or ACKNOWLEDGEMENTS, the package's exact bytes); DecodeError otherwise."""
    outer = tlv.outer_tag(raw)
    package = signed.eim_package(raw) if outer in (0xBF4E, 0xBF4F) else raw
    tlv.read_single(package)
    tag = tlv.outer_tag(package)
    if tag == TAG_EIM_ACKNOWLEDGEMENTS:
        return ACKNOWLEDGEMENTS, package
    kind = KIND_BY_TAG.get(tag)
    if kind is None:
        raise DecodeError(f"tag {tag:X} is not an eIM package", type_name="eIM package")
    return kind, package


def acknowledged_seqs(package: bytes) -> list[int]:
    return [int(v) for v in codec.decode("EimAcknowledgements", package)]


def transaction_id(package: bytes) -> bytes | None:
    tag = tlv.outer_tag(package)
    if tag == 0xBF51:
        tid = package_facts(package)["tid"]
    elif tag in (0xBF52, 0xBF54):
        type_name = "IpaEuiccDataRequest" if tag == 0xBF52 else "ProfileDownloadTriggerRequest"
        tid = codec.decode(type_name, package).get("eimTransactionId")
    else:
        tid = None
    return bytes(tid) if tid is not None else None


def package_key(eim_id: str, package: bytes) -> str:
    """Idempotency key of an eIM package: eimId + eimTransactionId, else a hash of its bytes.
    The same strings as the store's inbox keys (gateway.store.inbox.transaction_key and
    package_key), so a pushed package and its inbox entry are one key."""
    try:
        tid = transaction_id(package)
    except DecodeError:
        tid = None
    if tid is not None:
        return f"eim:{eim_id}/tx:{tid.hex()}"
    return "sha256:" + hashlib.sha256(package).hexdigest()


def result_message(eid: bytes, proc: Procedure, finish: Finish,
                   held_notifications: Sequence[tuple[bytes, int]] = ()) -> tuple[bytes, list[int]]:
    """The ProvideEimPackageResult for `proc`'s package and the sequence numbers its
    acknowledgement removes. `held_notifications` (exact bytes, seqNumber) caused by an
    EuiccPackageRequest travel with its result as ePRAndNotifications (SGP.32 §6.3)."""
    tid = proc.ctx.get("tid")
    tid_bytes = bytes(tid) if tid is not None else None
    if isinstance(proc, EimPackage):
        epr = finish.result.get("epr")
        if not isinstance(epr, bytes):
            error = finish.result.get("error")
            value = codec.decode("EimPackageResultResponseError",
                                 error if isinstance(error, bytes) else error_result(tid_bytes))
            return codec.encode("ProvideEimPackageResult", {
                "eidValue": eid, "eimPackageResult": ("eimPackageResultResponseError", value)}), []
        seq = finish.result.get("seq")
        seqs = [seq] if isinstance(seq, int) else []
        if held_notifications:
            notes = [raw for raw, _ in held_notifications]
            seqs += [n for _, n in held_notifications]
            return signed.provide_epr_and_notifications(eid, epr, notes), seqs
        return signed.provide_eim_package_result(eid, epr), seqs
    if isinstance(proc, EimData):
        data = finish.result.get("data")
        if not isinstance(data, bytes):
            err: dict[str, Any] = {"ipaEuiccDataErrorCode": 127}
            if tid_bytes is not None:
                err["eimTransactionId"] = tid_bytes
            data = codec.encode("IpaEuiccDataResponse", ("ipaEuiccDataResponseError", err))
        return signed.provide_ipa_euicc_data_response(eid, data), []
    return signed.provide_profile_download_trigger_result(eid, trigger_result(tid_bytes, finish)), []


def plmn_bytes(plmn: str) -> bytes | None:
    """rPLMN as 3GPP TS 24.008 §10.5.1.3 (MCC/MNC nibbles) from "MCCMNC" digits."""
    if not plmn.isdigit() or len(plmn) not in (5, 6):
        return None
    d = [int(c) for c in plmn[:3]]
    m = [int(c) for c in plmn[3:]]
    mnc3 = m[2] if len(m) == 3 else 0xF
    return bytes([d[1] << 4 | d[0], mnc3 << 4 | d[2], m[1] << 4 | m[0]])


STATE_CHANGE_CAUSES = {  # StateChangeCause, SGP.32 v1.2
    "otherEim": 0, "fallback": 1, "emergencyProfile": 2, "local": 3, "reset": 4,
    "immediateEnableProfile": 5, "deviceChange": 6, "undefined": 127,
}


def get_eim_package_request(eid: bytes, plmn: str | None, state_changed: bool,
                            cause: str | None = None) -> bytes:
    """ESipa GetEimPackageRequest (SGP.32 v1.2 §6.3), DER of EsipaMessageFromIpaToEim."""
    value: dict[str, Any] = {"eidValue": eid}
    if state_changed or cause is not None:
        value["notifyStateChange"] = None
        if cause is not None:
            value["stateChangeCause"] = STATE_CHANGE_CAUSES.get(cause, 127)
        rplmn = plmn_bytes(plmn or "")
        if rplmn is not None:
            value["rPLMN"] = rplmn
    return esipa.encode_from_ipa("getEimPackageRequest", value)
