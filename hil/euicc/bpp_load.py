"""ES10b.LoadBoundProfilePackage on the eUICC side (SGP.22 §2.5.5, §3.1.3.3, §5.7.6).

Theory of operation. The IPA sends the BPP as ES8+ segments, one STORE DATA sequence each
(see gateway/spec/bpp.py). `load_segment` is called for each:

1. 'BF36' header + InitialiseSecureChannelRequest: the RSP session must be "prepared"; the
   transactionId, the CRT (AES-128) and smdpSign (CERT.DPpb, over the request's fields and
   otPK.EUICC.ECKA) are checked, then ECKA(otSK.EUICC, otPK.DP) and the X9.63 KDF give the
   SCP03t session keys.
2. 'A0' header + '87': C-MAC check and decryption of ConfigureISDP; the ISD-P is created
   (and committed to NVM, so a tear leaves what a real card leaves).
3. 'A1' header, then each '88': C-MAC checked; the concatenated plaintext is StoreMetadata.
4. optional 'A2' header + '87': ReplaceSessionKeys, the '86' segments then use the PPK.
5. 'A3' header, then each '86': C-MAC check and decryption of the profile elements.

Sequence headers carry the length of their content, and the 'BF36' header the length of the
whole package, so the eUICC knows when a sequence and the package are complete. The last
segment answers the signed ProfileInstallationResult (also kept as a pending notification,
addressed to the SM-DP+). Any failure answers at once with an error result (bppCommandId,
errorReason), deletes the partly installed ISD-P and ends the session: the IPA must stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509

from gateway.errors import DecodeError
from gateway.spec import codec, tlv
from hil import rspcrypto
from hil.euicc import signed_data
from hil.euicc.card import SW_CONDITIONS_NOT_SATISFIED, SW_WRONG_DATA, StatusWord
from hil.euicc.faults import PowerLoss
from hil.euicc.info import bits, free_nvm, PROFILE_FOOTPRINT
from hil.euicc.notifications import store_notification
from hil.euicc.state import Notification, Profile

if TYPE_CHECKING:
    from hil.euicc.euicc import RspSession, SoftEuicc

# BppCommandId (SGP.22 §5.7.6)
CMD_INITIALISE_SECURE_CHANNEL = 0
CMD_CONFIGURE_ISDP = 1
CMD_STORE_METADATA = 2
CMD_REPLACE_SESSION_KEYS = 4
CMD_LOAD_PROFILE_ELEMENTS = 5

# ErrorReason
ERR_INCORRECT_INPUT_VALUES = 1
ERR_INVALID_SIGNATURE = 2
ERR_INVALID_TRANSACTION_ID = 3
ERR_UNSUPPORTED_CRT_VALUES = 4
ERR_UNSUPPORTED_REMOTE_OPERATION_TYPE = 5
ERR_UNSUPPORTED_PROFILE_CLASS = 6
ERR_SCP03T_STRUCTURE_ERROR = 7
ERR_SCP03T_SECURITY_ERROR = 8
ERR_ICCID_ALREADY_EXISTS = 9
ERR_INSUFFICIENT_MEMORY = 10
ERR_INTERRUPTION = 11
ERR_PE_PROCESSING_ERROR = 12

SEQUENCE_COMMAND = {0xA0: CMD_CONFIGURE_ISDP, 0xA1: CMD_STORE_METADATA,
                    0xA2: CMD_REPLACE_SESSION_KEYS, 0xA3: CMD_LOAD_PROFILE_ELEMENTS}
SEQUENCE_ELEMENT = {0xA0: 0x87, 0xA1: 0x88, 0xA2: 0x87, 0xA3: 0x86}
NEXT_SEQUENCES = {None: {0xA0}, 0xA0: {0xA1}, 0xA1: {0xA2, 0xA3}, 0xA2: {0xA3}}
PROFILE_CLASSES = {0: "test", 1: "provisioning", 2: "operational"}
SIMA_RESPONSE_OK = bytes.fromhex("3007A0053003800100")   # EUICCResponse: peStatus { status ok }


class _Failed(Exception):
    def __init__(self, command: int, reason: int, why: str) -> None:
        self.command = command
        self.reason = reason
        super().__init__(why)


@dataclass
class BppLoader:
    session: RspSession
    total: int
    received: int
    scp: rspcrypto.Scp03tSession
    segments_done: int = 1
    sequence: int | None = None
    remaining: int = 0
    plaintext: bytearray = field(default_factory=bytearray)
    profile: Profile | None = None
    pe_bytes: int = 0


def header(data: bytes) -> tuple[int, int, int]:
    """(tag, header length, declared value length) of a TLV whose value may be absent."""
    if not data:
        raise DecodeError("empty segment", offset=0)
    i = 1
    tag = data[0]
    if tag & 0x1F == 0x1F:
        while True:
            if i >= len(data) or i > 3:
                raise DecodeError("truncated tag", offset=0)
            tag = (tag << 8) | data[i]
            i += 1
            if not data[i - 1] & 0x80:
                break
    if i >= len(data):
        raise DecodeError("no length octet", offset=i)
    first = data[i]
    i += 1
    if first < 0x80:
        return tag, i, first
    count = first & 0x7F
    if count == 0 or count > 4 or i + count > len(data):
        raise DecodeError("bad length octets", offset=i - 1)
    return tag, i + count, int.from_bytes(data[i:i + count], "big")


def load_segment(euicc: SoftEuicc, data: bytes) -> bytes:
    faults = euicc.faults
    loader: BppLoader | None = euicc.bpp
    done = loader.segments_done if loader is not None and data[:2] != b"\xbf\x36" else 0
    if faults.tear_after_bpp_segments is not None and done >= faults.tear_after_bpp_segments:
        faults.tear_after_bpp_segments = None
        raise PowerLoss(f"power lost after {done} BPP segments")
    try:
        tag, head_len, length = header(data)
    except DecodeError as exc:
        raise StatusWord(SW_WRONG_DATA, str(exc)) from exc
    if tag == 0xBF36:
        return _initialise_secure_channel(euicc, data, head_len, length)
    if loader is None:
        raise StatusWord(SW_CONDITIONS_NOT_SATISFIED, "no Bound Profile Package is being loaded")
    command = SEQUENCE_COMMAND.get(loader.sequence or 0, CMD_CONFIGURE_ISDP)
    try:
        if tag in SEQUENCE_COMMAND:
            command = SEQUENCE_COMMAND[tag]
            _start_sequence(loader, tag, length)
            _elements(euicc, loader, data, head_len)
        else:
            _elements(euicc, loader, data, 0)
        loader.received += len(data)
        loader.segments_done += 1
        if loader.received > loader.total:
            raise _Failed(command, ERR_SCP03T_STRUCTURE_ERROR, "more bytes than the BF36 length")
        if loader.received < loader.total:
            return b""
        if loader.sequence != 0xA3 or loader.remaining:
            raise _Failed(command, ERR_SCP03T_STRUCTURE_ERROR, "package ended before its profile elements")
        return _finish(euicc, loader)
    except _Failed as failure:
        return _fail(euicc, loader.session, failure, loader.profile)
    except DecodeError as exc:
        return _fail(euicc, loader.session, _Failed(command, ERR_SCP03T_STRUCTURE_ERROR, str(exc)),
                     loader.profile)


def _initialise_secure_channel(euicc: SoftEuicc, data: bytes, head_len: int, length: int) -> bytes:
    abort_load(euicc)
    session = euicc.session
    if session is None:
        raise StatusWord(SW_CONDITIONS_NOT_SATISFIED, "LoadBoundProfilePackage without an RSP session")
    try:
        isc = tlv.read_single(data[head_len:])
        if isc.tag != 0xBF23:
            raise DecodeError("BF36 must start with InitialiseSecureChannelRequest (BF23)", offset=head_len)
        raw = data[head_len:]
        value = codec.decode("InitialiseSecureChannelRequest", raw)
    except DecodeError as exc:
        return _fail(euicc, session, _Failed(CMD_INITIALISE_SECURE_CHANNEL, ERR_INCORRECT_INPUT_VALUES, str(exc)))
    try:
        if session.phase != "prepared":
            raise _Failed(CMD_INITIALISE_SECURE_CHANNEL, ERR_INVALID_TRANSACTION_ID, "no PrepareDownload before the BPP")
        scp = _check_isc(euicc, session, raw, value)
    except _Failed as failure:
        return _fail(euicc, session, failure)
    except DecodeError as exc:
        return _fail(euicc, session, _Failed(CMD_INITIALISE_SECURE_CHANNEL, ERR_INCORRECT_INPUT_VALUES, str(exc)))
    session.phase = "loading"
    euicc.bpp = BppLoader(session=session, total=head_len + length, received=len(data), scp=scp)
    return b""


def _check_isc(euicc: SoftEuicc, session: RspSession, raw: bytes, value: Any) -> rspcrypto.Scp03tSession:
    cmd = CMD_INITIALISE_SECURE_CHANNEL
    if value["remoteOpId"] != 1:
        raise _Failed(cmd, ERR_UNSUPPORTED_REMOTE_OPERATION_TYPE, "remoteOpId is not installBoundProfilePackage")
    if value["transactionId"] != session.transaction_id:
        raise _Failed(cmd, ERR_INVALID_TRANSACTION_ID, "InitialiseSecureChannel for another transaction")
    crt = value["controlRefTemplate"]
    if crt["keyType"] != bytes([rspcrypto.KEY_TYPE_AES]) or crt["keyLen"] != bytes([rspcrypto.KEY_LENGTH_AES128]):
        raise _Failed(cmd, ERR_UNSUPPORTED_CRT_VALUES, "only AES-128 session keys are supported")
    fields = tlv.children(raw, tlv.read_single(raw))
    signed_part = b"".join(f.raw_of(raw) for f in fields if f.tag != signed_data.TAG_SIGNATURE)
    try:
        dppb = x509.load_der_x509_certificate(session.dppb_der)
        rspcrypto.verify_rs_with_certificate(
            dppb, signed_data.smdp_sign_input(signed_part, session.ot_public), value["smdpSign"])
    except (rspcrypto.RspCryptoError, ValueError) as exc:
        raise _Failed(cmd, ERR_INVALID_SIGNATURE, f"smdpSign: {exc}") from exc
    try:
        peer = rspcrypto.public_key_from_bytes(value["smdpOtpk"])
        shared = rspcrypto.ecka_shared_secret(session.ot_private, peer)
        keys = rspcrypto.derive_session_keys(shared, host_id=crt["hostId"], eid=euicc.eid)
    except rspcrypto.RspCryptoError as exc:
        raise _Failed(cmd, ERR_INCORRECT_INPUT_VALUES, str(exc)) from exc
    return rspcrypto.Scp03tSession.from_keys(keys)


def _start_sequence(loader: BppLoader, tag: int, length: int) -> None:
    if loader.remaining:
        raise _Failed(SEQUENCE_COMMAND[tag], ERR_SCP03T_STRUCTURE_ERROR,
                      f"sequence {tag:02X} starts before {loader.sequence:02X} is complete")
    if tag not in NEXT_SEQUENCES.get(loader.sequence, set()):
        raise _Failed(SEQUENCE_COMMAND[tag], ERR_SCP03T_STRUCTURE_ERROR, f"sequence {tag:02X} out of order")
    loader.sequence = tag
    loader.remaining = length
    loader.plaintext = bytearray()


def _elements(euicc: SoftEuicc, loader: BppLoader, data: bytes, start: int) -> None:
    sequence = loader.sequence
    if sequence is None:
        raise _Failed(CMD_CONFIGURE_ISDP, ERR_SCP03T_STRUCTURE_ERROR, "segment outside a sequence")
    command = SEQUENCE_COMMAND[sequence]
    for element in tlv.iter_tlvs(data, start):
        if element.tag != SEQUENCE_ELEMENT[sequence]:
            raise _Failed(command, ERR_SCP03T_STRUCTURE_ERROR, f"tag {element.tag:02X} inside {sequence:02X}")
        size = element.end - element.start
        if size > loader.remaining:
            raise _Failed(command, ERR_SCP03T_STRUCTURE_ERROR, "element longer than its sequence")
        loader.remaining -= size
        try:
            clear = rspcrypto.unprotect_segment(loader.scp, element.raw_of(data), expected_tag=element.tag)
        except rspcrypto.SecureChannelError as exc:
            raise _Failed(command, ERR_SCP03T_SECURITY_ERROR, str(exc)) from exc
        if sequence == 0xA3:
            loader.pe_bytes += len(clear)
        else:
            loader.plaintext += clear
    if loader.remaining == 0 and sequence != 0xA3:
        _complete(euicc, loader, sequence, bytes(loader.plaintext))


def _complete(euicc: SoftEuicc, loader: BppLoader, sequence: int, clear: bytes) -> None:
    command = SEQUENCE_COMMAND[sequence]
    if sequence == 0xA0:
        try:
            configure = codec.decode("ConfigureISDPRequest", clear)
        except DecodeError as exc:
            raise _Failed(command, ERR_INCORRECT_INPUT_VALUES, str(exc)) from exc
        if euicc.faults.memory_full or free_nvm(euicc) < PROFILE_FOOTPRINT:
            raise _Failed(command, ERR_INSUFFICIENT_MEMORY, "no memory for another ISD-P")
        profile = Profile(iccid=b"", isdp_aid=euicc.new_isdp_aid(),
                          install_transaction_id=loader.session.transaction_id,
                          install_smdp_address=loader.session.server_address,
                          smdp_oid=loader.session.smdp_oid, install_command=CMD_STORE_METADATA)
        dp = configure.get("dpProprietaryData")
        if dp is not None:
            profile.dp_proprietary_data = codec.encode("DpProprietaryData", dp)
        euicc.state.profiles.append(profile)
        loader.profile = profile
        euicc.commit()
    elif sequence == 0xA1:
        _store_metadata(euicc, loader, clear)
    elif sequence == 0xA2:
        try:
            keys = codec.decode("ReplaceSessionKeysRequest", clear)
        except DecodeError as exc:
            raise _Failed(command, ERR_INCORRECT_INPUT_VALUES, str(exc)) from exc
        loader.scp = rspcrypto.Scp03tSession(s_enc=keys["ppkEnc"], s_mac=keys["ppkCmac"],
                                             mac_chaining_value=keys["initialMacChainingValue"])
        _set_command(euicc, loader, CMD_LOAD_PROFILE_ELEMENTS)


def _set_command(euicc: SoftEuicc, loader: BppLoader, command: int) -> None:
    if loader.profile is not None:
        loader.profile.install_command = command


def _store_metadata(euicc: SoftEuicc, loader: BppLoader, clear: bytes) -> None:
    command = CMD_STORE_METADATA
    try:
        meta = codec.decode("StoreMetadataRequest", clear)
    except DecodeError as exc:
        raise _Failed(command, ERR_INCORRECT_INPUT_VALUES, str(exc)) from exc
    profile = loader.profile
    if profile is None:
        raise _Failed(command, ERR_SCP03T_STRUCTURE_ERROR, "StoreMetadata before ConfigureISDP")
    if euicc.state.profile(meta["iccid"]) is not None:
        raise _Failed(command, ERR_ICCID_ALREADY_EXISTS, "a Profile with this ICCID is installed")
    if meta["profileClass"] not in PROFILE_CLASSES:
        raise _Failed(command, ERR_UNSUPPORTED_PROFILE_CLASS, "unknown profile class")
    profile.iccid = meta["iccid"]
    profile.service_provider_name = meta["serviceProviderName"]
    profile.profile_name = meta["profileName"]
    profile.profile_class = PROFILE_CLASSES[meta["profileClass"]]
    if "iconType" in meta:
        profile.icon_type = {0: "jpg", 1: "png"}.get(meta["iconType"])
    profile.icon = meta.get("icon")
    profile.notification_config = [(_events(c["profileManagementOperation"]), c["notificationAddress"])
                                   for c in meta.get("notificationConfigurationInfo", [])]
    if "profilePolicyRules" in meta:
        profile.profile_policy_rules = [name for bit, name in enumerate(("pprUpdateControl", "ppr1", "ppr2"))
                                        if _has(meta["profilePolicyRules"], bit)]
    profile.emergency = bool(meta.get("ecallIndication", False))
    profile.fallback_allowed = bool(meta.get("fallbackAllowed", False))
    _set_command(euicc, loader, CMD_LOAD_PROFILE_ELEMENTS)
    euicc.commit()


EVENTS = ("install", "enable", "disable", "delete")


def _has(bit_string: tuple[bytes, int], position: int) -> bool:
    data, nbits = bit_string
    return position < nbits and bool(data[position // 8] & (0x80 >> (position % 8)))


def _events(bit_string: tuple[bytes, int]) -> list[str]:
    return [name for bit, name in enumerate(EVENTS) if _has(bit_string, bit)]


def _finish(euicc: SoftEuicc, loader: BppLoader) -> bytes:
    profile = loader.profile
    if profile is None or not profile.iccid:
        raise _Failed(CMD_LOAD_PROFILE_ELEMENTS, ERR_SCP03T_STRUCTURE_ERROR, "no ISD-P or no metadata")
    if loader.pe_bytes == 0:
        raise _Failed(CMD_LOAD_PROFILE_ELEMENTS, ERR_PE_PROCESSING_ERROR, "no profile elements")
    profile.install_state = "installed"
    profile.profile_elements = loader.pe_bytes
    profile.install_transaction_id = None
    profile.install_smdp_address = None
    result = ("successResult", {"aid": profile.isdp_aid, "simaResponse": SIMA_RESPONSE_OK})
    pir = _installation_result(euicc, loader.session.transaction_id, loader.session.server_address,
                               loader.session.smdp_oid, profile.iccid, result)
    euicc.bpp = None
    euicc.session = None
    euicc.just_installed = profile.iccid
    euicc.commit()
    return pir


def _installation_result(euicc: SoftEuicc, transaction_id: bytes, address: str, smdp_oid: str,
                         iccid: bytes | None, final_result: tuple[str, Any]) -> bytes:
    """Build, sign and keep (as a pending notification) a ProfileInstallationResult."""
    seq = euicc.state.take_seq_number()
    metadata: dict[str, Any] = {"seqNumber": seq, "profileManagementOperation": bits(0),
                                "notificationAddress": address}
    if iccid:
        metadata["iccid"] = iccid
    data = {"transactionId": transaction_id, "notificationMetadata": metadata,
            "smdpOid": smdp_oid, "finalResult": final_result}
    signature = euicc.sign(signed_data.profile_installation_result_input(
        codec.encode("ProfileInstallationResultData", data)))
    pir = codec.encode("ProfileInstallationResult", {"profileInstallationResultData": data,
                                                     "euiccSignPIR": signature})
    store_notification(euicc, Notification(seq_number=seq, event="install", address=address,
                                           iccid=iccid or None, der=pir))
    return pir


def _fail(euicc: SoftEuicc, session: RspSession, failure: _Failed, profile: Profile | None = None) -> bytes:
    if profile is not None and profile in euicc.state.profiles:
        euicc.state.profiles.remove(profile)
    result = ("errorResult", {"bppCommandId": failure.command, "errorReason": failure.reason})
    pir = _installation_result(euicc, session.transaction_id, session.server_address, session.smdp_oid,
                               None, result)
    euicc.bpp = None
    euicc.session = None
    euicc.commit()
    return pir


def abort_load(euicc: SoftEuicc) -> None:
    """A BPP load interrupted by a new session or CancelSession: drop the partial ISD-P."""
    loader: BppLoader | None = euicc.bpp
    euicc.bpp = None
    if loader is not None and loader.profile is not None and loader.profile in euicc.state.profiles:
        euicc.state.profiles.remove(loader.profile)
        euicc.commit()


def clean_up_torn_installations(euicc: SoftEuicc) -> bool:
    """At power-up: delete ISD-Ps whose installation was torn, and report each (SGP.22 §3.1.3)."""
    torn = [p for p in euicc.state.profiles if p.install_state == "installing"]
    for profile in torn:
        euicc.state.profiles.remove(profile)
        if (profile.install_transaction_id is not None and profile.install_smdp_address is not None
                and profile.smdp_oid is not None):
            result = ("errorResult", {"bppCommandId": profile.install_command, "errorReason": ERR_INTERRUPTION})
            _installation_result(euicc, profile.install_transaction_id, profile.install_smdp_address,
                                 profile.smdp_oid, profile.iccid or None, result)
    return bool(torn)
