"""Admin JSON -> eIM package contents (SGP.32 v1.2 §2.11.1.1 PSMOs, §2.11.1.2 eCOs, §2.11.2-3).

Each operation is a JSON object with "op" naming it as in the spec:

    PSMO  {"op": "enable", "iccid": "8949...", "rollback": true?}
          {"op": "disable" | "delete" | "setFallbackAttribute", "iccid": "..."}
          {"op": "listProfileInfo", "iccid"?: "...", "profileClass"?: 2, "tagList"?: "5A9F70"}
          {"op": "getRAT"} | {"op": "unsetFallbackAttribute"}
          {"op": "configureImmediateEnable", "immediateEnableFlag"?: true,
           "defaultSmdpOid"?: "2.999.10", "defaultSmdpAddress"?: "host:port"}
          {"op": "setDefaultDpAddress", "defaultDpAddress": "host:port"}
    eCO   {"op": "addEim" | "updateEim", <EimConfigurationData>} with keys eimId, eimFqdn,
           eimIdType, counterValue, associationToken (true: ask for one), eimPublicKey (base64
           SubjectPublicKeyInfo DER), eimCertificate (base64 DER), trustedCertificateTls
           (base64 DER), eimSupportedProtocol ("10100"), euiccCiPKId (hex),
           indirectProfileDownload (true); {"self": true} fills in this eIM's own data
          {"op": "deleteEim", "eimId": "..."} | {"op": "listEim"}

Each returns the asn1tools value of one Psmo / Eco alternative; a bad operation is an
AdminError naming it.
"""

from __future__ import annotations

from typing import Any

from gateway.spec import codec
from hil.peers.common import AdminError, field_b64, field_hex, field_int, field_str, iccid_to_bytes

PSMOS = ("enable", "disable", "delete", "listProfileInfo", "getRAT", "configureImmediateEnable",
         "setFallbackAttribute", "unsetFallbackAttribute", "setDefaultDpAddress")
ECOS = ("addEim", "deleteEim", "updateEim", "listEim")


