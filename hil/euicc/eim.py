"""SGP.32 eIM functions of the eUICC: eIM configuration, LoadEuiccPackage, GetCerts, IpaEuiccData.

Theory of operation. The eUICC keeps one `EimConfig` per associated eIM (AddInitialEim, then
the addEim/updateEim/deleteEim eCOs). An EuiccPackageRequest (SGP.32 §2.11.1) is accepted
only when, in this order:

1. its eimId names an associated eIM and eimSignature verifies with that eIM's public key
   over the exact euiccPackageSigned bytes received (+ association token, `signed_data`);
   otherwise the answer is an *unsigned* error (the request cannot be trusted);
2. eidValue is this eUICC's EID (else signed error invalidEid);
3. counterValue is greater than the last one accepted from that eIM (else replayError) and
   in range (else counterValueOutOfRange); the new value is stored before anything runs.

Then every PSMO (or eCO) runs in order, stopping after the first that fails, and the
eUICC answers a signed EuiccPackageResult (euiccSignEPR over euiccPackageResultDataSigned
+ association token), which it also keeps, with a sequence number, until the IPA removes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from gateway.errors import DecodeError
from gateway.spec import codec, tlv
from hil import rspcrypto
from hil.euicc import profiles, signed_data
from hil.euicc.dispatch import es10
from hil.euicc.info import euicc_info1_der, euicc_info2_der, has_bit
from hil.euicc.notifications import package_results, profile_notifications, wrap, EVENT_BITS
from hil.euicc.state import EimConfig, Notification

if TYPE_CHECKING:
    from hil.euicc.euicc import SoftEuicc

MAX_COUNTER = 0x7FFFFF
MAX_EIMS = 8

ADD_OK = 0
ADD_INSUFFICIENT_MEMORY = 1
ADD_ASSOCIATED_EIM_EXISTS = 2
ADD_CI_PK_UNKNOWN = 3
ADD_COUNTER_OUT_OF_RANGE = 6
ADD_COMMAND_ERROR = 7

ERR_INVALID_EID = 3
ERR_REPLAY = 4
ERR_COUNTER_OUT_OF_RANGE = 6
ERR_ECALL_ACTIVE = 104


# --- eIM configuration ------------------------------------------------------------------------


class _AddRefused(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _public_key_data(euicc: SoftEuicc, choice: tuple[str, Any], ci_pkid: bytes | None) -> tuple[bytes | None, bytes | None]:
    """(SubjectPublicKeyInfo DER, certificate DER) of an eimPublicKeyData / trustedPublicKeyDataTls."""
    kind, value = choice
    if kind in ("eimPublicKey", "trustedEimPkTls"):
        spki = codec.encode("SubjectPublicKeyInfo", value)
        try:
            load_der_public_key(spki)
        except ValueError as exc:
            raise _AddRefused(ADD_COMMAND_ERROR) from exc
        return spki, None
    try:
        cert = x509.load_der_x509_certificate(value)
    except ValueError as exc:
        raise _AddRefused(ADD_COMMAND_ERROR) from exc
    if kind == "eimCertificate":
        issuer = rspcrypto.authority_key_identifier(cert)
        ci = euicc.identity.ci_for(ci_pkid if ci_pkid is not None else (issuer or b""))
        if ci is None:
            raise _AddRefused(ADD_CI_PK_UNKNOWN)
        try:
            rspcrypto.verify_chain(cert, [], ci)
        except rspcrypto.CertificateInvalid as exc:
            raise _AddRefused(ADD_CI_PK_UNKNOWN) from exc
    return None, value


def eim_config_from(euicc: SoftEuicc, data: dict[str, Any], existing: EimConfig | None = None) -> EimConfig:
    """An EimConfig from EimConfigurationData (new, or `existing` updated with what is present)."""
    config = existing if existing is not None else EimConfig(eim_id=data["eimId"])
    if "counterValue" in data:
        if not 0 <= data["counterValue"] <= MAX_COUNTER:
            raise _AddRefused(ADD_COUNTER_OUT_OF_RANGE)
        config.counter = data["counterValue"]
    ci_pkid = data.get("euiccCiPKId")
    if ci_pkid is not None:
        if euicc.identity.ci_for(ci_pkid) is None:
            raise _AddRefused(ADD_CI_PK_UNKNOWN)
        config.euicc_ci_pkid = ci_pkid
    if "eimPublicKeyData" in data:
        config.eim_public_key, config.eim_certificate = _public_key_data(euicc, data["eimPublicKeyData"], ci_pkid)
    if "trustedPublicKeyDataTls" in data:
        kind, value = data["trustedPublicKeyDataTls"]
        if kind == "trustedEimPkTls":
            config.trusted_tls_key, config.trusted_tls_certificate = codec.encode("SubjectPublicKeyInfo", value), None
        else:
            config.trusted_tls_key, config.trusted_tls_certificate = None, value
    for key, attr in (("eimFqdn", "eim_fqdn"), ("eimIdType", "eim_id_type"),
                      ("eimSupportedProtocol", "eim_supported_protocol")):
        if key in data:
            setattr(config, attr, data[key])
    if "indirectProfileDownload" in data:
        config.indirect_profile_download = True
    return config


def _add_eim(euicc: SoftEuicc, data: dict[str, Any]) -> tuple[str, Any]:
    """The AddInitialEim / addEim result for one EimConfigurationData (and the eIM added)."""
    if euicc.faults.memory_full or len(euicc.state.eims) >= MAX_EIMS:
        raise _AddRefused(ADD_INSUFFICIENT_MEMORY)
    if euicc.state.eim(data["eimId"]) is not None:
        raise _AddRefused(ADD_ASSOCIATED_EIM_EXISTS)
    config = eim_config_from(euicc, data)
    if config.eim_public_key is None and config.eim_certificate is None:
        raise _AddRefused(ADD_COMMAND_ERROR)
    if "associationToken" in data:
        config.association_token = euicc.state.next_association_token
        euicc.state.next_association_token += 1
    euicc.state.eims.append(config)
    if config.association_token is not None:
        return ("associationToken", config.association_token)
    return ("addOk", None)


def eim_configuration_data(config: EimConfig) -> dict[str, Any]:
    value: dict[str, Any] = {"eimId": config.eim_id, "counterValue": config.counter}
    if config.eim_fqdn is not None:
        value["eimFqdn"] = config.eim_fqdn
    if config.eim_id_type is not None:
        value["eimIdType"] = config.eim_id_type
    if config.association_token is not None:
        value["associationToken"] = config.association_token
    if config.eim_public_key is not None:
        value["eimPublicKeyData"] = ("eimPublicKey", codec.decode("SubjectPublicKeyInfo", config.eim_public_key))
    elif config.eim_certificate is not None:
        value["eimPublicKeyData"] = ("eimCertificate", config.eim_certificate)
    if config.trusted_tls_key is not None:
        value["trustedPublicKeyDataTls"] = ("trustedEimPkTls", codec.decode("SubjectPublicKeyInfo", config.trusted_tls_key))
    elif config.trusted_tls_certificate is not None:
        value["trustedPublicKeyDataTls"] = ("trustedCertificateTls", config.trusted_tls_certificate)
    if config.eim_supported_protocol is not None:
        value["eimSupportedProtocol"] = config.eim_supported_protocol
    if config.euicc_ci_pkid is not None:
        value["euiccCiPKId"] = config.euicc_ci_pkid
    if config.indirect_profile_download:
        value["indirectProfileDownload"] = None
    return value


@es10(0xBF57, "AddInitialEim", "AddInitialEimRequest")
def add_initial_eim(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    datas = value["eimConfigurationDataList"]
    if euicc.state.eims:
        return codec.encode("AddInitialEimResponse", ("addInitialEimError", ADD_ASSOCIATED_EIM_EXISTS))
    if not datas:
        return codec.encode("AddInitialEimResponse", ("addInitialEimError", ADD_COMMAND_ERROR))
    saved = list(euicc.state.eims), euicc.state.next_association_token
    try:
        results = [_add_eim(euicc, data) for data in datas]
    except _AddRefused as refusal:
        euicc.state.eims, euicc.state.next_association_token = saved
        return codec.encode("AddInitialEimResponse", ("addInitialEimError", refusal.code))
    euicc.commit()
    return codec.encode("AddInitialEimResponse", ("addInitialEimOk", results))


@es10(0xBF55, "GetEimConfigurationData", "GetEimConfigurationDataRequest")
def get_eim_configuration_data(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    chosen = euicc.state.eims
    criteria = value.get("searchCriteria")
    if criteria is not None:
        chosen = [e for e in chosen if e.eim_id == criteria[1]]
    return codec.encode("GetEimConfigurationDataResponse",
                        {"eimConfigurationDataList": [eim_configuration_data(e) for e in chosen]})


@es10(0xBF56, "GetCerts", "GetCertsRequest")
def get_certs(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    if "euiccCiPKId" in value and euicc.identity.ci_for(value["euiccCiPKId"]) is None:
        return codec.encode("GetCertsResponse", ("getCertsError", 1))
    return codec.encode("GetCertsResponse", ("certs", {
        "eumCertificate": euicc.identity.eum_certificate_der,
        "euiccCertificate": euicc.identity.certificate_der}))


# --- LoadEuiccPackage (SGP.32 §2.11.1, §5.9.x) --------------------------------------------------


def eim_public_key(config: EimConfig) -> ec.EllipticCurvePublicKey | None:
    try:
        if config.eim_public_key is not None:
            key = load_der_public_key(config.eim_public_key)
        elif config.eim_certificate is not None:
            key = x509.load_der_x509_certificate(config.eim_certificate).public_key()
        else:
            return None
    except ValueError:
        return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def verify_eim_signature(config: EimConfig, request: bytes) -> bool:
    """eimSignature over the exact euiccPackageSigned bytes of `request` (+ association token)."""
    try:
        parts = tlv.children(request, tlv.read_single(request))
    except DecodeError:
        return False
    signed = next((p for p in parts if p.tag == 0x30), None)
    signature = next((p for p in parts if p.tag == signed_data.TAG_SIGNATURE), None)
    key = eim_public_key(config)
    if signed is None or signature is None or key is None:
        return False
    try:
        rspcrypto.verify_rs(key, signed_data.eim_signature_input(signed.raw_of(request), config.association_token),
                            signature.value_of(request))
    except rspcrypto.RspCryptoError:
        return False
    return True


def _error_unsigned(eim_id: str, signed: dict[str, Any], config: EimConfig | None) -> bytes:
    value: dict[str, Any] = {"eimId": eim_id}
    if "eimTransactionId" in signed:
        value["eimTransactionId"] = signed["eimTransactionId"]
    if config is not None and config.association_token is not None:
        value["associationToken"] = config.association_token
    return codec.encode("EuiccPackageResult", ("euiccPackageErrorUnsigned", value))


def _error_signed(euicc: SoftEuicc, config: EimConfig, signed: dict[str, Any], code: int) -> bytes:
    data: dict[str, Any] = {"eimId": config.eim_id, "counterValue": signed["counterValue"]}
    if "eimTransactionId" in signed:
        data["eimTransactionId"] = signed["eimTransactionId"]
    data["euiccPackageErrorCode"] = code
    signature = euicc.sign(signed_data.euicc_package_result_signature_input(
        codec.encode("EuiccPackageErrorDataSigned", data), config.association_token))
    return codec.encode("EuiccPackageResult", ("euiccPackageErrorSigned", {
        "euiccPackageErrorDataSigned": data, "euiccSignEPE": signature}))


def signed_package_result(euicc: SoftEuicc, config_id: str, association_token: int | None, counter: int,
                          transaction_id: bytes | None, results: list[tuple[str, Any]],
                          address: str) -> tuple[tuple[str, Any], bytes]:
    """(value, DER) of a signed EuiccPackageResult, kept as a pending result with a seqNumber."""
    seq = euicc.state.take_seq_number()
    data: dict[str, Any] = {"eimId": config_id, "counterValue": counter}
    if transaction_id is not None:
        data["eimTransactionId"] = transaction_id
    data["seqNumber"] = seq
    data["euiccResult"] = results
    signature = euicc.sign(signed_data.euicc_package_result_signature_input(
        codec.encode("EuiccPackageResultDataSigned", data), association_token))
    value = ("euiccPackageResultSigned", {"euiccPackageResultDataSigned": data, "euiccSignEPR": signature})
    der = codec.encode("EuiccPackageResult", value)
    euicc.state.notifications.append(Notification(seq_number=seq, event="euiccPackageResult",
                                                  address=address, iccid=None, der=der))
    return value, der


@es10(0xBF51, "LoadEuiccPackage", "EuiccPackageRequest")
def load_euicc_package(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    signed = value["euiccPackageSigned"]
    eim_id = signed["eimId"]
    config = euicc.state.eim(eim_id)
    if config is None or not verify_eim_signature(config, request):
        return _error_unsigned(eim_id, signed, config)
    if signed["eidValue"] != euicc.eid:
        return _error_signed(euicc, config, signed, ERR_INVALID_EID)
    counter = signed["counterValue"]
    if counter > MAX_COUNTER:
        return _error_signed(euicc, config, signed, ERR_COUNTER_OUT_OF_RANGE)
    if counter <= config.counter:
        return _error_signed(euicc, config, signed, ERR_REPLAY)
    if euicc.state.emergency_active:
        return _error_signed(euicc, config, signed, ERR_ECALL_ACTIVE)
    config.counter = counter
    kind, operations = signed["euiccPackage"]
    context = {"eimId": eim_id, "counterValue": counter, "eimTransactionId": signed.get("eimTransactionId")}
    run = _run_psmo if kind == "psmoList" else _run_eco
    results: list[tuple[str, Any]] = []
    for operation in operations:
        result = run(euicc, operation, context)
        results.append(result)
        if _failed(result):
            break
    association_token = config.association_token
    address = config.eim_fqdn or config.eim_id
    _, der = signed_package_result(euicc, eim_id, association_token, counter,
                                   signed.get("eimTransactionId"), results, address)
    euicc.commit()
    return der


def _failed(result: tuple[str, Any]) -> bool:
    name, value = result
    if isinstance(value, int):
        return value != 0 and not (name == "deleteEimResult" and value == 2)
    if name == "addEimResult":
        return bool(value[0] == "addEimResultCode" and value[1] != 0)
    if name in ("listProfileInfoResult", "listEimResult"):
        return str(value[0]).endswith("Error")
    return False


def _run_psmo(euicc: SoftEuicc, psmo: tuple[str, Any], context: dict[str, Any]) -> tuple[str, Any]:
    name, arg = psmo
    state = euicc.state
    if name == "enable":
        previous = state.enabled_profile()
        code = profiles.enable(euicc, state.profile(arg["iccid"]))
        if code == 0:
            if "rollbackFlag" in arg and previous is not None:
                state.rollback_iccid = previous.iccid
                state.rollback_context = dict(context)
            else:
                state.rollback_iccid = None
                state.rollback_context = None
        return ("enableResult", code)
    if name == "disable":
        return ("disableResult", profiles.disable(euicc, state.profile(arg["iccid"])))
    if name == "delete":
        return ("deleteResult", profiles.delete(euicc, state.profile(arg["iccid"])))
    if name == "listProfileInfo":
        return ("listProfileInfoResult", profiles.list_profile_info(euicc, arg))
    if name == "getRAT":
        return ("getRATResult", profiles.rules_authorisation_table())
    if name == "configureImmediateEnable":
        if euicc.faults.memory_full:
            return ("configureImmediateEnableResult", 1)
        profiles.configure_immediate_enable(euicc, arg)
        return ("configureImmediateEnableResult", 0)
    if name == "setFallbackAttribute":
        return ("setFallbackAttributeResult", _set_fallback(euicc, arg["iccid"]))
    if name == "unsetFallbackAttribute":
        return ("unsetFallbackAttributeResult", _unset_fallback(euicc))
    if name == "setDefaultDpAddress":
        state.default_dp_address = arg["defaultDpAddress"] or None
        return ("setDefaultDpAddressResult", {"setDefaultDpAddressResult": 0})
    return ("processingTerminated", 2)


def _set_fallback(euicc: SoftEuicc, iccid: bytes) -> int:
    target = euicc.state.profile(iccid)
    if target is None or target.install_state != "installed":
        return 1
    if euicc.state.fallback_from_iccid is not None:
        return 3
    if not target.fallback_allowed:
        return 2
    for p in euicc.state.profiles:
        p.fallback = p is target
    return 0


def _unset_fallback(euicc: SoftEuicc) -> int:
    holder = next((p for p in euicc.state.profiles if p.fallback), None)
    if holder is None:
        return 2
    if euicc.state.fallback_from_iccid is not None:
        return 3
    holder.fallback = False
    return 0


def _run_eco(euicc: SoftEuicc, eco: tuple[str, Any], context: dict[str, Any]) -> tuple[str, Any]:
    name, arg = eco
    state = euicc.state
    if name == "addEim":
        try:
            added = _add_eim(euicc, arg)
            return ("addEimResult", ("addEimResultCode", 0) if added[0] == "addOk" else added)
        except _AddRefused as refusal:
            return ("addEimResult", ("addEimResultCode", refusal.code))
    if name == "deleteEim":
        config = state.eim(arg["eimId"])
        if config is None:
            return ("deleteEimResult", 1)
        state.eims.remove(config)
        return ("deleteEimResult", 2 if not state.eims else 0)
    if name == "updateEim":
        config = state.eim(arg["eimId"])
        if config is None:
            return ("updateEimResult", 1)
        try:
            eim_config_from(euicc, arg, config)
        except _AddRefused as refusal:
            return ("updateEimResult", refusal.code)
        return ("updateEimResult", 0)
    if name == "listEim":
        ids = []
        for e in state.eims:
            entry: dict[str, Any] = {"eimId": e.eim_id}
            if e.eim_id_type is not None:
                entry["eimIdType"] = e.eim_id_type
            ids.append(entry)
        return ("listEimResult", ("eimIdList", ids))
    return ("processingTerminated", 2)


def rollback_package_result(euicc: SoftEuicc, context: dict[str, Any]) -> tuple[str, Any]:
    """The signed EuiccPackageResult that ProfileRollback returns for the enable it undid."""
    config = euicc.state.eim(context["eimId"])
    token = config.association_token if config is not None else None
    address = (config.eim_fqdn or config.eim_id) if config is not None else context["eimId"]
    value, _ = signed_package_result(euicc, context["eimId"], token, context["counterValue"],
                                     context.get("eimTransactionId"), [("rollbackResult", 0)], address)
    return value


# --- IpaEuiccData: the parts the eUICC holds (SGP.32 §2.11.2) -----------------------------------

IPA_EUICC_DATA_TAGS = (0xA0, 0x81, 0xA2, 0xBF20, 0xBF22, 0x83, 0x84, 0xA5, 0xA6, 0x87)
IPA_ONLY_TAGS = (0xA8, 0xA9)   # ipaCapabilities, deviceInfo: added by the IPA, not the eUICC


def _implicit(tag: int, der: bytes) -> bytes:
    node = tlv.read_single(der)
    return tlv.header(tag, node.length) + node.value_of(der)


@es10(0xBF52, "IpaEuiccData", "IpaEuiccDataRequest")
def ipa_euicc_data(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    from hil.euicc.profiles import parse_tag_list

    tid = value.get("eimTransactionId")
    tags = parse_tag_list(value["tagList"])

    def error(code: int) -> bytes:
        err: dict[str, Any] = {"ipaEuiccDataErrorCode": code}
        if tid is not None:
            err["eimTransactionId"] = tid
        return codec.encode("IpaEuiccDataResponse", ("ipaEuiccDataResponseError", err))

    if tags is None or not tags or any(t not in IPA_EUICC_DATA_TAGS + IPA_ONLY_TAGS for t in tags):
        return error(1)
    pkid = value.get("euiccCiPKIdentifierToBeUsed")
    if pkid is not None and euicc.identity.ci_for(pkid) is None:
        return error(5)
    fields: list[bytes] = []
    for tag in IPA_EUICC_DATA_TAGS:
        if tag not in tags:
            continue
        if tag == 0xA0:
            chosen = profile_notifications(euicc)
            crit = value.get("searchCriteriaNotification")
            if crit is not None and crit[0] == "seqNumber":
                chosen = [n for n in chosen if n.seq_number == crit[1]]
            elif crit is not None:
                chosen = [n for n in chosen if has_bit(crit[1], EVENT_BITS[n.event])]
            fields.append(wrap(0xA0, [n.der for n in chosen]))
        elif tag == 0x81 and euicc.state.default_dp_address is not None:
            fields.append(signed_data.tlv_bytes(0x81, euicc.state.default_dp_address.encode()))
        elif tag == 0xA2:
            chosen = package_results(euicc)
            crit = value.get("searchCriteriaEuiccPackageResult")
            if crit is not None:
                chosen = [n for n in chosen if n.seq_number == crit[1]]
            fields.append(wrap(0xA2, [n.der for n in chosen]))
        elif tag == 0xBF20:
            fields.append(euicc_info1_der(euicc))
        elif tag == 0xBF22:
            fields.append(euicc_info2_der(euicc))
        elif tag == 0x83:
            fields.append(signed_data.tlv_bytes(0x83, euicc.state.root_ds_address.encode()))
        elif tag == 0x84:
            token = next((e.association_token for e in euicc.state.eims if e.association_token is not None), None)
            if token is not None:
                fields.append(signed_data.association_token_tlv(token))
        elif tag == 0xA5:
            fields.append(_implicit(0xA5, euicc.identity.eum_certificate_der))
        elif tag == 0xA6:
            fields.append(_implicit(0xA6, euicc.identity.certificate_der))
    if tid is not None:   # SGP.32 v1.2 §5.9.x: echoed whenever the request carried one, whatever the tag list
        fields.append(signed_data.tlv_bytes(0x87, tid))
    return wrap(0xBF52, [wrap(0xA0, fields)])


@es10(0xBF42, "IpaeActivation", "IpaeActivationRequest")
def ipae_activation(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    """This eUICC has no IPAe (EUICCInfo2.ipaMode = ipad): activation is notSupported."""
    return codec.encode("IpaeActivationResponse", {"ipaeActivationResult": 1})
