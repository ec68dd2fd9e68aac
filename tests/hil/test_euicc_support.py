"""Test-side peers of the software eUICC: an APDU driver, a minimal SM-DP+ and a minimal eIM.

Not tests themselves. The SM-DP+ side builds exactly what an SM-DP+ sends (serverSigned1,
smdpSigned2, a Bound Profile Package protected with SCP03t session keys from ECKA) on
`hil.rspcrypto` and `hil.euicc.signed_data`, and checks what the eUICC signs with plain
`cryptography`; the real SM-DP+ peer (hil/peers) is built later on the same primitives.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.spec import apdu as A
from gateway.spec import bpp as bpp_split
from gateway.spec import codec, tlv
from hil import rspcrypto
from hil.euicc import SoftEuicc, signed_data
from hil.pki import RspPki

SMDP_ADDRESS = "smdp.example.com"
EIM_ID = "eim.example.com"


@lru_cache(maxsize=1)
def oracle() -> Any:
    """The asn1play (pycrate) SGP.32 v1.2 modules: an independent decoder."""
    m = importlib.import_module("asn1_play.generated_code.asn1.GSMA.SGP_32.v1_2.python_gen.sgp32.sgp32")
    return m.GLOBAL.MOD


def oracle_decode(type_name: str, der: bytes, module: str = "SGP32Definitions") -> Any:
    t = oracle()[module][type_name]
    t.from_der(der)
    return t.get_val()


def verify_rs(cert_or_key: x509.Certificate | ec.EllipticCurvePublicKey, data: bytes, rs: bytes) -> None:
    """Plain `cryptography` ECDSA check of an r||s signature (raises InvalidSignature)."""
    key = cert_or_key.public_key() if isinstance(cert_or_key, x509.Certificate) else cert_or_key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert len(rs) == 64
    der = encode_dss_signature(int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big"))
    key.verify(der, data, ec.ECDSA(hashes.SHA256()))


def raw_child(der: bytes, *path: int) -> bytes:
    """Exact bytes of the child reached by indexes from the outer TLV."""
    node = tlv.read_single(der)
    for index in path:
        node = tlv.children(der, node)[index]
    return node.raw_of(der)


class Channel:
    """Drives a SoftEuicc like an IPA: one logical channel with the ISD-R selected."""

    def __init__(self, euicc: SoftEuicc, segment_size: int = 255, max_le: int = 256) -> None:
        self.euicc = euicc
        self.segment_size = segment_size
        self.max_le = max_le
        data, sw = A.split_response(euicc.transmit(A.manage_channel_open()))
        assert sw == 0x9000
        self.channel = A.opened_channel(data)
        _, sw = A.split_response(euicc.transmit(A.with_channel(A.select(), self.channel)))
        assert sw == 0x9000

    def call_sw(self, payload: bytes) -> tuple[bytes, int]:
        blocks = [A.with_channel(b, self.channel)
                  for b in A.store_data(payload, self.segment_size, wrap_block_number=True)]
        for b in blocks[:-1]:
            _, sw = A.split_response(self.euicc.transmit(b))
            if sw != 0x9000:
                return b"", sw
        asm = A.ResponseAssembler(blocks[-1], max_le=self.max_le)
        step = asm.feed(self.euicc.transmit(blocks[-1]))
        while isinstance(step, A.SendNext):
            step = asm.feed(self.euicc.transmit(step.apdu))
        return step.data, step.sw

    def call(self, payload: bytes) -> bytes:
        data, sw = self.call_sw(payload)
        assert sw == 0x9000, f"SW {sw:04X}"
        return data


class Card(Channel):
    """The channel with decoded ES10 calls and a BPP load that stops at the first response with data."""

    def es10(self, request_type: str, value: Any, response_type: str) -> Any:
        return codec.decode(response_type, self.call(codec.encode(request_type, value)))

    def load_bpp(self, bpp: bytes) -> tuple[bytes, int]:
        """Send each ES8+ segment; returns (first response with data, index of that segment)."""
        segments = bpp_split.segments(bpp)
        for index, segment in enumerate(segments):
            data = self.call(segment)
            if data:
                return data, index
        raise AssertionError("no ProfileInstallationResult")


# --- SM-DP+ side --------------------------------------------------------------------------------


def iccid(n: int) -> bytes:
    digits = f"8949000000000000{n:03d}F"
    return bytes(int(digits[i + 1], 16) << 4 | int(digits[i], 16) for i in range(0, 20, 2))


@dataclass
class Order:
    iccid: bytes
    profile_class: int = 2
    notification_events: tuple[int, ...] = (0, 1, 2, 3)
    profile_policy_rules: tuple[int, ...] = ()
    fallback_allowed: bool | None = None
    ecall: bool | None = None
    pe_bytes: bytes = field(default_factory=lambda: os.urandom(1500))
    dp_oid: str | None = "2.999.10"          # ConfigureISDP's dpProprietaryData, None: left out


@dataclass
class MiniSmdp:
    pki: RspPki
    address: str = SMDP_ADDRESS
    dpauth_key: ec.EllipticCurvePrivateKey | None = None
    dpauth_der: bytes | None = None
    transaction_id: bytes = field(default_factory=lambda: os.urandom(16))
    server_challenge: bytes = field(default_factory=lambda: os.urandom(16))
    euicc_signature1: bytes = b""
    smdp_signature2: bytes = b""
    euicc_otpk: bytes = b""
    euicc_cert: x509.Certificate | None = None

    def authenticate_server_request(self, euicc_challenge: bytes, matching_id: str = "MATCH-1",
                                    ci_pkid: bytes | None = None) -> bytes:
        signed1 = {"transactionId": self.transaction_id, "euiccChallenge": euicc_challenge,
                   "serverAddress": self.address, "serverChallenge": self.server_challenge}
        key = self.dpauth_key or self.pki.dpauth.key
        cert = self.dpauth_der or self.pki.dpauth.cert_der
        signature = rspcrypto.sign_rs(key, codec.encode("ServerSigned1", signed1))
        return codec.encode("AuthenticateServerRequest", {
            "serverSigned1": signed1, "serverSignature1": signature,
            "euiccCiPKIdToBeUsed": ci_pkid or self.pki.ci_pkid, "serverCertificate": cert,
            "ctxParams1": ("ctxParamsForCommonAuthentication", {
                "matchingId": matching_id,
                "deviceInfo": {"tac": b"\x35\x29\x06\x11", "deviceCapabilities": {}}})})

    def check_authenticate_response(self, response: bytes) -> dict[str, Any]:
        kind, ok = codec.decode("AuthenticateServerResponse", response)
        assert kind == "authenticateResponseOk", ok
        self.euicc_cert = x509.load_der_x509_certificate(ok["euiccCertificate"])
        eum = x509.load_der_x509_certificate(ok["eumCertificate"])
        self.euicc_cert.verify_directly_issued_by(eum)
        eum.verify_directly_issued_by(self.pki.ci.cert)
        verify_rs(self.euicc_cert, raw_child(response, 0, 0), ok["euiccSignature1"])
        self.euicc_signature1 = ok["euiccSignature1"]
        return dict(ok)

    def prepare_download_request(self, *, cert_der: bytes | None = None,
                                 key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        signed2 = {"transactionId": self.transaction_id, "ccRequiredFlag": False}
        signature = rspcrypto.sign_rs(key or self.pki.dppb.key, signed_data.smdp_signature2_input(
            codec.encode("SmdpSigned2", signed2), self.euicc_signature1))
        self.smdp_signature2 = signature
        return codec.encode("PrepareDownloadRequest", {
            "smdpSigned2": signed2, "smdpSignature2": signature,
            "smdpCertificate": cert_der or self.pki.dppb.cert_der})

    def check_prepare_response(self, response: bytes) -> None:
        kind, ok = codec.decode("PrepareDownloadResponse", response)
        assert kind == "downloadResponseOk", ok
        assert self.euicc_cert is not None
        verify_rs(self.euicc_cert, raw_child(response, 0, 0) + b"\x5f\x37\x40" + self.smdp_signature2,
                  ok["euiccSignature2"])
        self.euicc_otpk = ok["euiccSigned2"]["euiccOtpk"]

    def bound_profile_package(self, eid: bytes, order: Order, *, replace_keys: bool = False,
                              host_id: bytes = b"test-smdp") -> bytes:
        ot = rspcrypto.generate_key()
        ot_pk = rspcrypto.public_key_bytes(ot.public_key())
        isc = {"remoteOpId": 1, "transactionId": self.transaction_id,
               "controlRefTemplate": {"keyType": b"\x88", "keyLen": b"\x10", "hostId": host_id},
               "smdpOtpk": ot_pk, "smdpSign": bytes(64)}
        draft = codec.encode("InitialiseSecureChannelRequest", isc)
        fields = b"".join(c.raw_of(draft) for c in tlv.children(draft, tlv.read_single(draft))[:-1])
        isc["smdpSign"] = rspcrypto.sign_rs(self.pki.dppb.key, signed_data.smdp_sign_input(fields, self.euicc_otpk))
        shared = rspcrypto.ecka_shared_secret(ot, rspcrypto.public_key_from_bytes(self.euicc_otpk))
        scp = rspcrypto.Scp03tSession.from_keys(rspcrypto.derive_session_keys(shared, host_id=host_id, eid=eid))

        def values(tag: int, segments: list[bytes]) -> list[bytes]:
            out = []
            for s in segments:
                node = tlv.read_single(s)
                assert node.tag == tag
                out.append(node.value_of(s))
            return out

        configure = codec.encode("ConfigureISDPRequest", {} if order.dp_oid is None
                                 else {"dpProprietaryData": {"dpOid": order.dp_oid}})
        meta: dict[str, Any] = {"iccid": order.iccid, "serviceProviderName": "Test Operator",
                                "profileName": f"Test profile {order.iccid.hex()}",
                                "profileClass": order.profile_class}
        if order.notification_events:
            meta["notificationConfigurationInfo"] = [{
                "profileManagementOperation": _bits(*order.notification_events),
                "notificationAddress": self.address}]
        if order.profile_policy_rules:
            meta["profilePolicyRules"] = _bits(*order.profile_policy_rules)
        if order.ecall is not None:
            meta["ecallIndication"] = order.ecall
        if order.fallback_allowed is not None:
            meta["fallbackAllowed"] = order.fallback_allowed
        metadata = codec.encode("StoreMetadataRequest", meta)
        package: dict[str, Any] = {
            "initialiseSecureChannelRequest": isc,
            "firstSequenceOf87": values(0x87, [rspcrypto.protect_segment(scp, 0x87, configure)]),
            "sequenceOf88": values(0x88, rspcrypto.protect_data(scp, 0x88, metadata)),
        }
        if replace_keys:
            ppk = rspcrypto.Scp03tSession(s_enc=os.urandom(16), s_mac=os.urandom(16), mac_chaining_value=os.urandom(16))
            rsk = codec.encode("ReplaceSessionKeysRequest", {
                "initialMacChainingValue": ppk.mac_chaining_value, "ppkEnc": ppk.s_enc, "ppkCmac": ppk.s_mac})
            package["secondSequenceOf87"] = values(0x87, [rspcrypto.protect_segment(scp, 0x87, rsk)])
            scp = ppk
        package["sequenceOf86"] = values(0x86, rspcrypto.protect_data(scp, 0x86, order.pe_bytes))
        return codec.encode("BoundProfilePackage", package)


def _bits(*positions: int) -> tuple[bytes, int]:
    nbits = max(positions) + 1
    data = bytearray((nbits + 7) // 8)
    for p in positions:
        data[p // 8] |= 0x80 >> (p % 8)
    return bytes(data), nbits


def download(card: Card, pki: RspPki, order: Order, **kw: Any) -> tuple[bytes, MiniSmdp]:
    """A complete profile download; returns the ProfileInstallationResult and the SM-DP+."""
    smdp = MiniSmdp(pki)
    challenge = card.es10("GetEuiccChallengeRequest", {}, "GetEuiccChallengeResponse")["euiccChallenge"]
    smdp.check_authenticate_response(card.call(smdp.authenticate_server_request(challenge)))
    smdp.check_prepare_response(card.call(smdp.prepare_download_request()))
    pir, _ = card.load_bpp(smdp.bound_profile_package(card.euicc.eid, order, **kw))
    return pir, smdp


# --- eIM side --------------------------------------------------------------------------------


def eim_configuration(pki: RspPki, eim_id: str = EIM_ID, *, counter: int = 0, association_token: bool = False,
                      certificate: bool = False, key: ec.EllipticCurvePrivateKey | None = None) -> dict[str, Any]:
    public = (key or pki.eim_sign.key).public_key()
    data: dict[str, Any] = {"eimId": eim_id, "eimFqdn": eim_id, "eimIdType": 2, "counterValue": counter,
                            "euiccCiPKId": pki.ci_pkid,
                            "eimSupportedProtocol": _bits(0, 2)}
    if certificate:
        data["eimPublicKeyData"] = ("eimCertificate", pki.eim_sign.cert_der)
    else:
        spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        data["eimPublicKeyData"] = ("eimPublicKey", codec.decode("SubjectPublicKeyInfo", spki))
    if association_token:
        data["associationToken"] = 0
    return data


def eim_package(pki: RspPki, eid: bytes, counter: int, package: tuple[str, list[Any]], *,
                eim_id: str = EIM_ID, transaction_id: bytes | None = b"\x01\x02",
                association_token: int | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    signed: dict[str, Any] = {"eimId": eim_id, "eidValue": eid, "counterValue": counter}
    if transaction_id is not None:
        signed["eimTransactionId"] = transaction_id
    signed["euiccPackage"] = package
    signature = rspcrypto.sign_rs(key or pki.eim_sign.key, signed_data.eim_signature_input(
        codec.encode("EuiccPackageSigned", signed), association_token))
    return codec.encode("EuiccPackageRequest", {"euiccPackageSigned": signed, "eimSignature": signature})
