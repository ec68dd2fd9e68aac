"""Bound Profile Packages as an SM-DP+ builds them (SGP.22 §2.5.3-2.5.5, §5.5).

Theory of operation. `build_bpp` binds one generated profile to one eUICC session:

1. a fresh one-time key pair otSK/otPK.DP.ECKA; InitialiseSecureChannelRequest with
   remoteOpId installBoundProfilePackage, the transactionId, the CRT (AES-128, hostId) and
   otPK.DP, signed with SK.DPpb over remoteOpId..smdpOtpk *as encoded* || '5F49' otPK.EUICC
   (`smdp_sign_input`);
2. ShS = ECKA(otSK.DP, otPK.EUICC.ECKA from PrepareDownload), then the X9.63 KDF with the
   CRT and the EID gives the initial MAC chaining value, S-ENC and S-MAC;
3. ConfigureISDP ('87', encrypted), StoreMetadata ('88', MAC only, split as needed) and the
   profile elements ('86', encrypted, ~1 KB segments) are protected in that order with one
   SCP03t session (`hil.rspcrypto.protect_data`), so the MAC chain runs through the BPP;
4. optionally (`replace_session_keys`) a ReplaceSessionKeys ('A2' / '87', under the session
   keys) hands the eUICC random PPK-ENC / PPK-CMAC / initial MAC chaining value, and the
   '86' segments are protected with those instead, as for a pre-generated profile.

The BPP is encoded with the project codec; each protected segment is carried as the value of
its [7]/[8]/[6] OCTET STRING, which re-creates exactly the TLV that `protect_segment` MACed.
The profile itself is a deterministic stand-in of the requested size: a header element naming
the ICCID followed by filler elements (the software eUICC counts, it does not interpret, them).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.spec import codec, tlv
from hil import rspcrypto

HOST_ID = b"ipae-test-smdp"
TAG_SIGNATURE = 0x5F37
TAG_OTPK = 0x5F49
NOTIFY_ALL_EVENTS = (bytes([0xF0]), 4)   # install, enable, disable, delete
PE_CHUNK = 512


def smdp_sign_input(isc_fields: bytes, euicc_otpk: bytes) -> bytes:
    """What smdpSign covers (SGP.22 §5.5.1): the request's fields up to smdpOtpk, then '5F49' otPK.EUICC."""
    return isc_fields + tlv.header(TAG_OTPK, len(euicc_otpk)) + euicc_otpk


@dataclass(frozen=True)
class ProfileSpec:
    """What an order says about its profile."""

    iccid: bytes                   # 10 bytes, EF-ICCID coding
    size: int                      # bytes of profile elements
    profile_name: str = "ipae test profile"
    service_provider_name: str = "ipae-gateway Test MNO"
    profile_class: int = 2         # operational
    notification_address: str = ""
    replace_session_keys: bool = False

    def metadata(self, smdp_address: str) -> dict[str, Any]:
        """StoreMetadataRequest value (SGP.22 §5.5.3)."""
        return {
            "iccid": self.iccid,
            "serviceProviderName": self.service_provider_name,
            "profileName": self.profile_name,
            "profileClass": self.profile_class,
            "notificationConfigurationInfo": [{
                "profileManagementOperation": NOTIFY_ALL_EVENTS,
                "notificationAddress": self.notification_address or smdp_address,
            }],
        }

    def metadata_der(self, smdp_address: str) -> bytes:
        return codec.encode("RSPDefinitions.StoreMetadataRequest", self.metadata(smdp_address))


def profile_elements(spec: ProfileSpec) -> bytes:
    """A deterministic, incompressible stand-in for the profile package of `spec.size` bytes."""
    out = bytearray()
    header = b"PE-Header ICCID " + spec.iccid.hex().encode()
    out += tlv.header(0xA0, len(header)) + header
    counter = 0
    while len(out) < spec.size:
        block = bytearray()
        while len(block) < PE_CHUNK:
            block += hashlib.sha256(spec.iccid + counter.to_bytes(8, "big")).digest()
            counter += 1
        room = spec.size - len(out) - 4
        chunk = bytes(block[:max(1, min(PE_CHUNK, room))])
        out += tlv.header(0x81, len(chunk)) + chunk
    return bytes(out)


@dataclass(frozen=True)
class BoundPackage:
    der: bytes
    smdp_otpk: bytes
    segments_86: int


def build_bpp(*, transaction_id: bytes, eid: bytes, euicc_otpk: bytes, spec: ProfileSpec,
              smdp_address: str, smdp_oid: str, dppb_key: ec.EllipticCurvePrivateKey) -> BoundPackage:
    """The BoundProfilePackage of `spec` for this session (see the module docstring)."""
    ot_private = rspcrypto.generate_key()
    smdp_otpk = rspcrypto.public_key_bytes(ot_private.public_key())
    euicc_public = rspcrypto.public_key_from_bytes(euicc_otpk)
    isc: dict[str, Any] = {
        "remoteOpId": 1,
        "transactionId": transaction_id,
        "controlRefTemplate": {"keyType": bytes([rspcrypto.KEY_TYPE_AES]),
                               "keyLen": bytes([rspcrypto.KEY_LENGTH_AES128]), "hostId": HOST_ID},
        "smdpOtpk": smdp_otpk,
        "smdpSign": bytes(64),
    }
    draft = codec.encode("InitialiseSecureChannelRequest", isc)
    fields = tlv.children(draft, tlv.read_single(draft))
    signed_part = b"".join(f.raw_of(draft) for f in fields if f.tag != TAG_SIGNATURE)
    isc["smdpSign"] = rspcrypto.sign_rs(dppb_key, smdp_sign_input(signed_part, euicc_otpk))

    keys = rspcrypto.derive_session_keys(rspcrypto.ecka_shared_secret(ot_private, euicc_public),
                                         host_id=HOST_ID, eid=eid)
    scp = rspcrypto.Scp03tSession.from_keys(keys)
    configure = codec.encode("ConfigureISDPRequest", {"dpProprietaryData": {"dpOid": smdp_oid}})
    seq87 = rspcrypto.protect_data(scp, 0x87, configure)
    seq88 = rspcrypto.protect_data(scp, 0x88, spec.metadata_der(smdp_address))
    second87: list[bytes] | None = None
    if spec.replace_session_keys:
        ppk = rspcrypto.Scp03tSession(s_enc=os.urandom(16), s_mac=os.urandom(16),
                                      mac_chaining_value=os.urandom(16))
        replace = codec.encode("ReplaceSessionKeysRequest", {
            "initialMacChainingValue": ppk.mac_chaining_value, "ppkEnc": ppk.s_enc, "ppkCmac": ppk.s_mac})
        second87 = rspcrypto.protect_data(scp, 0x87, replace)
        scp = ppk
    seq86 = rspcrypto.protect_data(scp, 0x86, profile_elements(spec))

    def values(segments: list[bytes]) -> list[bytes]:
        return [tlv.read_single(s).value_of(s) for s in segments]

    package: dict[str, Any] = {
        "initialiseSecureChannelRequest": isc,
        "firstSequenceOf87": values(seq87),
        "sequenceOf88": values(seq88),
        "sequenceOf86": values(seq86),
    }
    if second87 is not None:
        package["secondSequenceOf87"] = values(second87)
    der = codec.encode("BoundProfilePackage", package)
    return BoundPackage(der=der, smdp_otpk=smdp_otpk, segments_86=len(seq86))
