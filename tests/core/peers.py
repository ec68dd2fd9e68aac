"""In-memory responders, kept only where no real peer (hil/peers) fits.

- `MiniSmds`: ES11 event retrieval. hil/peers has no SM-DS, so the engine's contactSmds
  tests (tests/core/test_e2e_download.py) reach this one through the driver, and download
  the profile from the real SM-DP+ peer the event names. The test PKI has no CERT.DSauth:
  it authenticates with the SM-DP+'s DPauth credential (the eUICC checks that role).
- `MiniSmdp`, `MiniEim`: synchronous stand-ins used only by tests/policy/test_e2e_gate.py,
  which drives the engine synchronously through the policy gate with tests/core/rig.py.
  tests/core runs against the real peers (tests/core/driver.py); delete these two and
  rig.py once that test moves there too.

What they do is real crypto: serverSigned1/smdpSigned2 signed with the test PKI's DPauth/DPpb
keys, session keys agreed with the eUICC's one-time key, the BPP SCP03t-protected; eIM
packages signed with the eIM key. They do not verify the eUICC's signatures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from gateway.spec import codec, es9p, es11, esipa, signed, tlv
from hil import rspcrypto
from hil.euicc import signed_data
from hil.pki import RspPki


def _bits(*positions: int, n: int = 4) -> tuple[bytes, int]:
    value = 0
    for p in positions:
        value |= 0x80 >> p
    return bytes([value]), n


@dataclass
class MiniSmdp:
    pki: RspPki
    address: str = "smdp.example"
    iccid: bytes = bytes.fromhex("98001032547698103214")
    profile_bytes: int = 30_000
    refuse: dict[str, tuple[str, str]] = field(default_factory=dict)   # function -> (subject, reason)
    sessions: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    notifications: list[bytes] = field(default_factory=list)
    cancelled: list[bytes] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def handle(self, function: str, body: bytes) -> bytes:
        self.calls.append(function)
        if function in self.refuse:
            subject, reason = self.refuse[function]
            header = es9p.ResponseHeader(es9p.FAILED, es9p.StatusCodeData(subject, reason))
            return es9p.header_only_json(header)
        out: bytes = getattr(self, "_" + function)(body)
        return out

    def metadata(self) -> bytes:
        return codec.encode("StoreMetadataRequest", {
            "iccid": self.iccid, "serviceProviderName": "Test", "profileName": "Test profile",
            "profileClass": 2,
            "notificationConfigurationInfo": [{"profileManagementOperation": _bits(0, 1, 2, 3),
                                               "notificationAddress": self.address}]})

    def _initiateAuthentication(self, body: bytes) -> bytes:
        req = es9p.InitiateAuthenticationRequest.from_json(body)
        tid = os.urandom(16)
        ss1 = codec.encode("ServerSigned1", {"transactionId": tid, "euiccChallenge": req.euicc_challenge,
                                             "serverAddress": self.address, "serverChallenge": os.urandom(16)})
        sig = rspcrypto.sign_rs(self.pki.dpauth.key, signed_data.server_signature1_input(ss1))
        self.sessions[tid] = {}
        return es9p.InitiateAuthenticationResponse(
            tid, ss1, signed.wrap(0x5F37, sig), signed.wrap(0x04, self.pki.ci_pkid),
            self.pki.dpauth.cert_der).to_json()

    def _authenticateClient(self, body: bytes) -> bytes:
        req = es9p.AuthenticateClientRequest.from_json(body)
        kind, value = codec.decode("AuthenticateServerResponse", req.authenticate_server_response)
        assert kind == "authenticateResponseOk", value
        tid = req.transaction_id
        self.sessions[tid]["eid_cert"] = value["euiccCertificate"]
        smdp_signed2 = codec.encode("SmdpSigned2", {"transactionId": tid, "ccRequiredFlag": False})
        sig2 = rspcrypto.sign_rs(self.pki.dppb.key, signed_data.smdp_signature2_input(
            smdp_signed2, value["euiccSignature1"]))
        return es9p.AuthenticateClientResponse(tid, self.metadata(), smdp_signed2, signed.wrap(0x5F37, sig2),
                                               self.pki.dppb.cert_der).to_json()

    def _getBoundProfilePackage(self, body: bytes) -> bytes:
        req = es9p.GetBoundProfilePackageRequest.from_json(body)
        kind, value = codec.decode("PrepareDownloadResponse", req.prepare_download_response)
        assert kind == "downloadResponseOk", value
        tid = req.transaction_id
        eid = bytes.fromhex(rspcrypto.euicc_eid(rspcrypto.load_certificate_der(self.sessions[tid]["eid_cert"])))
        euicc_otpk = value["euiccSigned2"]["euiccOtpk"]
        return es9p.GetBoundProfilePackageResponse(tid, self.bound_profile_package(tid, eid, euicc_otpk)).to_json()

    def bound_profile_package(self, tid: bytes, eid: bytes, euicc_otpk: bytes) -> bytes:
        ot = rspcrypto.generate_key()
        ot_pub = rspcrypto.public_key_bytes(ot.public_key())
        host_id = b"gateway-test"
        isc = {"remoteOpId": 1, "transactionId": tid,
               "controlRefTemplate": {"keyType": b"\x88", "keyLen": b"\x10", "hostId": host_id},
               "smdpOtpk": ot_pub, "smdpSign": bytes(64)}
        draft = codec.encode("InitialiseSecureChannelRequest", isc)
        parts = tlv.children(draft, tlv.read_single(draft))
        signed_part = b"".join(p.raw_of(draft) for p in parts if p.tag != 0x5F37)
        isc["smdpSign"] = rspcrypto.sign_rs(self.pki.dppb.key, signed_data.smdp_sign_input(signed_part, euicc_otpk))
        isc_der = codec.encode("InitialiseSecureChannelRequest", isc)
        shared = rspcrypto.ecka_shared_secret(ot, rspcrypto.public_key_from_bytes(euicc_otpk))
        scp = rspcrypto.Scp03tSession.from_keys(rspcrypto.derive_session_keys(shared, host_id=host_id, eid=eid))
        seg87 = rspcrypto.protect_data(scp, 0x87, codec.encode("ConfigureISDPRequest", {}))
        seg88 = rspcrypto.protect_data(scp, 0x88, self.metadata())
        seg86 = rspcrypto.protect_data(scp, 0x86, os.urandom(self.profile_bytes))
        return signed.wrap(0xBF36, isc_der, signed.wrap(0xA0, *seg87), signed.wrap(0xA1, *seg88),
                           signed.wrap(0xA3, *seg86))

    def _handleNotification(self, body: bytes) -> bytes:
        self.notifications.append(es9p.HandleNotificationRequest.from_json(body).pending_notification)
        return b""

    def _cancelSession(self, body: bytes) -> bytes:
        self.cancelled.append(es9p.CancelSessionRequest.from_json(body).cancel_session_response)
        return es9p.header_only_json(es9p.SUCCESS_HEADER)


@dataclass
class MiniSmds:
    """An SM-DS stand-in for ES11 event retrieval (see the module docstring)."""

    pki: RspPki
    address: str = "smds.example"
    events: list[tuple[str, str]] = field(default_factory=list)   # (eventId, rspServerAddress)
    calls: list[str] = field(default_factory=list)

    def handle(self, function: str, body: bytes) -> bytes:
        self.calls.append(function)
        if function == es11.INITIATE_AUTHENTICATION:
            init = es11.InitiateAuthenticationRequest.from_json(body)
            smdp = MiniSmdp(self.pki, address=self.address)
            return smdp._initiateAuthentication(es9p.InitiateAuthenticationRequest(
                init.euicc_challenge, init.euicc_info1, self.address).to_json())
        if function == es11.AUTHENTICATE_CLIENT:
            auth = es9p.AuthenticateClientRequest.from_json(body)
            kind, _ = codec.decode("AuthenticateServerResponse", auth.authenticate_server_response)
            assert kind == "authenticateResponseOk"
            return es11.AuthenticateClientResponse(
                tuple(es11.EventEntry(e, a) for e, a in self.events), auth.transaction_id).to_json()
        raise AssertionError(f"unexpected ES11 function {function}")


@dataclass
class MiniEim:
    pki: RspPki
    eim_id: str = "eim-test"
    fqdn: str = "eim.example"
    counter: int = 0
    packages: dict[bytes, list[bytes]] = field(default_factory=dict)   # eid -> GetEimPackageResponse bodies
    results: list[bytes] = field(default_factory=list)                 # ProvideEimPackageResult bodies
    notifications: list[bytes] = field(default_factory=list)
    polls: list[dict[str, Any]] = field(default_factory=list)
    acknowledge: list[int] = field(default_factory=list)   # seqNumbers for EimAcknowledgements

    def initial_eim(self) -> dict[str, Any]:
        """EimConfigurationData for the engine's AddInitialEim."""
        return {"eimId": self.eim_id, "eimFqdn": self.fqdn, "counterValue": 0,
                "eimPublicKeyData": ("eimCertificate", self.pki.eim_sign.cert_der)}

    def queue_trigger(self, eid: bytes, activation_code: str | None, tid: bytes, *,
                      smds: str | None = None) -> None:
        data: tuple[str, Any] = (("activationCode", activation_code) if activation_code is not None
                                 else ("contactSmds", {"smdsAddress": smds} if smds else {}))
        value = {"profileDownloadData": data, "eimTransactionId": tid}
        self.packages.setdefault(eid, []).append(
            esipa.encode_from_eim("getEimPackageResponse", ("profileDownloadTriggerRequest", value)))

    def euicc_package_request(self, eid: bytes, operations: list[tuple[str, Any]], tid: bytes,
                              kind: str = "psmoList") -> bytes:
        self.counter += 1
        signed_value = {"eimId": self.eim_id, "eidValue": eid, "counterValue": self.counter,
                        "eimTransactionId": tid, "euiccPackage": (kind, operations)}
        epr_signed = codec.encode("EuiccPackageSigned", signed_value)
        sig = rspcrypto.sign_rs(self.pki.eim_sign.key, signed_data.eim_signature_input(epr_signed, None))
        return signed.wrap(0xBF51, epr_signed, signed.wrap(0x5F37, sig))

    def queue_package(self, eid: bytes, request: bytes) -> None:
        self.packages.setdefault(eid, []).append(signed.wrap(0xBF4F, request))

    @staticmethod
    def transfer(package: bytes) -> bytes:
        """A TransferEimPackageRequest (push) carrying `package` (BF51/BF52/BF53/BF54)."""
        return signed.wrap(0xBF4E, package)

    @staticmethod
    def acknowledgements(seqs: list[int]) -> bytes:
        return codec.encode("EimAcknowledgements", seqs)

    def results_of(self) -> list[tuple[str, Any]]:
        """The eimPackageResult alternative and value of each ProvideEimPackageResult received."""
        return [codec.decode("ProvideEimPackageResult", r)["eimPackageResult"] for r in self.results]

    def handle(self, body: bytes) -> bytes:
        kind, value = esipa.decode_from_ipa(body)
        if kind == "getEimPackageRequest":
            self.polls.append(value)
            queue = self.packages.get(bytes(value["eidValue"]), [])
            if queue:
                return queue.pop(0)
            return esipa.encode_from_eim("getEimPackageResponse", ("eimPackageError", 1))
        if kind == "provideEimPackageResult":
            self.results.append(body)
            if self.acknowledge:
                acks, self.acknowledge = self.acknowledge, []
                return esipa.encode_from_eim("provideEimPackageResultResponse", ("eimAcknowledgements", acks))
            return esipa.encode_from_eim("provideEimPackageResultResponse", ("emptyResponse", {}))
        if kind == "handleNotificationEsipa":
            self.notifications.append(body)
            return b""
        raise AssertionError(f"unexpected ESipa message {kind}")