def _text_bits(text: str) -> tuple[bytes, int]:
    if not text or any(c not in "01" for c in text):
        raise AdminError(f"a bit string is made of 0 and 1, got {text!r}")
    data = bytearray((len(text) + 7) // 8)
    for i, c in enumerate(text):
        if c == "1":
            data[i // 8] |= 0x80 >> (i % 8)
    return bytes(data), len(text)


def psmo(op: dict[str, Any]) -> tuple[str, Any]:
    name = field_str(op, "op")
    if name == "enable":
        value: dict[str, Any] = {"iccid": iccid_to_bytes(field_str(op, "iccid"))}
        if op.get("rollback"):
            value["rollbackFlag"] = None
        return ("enable", value)
    if name in ("disable", "delete", "setFallbackAttribute"):
        return (name, {"iccid": iccid_to_bytes(field_str(op, "iccid"))})
    if name == "listProfileInfo":
        request: dict[str, Any] = {}
        if "iccid" in op:
            request["searchCriteria"] = ("iccid", iccid_to_bytes(field_str(op, "iccid")))
        elif "profileClass" in op:
            request["searchCriteria"] = ("profileClass", field_int(op, "profileClass"))
        if "tagList" in op:
            request["tagList"] = field_hex(op, "tagList")
        return ("listProfileInfo", request)
    if name in ("getRAT", "unsetFallbackAttribute"):
        return (name, {})
    if name == "configureImmediateEnable":
        config: dict[str, Any] = {}
        if op.get("immediateEnableFlag"):
            config["immediateEnableFlag"] = None
        if "defaultSmdpOid" in op:
            config["defaultSmdpOid"] = field_str(op, "defaultSmdpOid")
        if "defaultSmdpAddress" in op:
            config["defaultSmdpAddress"] = field_str(op, "defaultSmdpAddress")
        return ("configureImmediateEnable", config)
    if name == "setDefaultDpAddress":
        return ("setDefaultDpAddress", {"defaultDpAddress": field_str(op, "defaultDpAddress")})
    raise AdminError(f"unknown PSMO {name!r} (one of {', '.join(PSMOS)})")


def eim_configuration_data(op: dict[str, Any]) -> dict[str, Any]:
    """EimConfigurationData value from its admin JSON form (see the module docstring)."""
    data: dict[str, Any] = {"eimId": field_str(op, "eimId")}
    if "eimFqdn" in op:
        data["eimFqdn"] = field_str(op, "eimFqdn")
    if "eimIdType" in op:
        data["eimIdType"] = field_int(op, "eimIdType")
    if "counterValue" in op:
        data["counterValue"] = field_int(op, "counterValue")
    if op.get("associationToken") is True:
        data["associationToken"] = 0
    elif "associationToken" in op and op["associationToken"] is not False:
        data["associationToken"] = field_int(op, "associationToken")
    if "eimPublicKey" in op:
        data["eimPublicKeyData"] = ("eimPublicKey", _spki(field_b64(op, "eimPublicKey")))
    elif "eimCertificate" in op:
        data["eimPublicKeyData"] = ("eimCertificate", field_b64(op, "eimCertificate"))
    if "trustedCertificateTls" in op:
        data["trustedPublicKeyDataTls"] = ("trustedCertificateTls", field_b64(op, "trustedCertificateTls"))
    if "eimSupportedProtocol" in op:
        data["eimSupportedProtocol"] = _text_bits(field_str(op, "eimSupportedProtocol"))
    if "euiccCiPKId" in op:
        data["euiccCiPKId"] = field_hex(op, "euiccCiPKId")
    if op.get("indirectProfileDownload"):
        data["indirectProfileDownload"] = None
    return data


def _spki(der: bytes) -> Any:
    try:
        return codec.decode("SubjectPublicKeyInfo", der)
    except Exception as exc:  # DecodeError: reported to the admin caller
        raise AdminError(f"eimPublicKey is not a SubjectPublicKeyInfo: {exc}") from None


def eco(op: dict[str, Any], own: dict[str, Any]) -> tuple[str, Any]:
    name = field_str(op, "op")
    if name in ("addEim", "updateEim"):
        data = own if op.get("self") else eim_configuration_data(op)
        return (name, data)
    if name == "deleteEim":
        return ("deleteEim", {"eimId": field_str(op, "eimId")})
    if name == "listEim":
        return ("listEim", {})
    raise AdminError(f"unknown eCO {name!r} (one of {', '.join(ECOS)})")


IPA_EUICC_DATA_TAGS = {
    "notificationsList": "A0", "defaultSmdpAddress": "81", "euiccPackageResultList": "A2",
    "euiccInfo1": "BF20", "euiccInfo2": "BF22", "rootSmdsAddress": "83", "associationToken": "84",
    "eumCertificate": "A5", "euiccCertificate": "A6", "ipaCapabilities": "A8", "deviceInfo": "A9",
}


def ipa_euicc_data_request(obj: dict[str, Any], transaction_id: bytes) -> dict[str, Any]:
    """IpaEuiccDataRequest value: {"tags": ["euiccCertificate", "A0", ...], "ciPKId"?: hex}."""
    tags = obj.get("tags", ["eumCertificate", "euiccCertificate", "euiccInfo2"])
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
        raise AdminError("'tags' must be a non-empty list of IpaEuiccData field names or hex tags")
    try:
        tag_list = b"".join(bytes.fromhex(IPA_EUICC_DATA_TAGS[t] if t in IPA_EUICC_DATA_TAGS else t) for t in tags)
    except ValueError:
        raise AdminError(f"unknown IpaEuiccData tags in {tags}") from None
    value: dict[str, Any] = {"tagList": tag_list, "eimTransactionId": transaction_id}
    if "ciPKId" in obj:
        value["euiccCiPKIdentifierToBeUsed"] = field_hex(obj, "ciPKId")
    return value


def profile_download_trigger(obj: dict[str, Any], transaction_id: bytes) -> dict[str, Any]:
    """ProfileDownloadTriggerRequest value: {"activationCode": "1$host$id"} | {"contactDefaultSmdp": true}
    | {"contactSmds": "host"?}."""
    if "activationCode" in obj:
        data: tuple[str, Any] = ("activationCode", field_str(obj, "activationCode"))
    elif obj.get("contactDefaultSmdp"):
        data = ("contactDefaultSmdp", None)
    elif "contactSmds" in obj:
        smds = obj["contactSmds"]
        data = ("contactSmds", {"smdsAddress": smds} if isinstance(smds, str) else {})
    else:
        raise AdminError("a download needs activationCode, contactDefaultSmdp or contactSmds")
    return {"profileDownloadData": data, "eimTransactionId": transaction_id}
