"""The eIM itself (SGP.32 v1.2 §3, §5.14 ESipa, server side), without HTTP.

Theory of operation. The eIM keeps one `Device` per EID: the counter of its last signed
package, the association token if one was agreed, the eUICC certificate (trusted only after
its chain to the CI and the EID constraint verified), one queue of packages, and everything
received from it. The admin API queues packages: PSMO and eCO lists become an
EuiccPackageRequest signed at once with the eIM key and the next counter value
(`signing.sign_euicc_package`); eUICC data requests and profile download triggers are queued
as they are. Every package gets an eimTransactionId that its result must carry.

ESipa functions take and return *normalized* values (see `wire`): what the eUICC signed is
the exact bytes received, checked with the eUICC certificate over exactly those bytes.

- GetEimPackage hands out the head of the EID's queue (again, unchanged, until its result
  arrives: a retrying IPA gets the same package), or noEimPackageAvailable / eidNotFound.
- ProvideEimPackageResult (and HandleNotification carrying one) verifies euiccSignEPR/EPE,
  ties the result to its package by counterValue and eimTransactionId, stores it once (a
  result sent twice is acknowledged twice, stored once) and answers EimAcknowledgements
  with the sequence numbers to remove from the eUICC; a result whose signature does not
  verify is refused (undefinedError) and left unacknowledged.
- HandleNotification stores each pending notification once (signature checked with the
  certificates it carries, or for a ProfileInstallationResult with the eUICC certificate of
  its download) and forwards install results of proxied downloads to the SM-DP+.
- InitiateAuthentication / AuthenticateClient / GetBoundProfilePackage / CancelSession
  (indirect download) are relayed to the SM-DP+ (`relay`).
- With an inject URL configured, packages and acknowledgements are also pushed to the IPA
  with TransferEimPackage (`push`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.backhaul import es9p_client
from gateway.backhaul.http import BackhaulHttp, TlsTrust
from gateway.errors import DecodeError, GatewayError, LocalProtocolError
from gateway.spec import codec, es9p
from hil import rspcrypto
from hil.peers import common
from hil.peers.eim import packages, persist, push, relay, signing
from hil.peers.eim.model import Device, Package, ProxiedSession, Record, readable, stable_digest
from hil.peers.eim.wire import Embedded
from hil.pki import RspPki

log = logging.getLogger(__name__)

DEFAULT_EIM_ID = "ipae-test-eim"
DEFAULT_SESSION_TTL_S = 300.0
MAX_COUNTER = 0x7FFFFF
UNDEFINED = 127


class Eim:
    def __init__(self, pki: RspPki, *, eim_id: str = DEFAULT_EIM_ID, fqdn: str = "",
                 smdp_url: str | None = None, inject_url: str | None = None,
                 inject_ca_file: str | None = None, inject_binding: str = "asn1",
                 session_ttl_s: float = DEFAULT_SESSION_TTL_S, state_file: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pki = pki
        self.session_ttl_s = session_ttl_s
        self.eim_id = eim_id
        self.fqdn = fqdn
        self.clock = clock
        self.smdp_url = smdp_url
        self.inject_url = inject_url
        if inject_binding not in push.BINDINGS:
            raise ValueError(f"inject binding is one of {push.BINDINGS}")
        self.inject_binding = inject_binding
        self.inject_trust = TlsTrust(ca_file=inject_ca_file) if inject_ca_file else TlsTrust(
            ca_file=str(pki.tls_trust_path))
        self.server_trust = TlsTrust(ca_file=str(pki.tls_trust_path))
        self.devices: dict[bytes, Device] = {}
        self.sessions: dict[bytes, ProxiedSession] = {}
        self.unassigned: list[Record] = []
        self._seen_unassigned: set[str] = set()
        self._forwarded: set[bytes] = set()
        self.next_package = 1
        self.background: set[asyncio.Task[None]] = set()
        self.http: BackhaulHttp | None = None
        self.state_file = state_file
        if state_file is not None and state_file.exists():
            persist.load(self, state_file)

    def save(self) -> None:
        """Write the state file (when there is one) after a change."""
        if self.state_file is not None:
            persist.save(self, self.state_file)

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        self.http = BackhaulHttp()

    async def close(self) -> None:
        for task in list(self.background):
            task.cancel()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        if self.http is not None:
            await self.http.close()
            self.http = None

    def client(self) -> BackhaulHttp:
        if self.http is None:
            self.http = BackhaulHttp()
        return self.http

    # -- identity -------------------------------------------------------------------------------

    def own_configuration_data(self, *, counter: int = 0, association_token: bool = False,
                               indirect_download: bool = True) -> dict[str, Any]:
        """This eIM's EimConfigurationData, for AddInitialEim or an addEim eCO."""
        data: dict[str, Any] = {"eimId": self.eim_id, "eimFqdn": self.fqdn, "eimIdType": 2,
                                "counterValue": counter,
                                "eimPublicKeyData": ("eimCertificate", self.pki.eim_sign.cert_der),
                                "trustedPublicKeyDataTls": ("trustedCertificateTls", self.pki.tls_ca.cert_der),
                                "eimSupportedProtocol": (bytes([0xA0]), 5),
                                "euiccCiPKId": self.pki.ci_pkid}
        if association_token:
            data["associationToken"] = 0
        if indirect_download:
            data["indirectProfileDownload"] = None
        return data

    # -- devices and packages (admin) -------------------------------------------------------

    def device(self, eid: bytes, *, create: bool = True) -> Device | None:
        device = self.devices.get(eid)
        if device is None and create:
            device = self.devices[eid] = Device(eid, certs=self._certificate_from_pki(eid))
        return device

    def _certificate_from_pki(self, eid: bytes) -> common.EuiccCertificates | None:
        eid_text = eid.hex()
        for name in ("euicc.cert.pem", f"euicc-{eid_text}.cert.pem"):
            path = Path(self.pki.directory) / name
            if not path.exists():
                continue
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
                certs = common.verify_euicc_certificates(cert.public_bytes(Encoding.DER),
                                                         self.pki.eum.cert_der, self.pki.ci.cert)
            except (ValueError, rspcrypto.RspCryptoError):
                continue
            if certs.eid == eid:
                return certs
        return None

    def register(self, eid: bytes, *, counter: int | None = None, association_token: int | None = None,
                 euicc_certificate: bytes | None = None, eum_certificate: bytes | None = None) -> Device:
        device = self.device(eid)
        assert device is not None
        if counter is not None:
            if not 0 <= counter <= MAX_COUNTER:
                raise common.AdminError("counterValue out of range")
            device.counter = counter
        if association_token is not None:
            device.association_token = association_token
        if euicc_certificate is not None:
            try:
                certs = common.verify_euicc_certificates(euicc_certificate,
                                                         eum_certificate or self.pki.eum.cert_der,
                                                         self.pki.ci.cert)
            except rspcrypto.RspCryptoError as exc:
                raise common.AdminError(f"certificate refused: {exc}") from None
            if certs.eid != eid:
                raise common.AdminError("the certificate is for another EID")
            device.certs = certs
        self.save()
        return device

    def _new_package(self, device: Device, kind: str, request: dict[str, Any], payload: Any,
                     transaction_id: bytes, counter: int | None = None) -> Package:
        package = Package(self.next_package, device.eid, kind, transaction_id, request, payload, counter)
        self.next_package += 1
        device.packages.append(package)
        self.save()
        return package

    def _transaction_id(self) -> bytes:
        return self.next_package.to_bytes(4, "big") + os.urandom(4)

    def queue_euicc_package(self, eid: bytes, request: dict[str, Any]) -> Package:
        """{"psmo": [...]} or {"eco": [...]} -> one signed EuiccPackageRequest."""
        device = self.device(eid)
        assert device is not None
        if "psmo" in request:
            ops, make = request["psmo"], packages.psmo
            kind = "psmoList"
        elif "eco" in request:
            ops = request["eco"]
            own = self.own_configuration_data()
            kind = "ecoList"

            def make(op: dict[str, Any]) -> tuple[str, Any]:
                return packages.eco(op, own)
        else:
            raise common.AdminError("an eUICC package needs 'psmo' or 'eco'")
        if not isinstance(ops, list) or not ops or not all(isinstance(o, dict) for o in ops):
            raise common.AdminError(f"{kind}: a non-empty list of operations")
        operations = [make(o) for o in ops]
        if device.counter >= MAX_COUNTER:
            raise common.AdminError("counterValue exhausted for this EID", status=409)
        counter = device.counter + 1
        transaction_id = self._transaction_id()
        signed = {"eimId": self.eim_id, "eidValue": eid, "counterValue": counter,
                  "eimTransactionId": transaction_id, "euiccPackage": (kind, operations)}
        try:
            der = signing.sign_euicc_package(self.pki.eim_sign.key, signed, device.association_token)
        except LocalProtocolError as exc:
            raise common.AdminError(f"the operations do not encode: {exc}") from None
        device.counter = counter
        return self._new_package(device, "euiccPackageRequest", request,
                                 Embedded("EuiccPackageRequest", der), transaction_id, counter)

    def queue_ipa_euicc_data_request(self, eid: bytes, request: dict[str, Any]) -> Package:
        device = self.device(eid)
        assert device is not None
        transaction_id = self._transaction_id()
        value = packages.ipa_euicc_data_request(request, transaction_id)
        return self._new_package(device, "ipaEuiccDataRequest", request, value, transaction_id)

    def queue_profile_download(self, eid: bytes, request: dict[str, Any]) -> Package:
        device = self.device(eid)
        assert device is not None
        transaction_id = self._transaction_id()
        value = packages.profile_download_trigger(request, transaction_id)
        return self._new_package(device, "profileDownloadTriggerRequest", request, value, transaction_id)

    # -- ESipa ----------------------------------------------------------------------------------

    async def handle(self, alternative: str, value: Any) -> tuple[str, Any] | None:
        """One normalized IPA message -> the eIM's answer (alternative, value), None for no body."""
        answer = await self._dispatch(alternative, value)
        self.save()
        return answer

    async def _dispatch(self, alternative: str, value: Any) -> tuple[str, Any] | None:
        if alternative == "getEimPackageRequest":
            return "getEimPackageResponse", self.get_eim_package(value)
        if alternative == "provideEimPackageResult":
            return "provideEimPackageResultResponse", await self.provide_eim_package_result(value)
        if alternative == "handleNotificationEsipa":
            await self.handle_notification(value)
            return None
        if alternative == "initiateAuthenticationRequestEsipa":
            return "initiateAuthenticationResponseEsipa", await relay.initiate_authentication(self, value)
        if alternative == "authenticateClientRequestEsipa":
            return "authenticateClientResponseEsipa", await relay.authenticate_client(self, value)
        if alternative == "getBoundProfilePackageRequestEsipa":
            return "getBoundProfilePackageResponseEsipa", await relay.get_bound_profile_package(self, value)
        if alternative == "cancelSessionRequestEsipa":
            return "cancelSessionResponseEsipa", await relay.cancel_session(self, value)
        raise DecodeError(f"{alternative} is not a request the eIM serves", type_name="ESipa")

    def get_eim_package(self, value: dict[str, Any]) -> tuple[str, Any]:  # SGP.32 §5.14.2
        device = self.devices.get(value["eidValue"])
        if device is None:
            return ("eimPackageError", 2)    # eidNotFound
        if "notifyStateChange" in value or "stateChangeCause" in value or "rPLMN" in value:
            device.state_changes.append({
                "at": self.clock(), "notifyStateChange": "notifyStateChange" in value,
                "stateChangeCause": value.get("stateChangeCause"),
                "rPLMN": value["rPLMN"].hex() if "rPLMN" in value else None})
        package = next((p for p in device.packages if p.pending), None)
        if package is None:
            return ("eimPackageError", 1)    # noEimPackageAvailable
        package.state = "delivered"
        package.deliveries += 1
        return (package.kind, package.payload)

    async def provide_eim_package_result(self, value: dict[str, Any]) -> tuple[str, Any]:  # §5.14.3
        eid = value.get("eidValue")
        if eid is None:
            return ("provideEimPackageResultError", 4)   # missingEid
        device = self.devices.get(eid)
        if device is None:
            return ("provideEimPackageResultError", 2)   # eidNotFound
        acks = await self.take_result(device, value["eimPackageResult"])
        if acks is None:
            return ("provideEimPackageResultError", UNDEFINED)
        acks = sorted(set(acks + device.pending_acks))
        device.pending_acks.clear()
        return ("eimAcknowledgements", acks) if acks else ("emptyResponse", {})

    async def take_result(self, device: Device, choice: tuple[str, Any]) -> list[int] | None:
        """Store one EimPackageResult once; the sequence numbers to acknowledge, None if refused."""
        digest = stable_digest(choice)
        if digest in device.seen:
            return list(device.seen[digest])
        kind, value = choice
        acks: list[int] = []
        ok = True
        if kind == "euiccPackageResult":
            ok = self._euicc_package_result(device, value, acks)
        elif kind == "ePRAndNotifications":
            ok = self._euicc_package_result(device, value["euiccPackageResult"], acks)
            for note in value["notificationList"]:
                await self._notification(note, device, acks)
        elif kind == "ipaEuiccDataResponse":
            ok = await self._ipa_euicc_data(device, value, acks)
        elif kind == "profileDownloadTriggerResult":
            ok = await self._download_result(device, value, acks)
        elif kind == "eimPackageResultResponseError":
            package = self.package_by_tid(device, value.get("eimTransactionId"))
            self.finish_package(package, "failed", {"eimPackageResultErrorCode": value["eimPackageResultErrorCode"]})
            device.results.append(Record(self.clock(), kind, False, "the IPA could not process the package",
                                         None, package.package_id if package else None, b"",
                                         readable("EimPackageResultResponseError", value)))
        elif kind == "eimPackageReceived":
            return []
        elif kind == "eimPackageError":
            device.results.append(Record(self.clock(), kind, False, f"eimPackageError {value}",
                                         None, None, b""))
            return []
        if not ok:
            return None
        device.seen[digest] = acks
        return acks

    def _verify(self, device: Device, signed: bytes, signature: bytes) -> str | None:
        """None when the eUICC of `device` signed `signed`; else why not."""
        if device.certs is None:
            return "no verified eUICC certificate for this EID"
        try:
            common.verify_euicc_signed(device.certs.certificate, signed, signature)
        except rspcrypto.RspCryptoError as exc:
            return str(exc)
        return None

    def package_by_tid(self, device: Device, tid: bytes | None) -> Package | None:
        if tid is None:
            return None
        return next((p for p in device.packages if p.eim_transaction_id == tid), None)

    def finish_package(self, package: Package | None, state: str, result: dict[str, Any]) -> None:
        if package is not None and package.pending:
            package.state = state
            package.result = result

    def _euicc_package_result(self, device: Device, raw: bytes, acks: list[int]) -> bool:
        try:
            kind, value = codec.decode("EuiccPackageResult", raw)
        except DecodeError as exc:
            device.results.append(Record(self.clock(), "undecodable", False, str(exc), None, None, raw))
            return False
        view = readable("EuiccPackageResult", (kind, value))
        if kind == "euiccPackageErrorUnsigned":
            package = self.package_by_tid(device, value.get("eimTransactionId"))
            self.finish_package(package, "failed", {"euiccPackageErrorUnsigned": view})
            device.results.append(Record(self.clock(), kind, False,
                                         "unsigned: the eUICC did not accept the eIM signature",
                                         None, package.package_id if package else None, raw, view))
            return True
        data_key, sig_key = (("euiccPackageResultDataSigned", "euiccSignEPR")
                             if kind == "euiccPackageResultSigned"
                             else ("euiccPackageErrorDataSigned", "euiccSignEPE"))
        data = value[data_key]
        signed = common.raw_child(raw, 0, 0)
        why = self._verify(device, signing.euicc_package_result_signature_input(signed, device.association_token),
                           value[sig_key])
        if why is None and data["eimId"] != self.eim_id:
            why = f"result for eIM {data['eimId']!r}"
        package = next((p for p in device.packages if p.counter == data["counterValue"]
                        and p.eim_transaction_id == data.get("eimTransactionId", p.eim_transaction_id)), None)
        seq = data.get("seqNumber")
        record = Record(self.clock(), kind, why is None, why or "ok", seq,
                        package.package_id if package else None, raw, view)
        device.results.append(record)
        if why is not None:
            return False
        self.finish_package(package, "done" if kind == "euiccPackageResultSigned" else "failed", view)
        if seq is not None:
            acks.append(seq)
        return True

    async def _ipa_euicc_data(self, device: Device, value: tuple[str, Any], acks: list[int]) -> bool:
        kind, data = value
        if kind != "ipaEuiccData":
            package = self.package_by_tid(device, data.get("eimTransactionId"))
            self.finish_package(package, "failed", readable("IpaEuiccDataResponseError", data))
            device.results.append(Record(self.clock(), "ipaEuiccDataResponseError", True, "error",
                                         None, package.package_id if package else None, b""))
            return True
        detail = "ok"
        if "euiccCertificate" in data:
            try:
                certs = common.verify_euicc_certificates(data["euiccCertificate"],
                                                         data.get("eumCertificate", self.pki.eum.cert_der),
                                                         self.pki.ci.cert)
                if certs.eid == device.eid:
                    device.certs = certs
                else:
                    detail = "euiccCertificate is for another EID"
            except rspcrypto.RspCryptoError as exc:
                detail = f"certificates refused: {exc}"
        for note in data.get("notificationsList", []):
            await self._notification(note, device, acks)
        for epr in data.get("euiccPackageResultList", []):
            digest = stable_digest(("euiccPackageResult", epr))
            if digest not in device.seen and self._euicc_package_result(device, epr, acks):
                device.seen[digest] = []
        package = self.package_by_tid(device, data.get("eimTransactionId"))
        summary = {k: (v.hex() if isinstance(v, bytes) else len(v) if isinstance(v, list) else v)
                   for k, v in data.items() if k not in ("ipaCapabilities", "deviceInfo")}
        self.finish_package(package, "done", summary)
        device.results.append(Record(self.clock(), "ipaEuiccData", detail == "ok", detail, None,
                                     package.package_id if package else None, b"", summary))
        return True

    async def _download_result(self, device: Device, value: dict[str, Any], acks: list[int]) -> bool:
        package = self.package_by_tid(device, value.get("eimTransactionId"))
        kind, data = value["profileDownloadTriggerResultData"]
        if kind == "profileInstallationResult":
            verified, detail = await self._installation_result(data, device)
            record = Record(self.clock(), "profileDownloadTriggerResult", verified, detail, None,
                            package.package_id if package else None, data,
                            readable("ProfileInstallationResult", codec.decode("ProfileInstallationResult", data)))
            device.results.append(record)
            if not verified:
                return False
            pir_data = codec.decode("ProfileInstallationResult", data)["profileInstallationResultData"]
            success = pir_data["finalResult"][0] == "successResult"
            self.finish_package(package, "done" if success else "failed",
                         {"finalResult": readable("ProfileInstallationResult", codec.decode(
                             "ProfileInstallationResult", data))})
            acks.append(pir_data["notificationMetadata"]["seqNumber"])
            return True
        self.finish_package(package, "failed", {"profileDownloadError": readable("ProfileDownloadTriggerResult", value)})
        device.results.append(Record(self.clock(), "profileDownloadError", True, "download failed", None,
                                     package.package_id if package else None, b""))
        return True

    async def _installation_result(self, raw: bytes, device: Device | None) -> tuple[bool, str]:
        """Verify a ProfileInstallationResult (euiccSignPIR) and forward it to its SM-DP+."""
        value = codec.decode("ProfileInstallationResult", raw)
        tid = value["profileInstallationResultData"]["transactionId"]
        session = self.sessions.get(tid)
        if device is None and session is not None and session.eid is not None:
            device = self.devices.get(session.eid)
        if device is None:
            return False, "no download known for this transactionId"
        why = self._verify(device, common.raw_child(raw, 0), value["euiccSignPIR"])
        if why is None and session is not None and raw not in self._forwarded:
            self._forwarded.add(raw)
            try:
                await es9p_client.handle_notification(self.client(), session.server,
                                                      es9p.HandleNotificationRequest(raw))
            except GatewayError as exc:
                log.warning("forwarding the installation result to %s failed: %s", session.server.base_url, exc)
                self._forwarded.discard(raw)
        return why is None, why or "ok"

    async def _notification(self, raw: bytes, device: Device | None, acks: list[int]) -> Device | None:
        """Verify and store one PendingNotification once; the device it belongs to, if known."""
        try:
            kind, value = codec.decode("PendingNotification", raw)
        except DecodeError as exc:
            self.unassigned.append(Record(self.clock(), "undecodable", False, str(exc), None, None, raw))
            return device
        seq: int | None = None
        verified, detail = False, "ok"
        if kind == "profileInstallationResult":
            seq = value["profileInstallationResultData"]["notificationMetadata"]["seqNumber"]
            tid = value["profileInstallationResultData"]["transactionId"]
            session = self.sessions.get(tid)
            if device is None and session is not None and session.eid is not None:
                device = self.devices.get(session.eid)
            verified, detail = await self._installation_result(raw, device)
        elif kind == "otherSignedNotification":
            seq = value["tbsOtherNotification"]["seqNumber"]
            try:
                certs = common.verify_euicc_certificates(value["euiccCertificate"], value["eumCertificate"],
                                                         self.pki.ci.cert)
                common.verify_euicc_signed(certs.certificate, common.raw_child(raw, 0),
                                           value["euiccNotificationSignature"])
                verified = True
                if device is None:
                    device = self.device(certs.eid)
                elif device.eid != certs.eid:
                    verified, detail = False, "notification of another EID"
                if device is not None and device.certs is None:
                    device.certs = certs
            except rspcrypto.RspCryptoError as exc:
                detail = str(exc)
        else:
            detail = "compact notification (not verified by this eIM)"
        record = Record(self.clock(), kind, verified, detail, seq, None, raw,
                        readable("PendingNotification", (kind, value)))
        digest = hashlib.sha256(raw).hexdigest()
        if device is None:
            if digest not in self._seen_unassigned:
                self._seen_unassigned.add(digest)
                self.unassigned.append(record)
            return None
        if ("n:" + digest) not in device.seen:
            device.seen["n:" + digest] = []
            device.notifications.append(record)
        if verified and seq is not None:
            acks.append(seq)
        return device

    async def handle_notification(self, value: tuple[str, Any]) -> None:  # §5.14.4
        kind, inner = value
        if kind == "pendingNotification":
            acks: list[int] = []
            device = await self._notification(inner, None, acks)
            if device is not None and acks:
                device.pending_acks.extend(a for a in acks if a not in device.pending_acks)
                push.push_acknowledgements_later(self, device)
            return
        eid = inner.get("eidValue")
        device = self.devices.get(eid) if eid is not None else None
        if device is None:
            return
        result_acks = await self.take_result(device, inner["eimPackageResult"])
        if result_acks:
            device.pending_acks.extend(a for a in result_acks if a not in device.pending_acks)
            push.push_acknowledgements_later(self, device)

    async def push(self, package: Package) -> str:
        """Push one package with TransferEimPackage (see `push`); what happened, in words."""
        device = self.devices[package.eid]
        outcome = await push.push(self, device, package)
        self.save()
        return outcome
