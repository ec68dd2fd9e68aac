"""The SM-DP+ itself (SGP.22 §3.1.3 server side, §5.6 ES9+), without HTTP.

Theory of operation. An `SmdpPlus` holds download orders (what the admin API ordered) and
RSP sessions (one per transactionId, from initiateAuthentication on, with an expiry). Each
ES9+ function takes the request dataclass of `gateway.spec.es9p` and returns the response
dataclass, or raises `Refusal` with the function's subjectCode/reasonCode:

- initiateAuthentication checks the SM-DP+ address and EUICCInfo1 (SVN, a CI both sides
  know), opens a session and signs serverSigned1 with SK.DPauth;
- authenticateClient verifies CERT.EUM and CERT.EUICC up to the CI (validity, roles, the EID
  under the EUM's name constraint), euiccSignature1 over the exact euiccSigned1 bytes
  received, the transactionId and serverChallenge, then picks the order by matchingId (or the
  EID's default order) and signs smdpSigned2 || euiccSignature1 with SK.DPpb;
- getBoundProfilePackage verifies euiccSignature2 over euiccSigned2 || smdpSignature2 and
  binds the profile to otPK.EUICC.ECKA (`bpp_builder`);
- handleNotification verifies the ProfileInstallationResult (or other notification) signature
  and moves the order to installed/failed; every notification is recorded once (a resent one
  is acknowledged again but not stored twice);
- cancelSession verifies the eUICC's signed cancellation and releases or cancels the order.

Time comes from an injectable clock, so tests can expire sessions and orders instantly.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509

from gateway.errors import DecodeError
from gateway.spec import codec, es9p, tlv
from hil import rspcrypto
from hil.peers import common
from hil.peers.smdpp import codes
from hil.peers.smdpp.bpp_builder import BoundPackage, ProfileSpec, build_bpp
from hil.peers.smdpp.codes import Refusal
from hil.pki import RspPki

DEFAULT_SESSION_TTL_S = 300.0
DEFAULT_PROFILE_SIZE = 8 * 1024
MAX_PROFILE_SIZE = 1024 * 1024
SUPPORTED_SVN_MAJOR = 2
# CancelSessionReason values after which the order stays available (§3.1.3.4 / §5.6.5)
RETRYABLE_CANCEL_REASONS = frozenset({1, 2, 5, 127})   # postponed, timeout, loadBppExecutionError, undefined

ORDER_RELEASED = "released"
ORDER_DOWNLOADING = "downloading"
ORDER_INSTALLED = "installed"
ORDER_FAILED = "failed"
ORDER_CANCELLED = "cancelled"
ORDER_DELETED = "deleted"


@dataclass
class Order:
    order_id: str
    matching_id: str
    iccid: bytes
    size: int
    eid: bytes | None = None
    expires_at: float | None = None
    profile_name: str = "ipae test profile"
    notification_address: str = ""
    replace_session_keys: bool = False
    state: str = ORDER_RELEASED
    transaction_id: bytes | None = None
    euicc_certificate: bytes | None = None   # DER, kept to verify later notifications
    attempts: int = 0
    history: list[str] = field(default_factory=list)

    def spec(self) -> ProfileSpec:
        return ProfileSpec(iccid=self.iccid, size=self.size, profile_name=self.profile_name,
                           notification_address=self.notification_address,
                           replace_session_keys=self.replace_session_keys)

    def to_json(self, address: str) -> dict[str, Any]:
        return {
            "orderId": self.order_id, "matchingId": self.matching_id,
            "activationCode": f"1${address}${self.matching_id}",
            "iccid": common.iccid_to_str(self.iccid), "size": self.size,
            "eid": self.eid.hex() if self.eid else None, "expiresAt": self.expires_at,
            "profileName": self.profile_name, "replaceSessionKeys": self.replace_session_keys,
            "state": self.state,
            "transactionId": self.transaction_id.hex().upper() if self.transaction_id else None,
            "attempts": self.attempts, "history": list(self.history),
        }

    def to_state(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("iccid", "eid", "transaction_id", "euicc_certificate"):
            out[key] = out[key].hex() if out[key] is not None else None
        return out

    @classmethod
    def from_state(cls, obj: dict[str, Any]) -> Order:
        data = dict(obj)
        for key in ("iccid", "eid", "transaction_id", "euicc_certificate"):
            data[key] = bytes.fromhex(data[key]) if data.get(key) is not None else None
        return cls(**data)


@dataclass
class Session:
    transaction_id: bytes
    expires_at: float
    euicc_challenge: bytes
    server_challenge: bytes
    ci: x509.Certificate
    state: str = "initiated"            # initiated -> authenticated -> bound -> closed
    euicc: common.EuiccCertificates | None = None
    euicc_signature1: bytes = b""
    smdp_signature2: bytes = b""
    order: Order | None = None
    bpp: BoundPackage | None = None
    bound_otpk: bytes = b""


@dataclass
class ReceivedNotification:
    received_at: float
    kind: str
    verified: bool
    detail: str
    seq_number: int | None
    transaction_id: str | None
    iccid: str | None
    event: str | None
    der: bytes

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["der"] = self.der.hex()
        return out


class SmdpPlus:
    def __init__(self, pki: RspPki, *, address: str, aliases: tuple[str, ...] = (),
                 session_ttl_s: float = DEFAULT_SESSION_TTL_S, state_file: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pki = pki
        self.address = address
        self.addresses: set[str] = set()
        self.set_address(address, aliases)
        self.session_ttl_s = session_ttl_s
        self.clock = clock
        self.state_file = state_file
        oid = rspcrypto.smdp_oid(pki.dpauth.cert)
        if oid is None:   # SGP.22 §4.5.2.1: an eUICC refuses a CERT.DPauth without it (invalidOid)
            raise ValueError("the PKI's CERT.DPauth names no SM-DP+ OID (subjectAltName registeredID)")
        self.oid = oid
        self.orders: dict[str, Order] = {}
        self.sessions: dict[bytes, Session] = {}
        self.notifications: list[ReceivedNotification] = []
        self._seen_notifications: set[bytes] = set()
        self._next_order = 1
        if state_file is not None and state_file.exists():
            self._load(state_file)

    def set_address(self, address: str, aliases: tuple[str, ...] = ()) -> None:
        """The SM-DP+ address it signs into serverSigned1, and other names it answers to."""
        self.address = address
        self.addresses = {address, *aliases}

    # -- orders (admin API) ----------------------------------------------------------------

    def order_profile(self, *, matching_id: str | None = None, iccid: bytes | None = None,
                      size: int = DEFAULT_PROFILE_SIZE, eid: bytes | None = None,
                      ttl_s: float | None = None, profile_name: str | None = None,
                      notification_address: str = "", replace_session_keys: bool = False) -> Order:
        if not 64 <= size <= MAX_PROFILE_SIZE:
            raise common.AdminError(f"profile size must be 64..{MAX_PROFILE_SIZE} bytes")
        number = self._next_order
        self._next_order += 1
        matching_id = matching_id if matching_id is not None else os.urandom(8).hex().upper()
        if any(o.matching_id == matching_id and matching_id for o in self.orders.values()):
            raise common.AdminError(f"matchingId {matching_id!r} is already ordered", status=409)
        if iccid is None:
            iccid = common.iccid_to_bytes(f"8949{number:015d}")
        order = Order(order_id=f"order-{number}", matching_id=matching_id, iccid=iccid, size=size,
                      eid=eid, expires_at=self.clock() + ttl_s if ttl_s is not None else None,
                      profile_name=profile_name or f"ipae test profile {number}",
                      notification_address=notification_address,
                      replace_session_keys=replace_session_keys)
        order.history.append(ORDER_RELEASED)
        self.orders[order.order_id] = order
        self._save()
        return order

    def _set_order_state(self, order: Order, state: str) -> None:
        order.state = state
        order.history.append(state)
        self._save()

    def _find_order(self, matching_id: str, eid: bytes) -> Order:
        """§3.1.3.2: the order named by matchingId, or the EID's default order without one."""
        if matching_id:
            order = next((o for o in self.orders.values() if o.matching_id == matching_id), None)
            if order is None:
                raise Refusal(codes.MATCHING_ID_REFUSED, f"no order with matchingId {matching_id!r}")
        else:
            order = next((o for o in self.orders.values()
                          if o.eid == eid and o.state == ORDER_RELEASED), None)
            if order is None:
                raise Refusal(codes.NO_ELIGIBLE_PROFILE, "no default order for this EID")
        if order.eid is not None and order.eid != eid:
            raise Refusal(codes.EID_MISMATCH, "the order is bound to another EID")
        if order.expires_at is not None and self.clock() > order.expires_at:
            raise Refusal(codes.DOWNLOAD_ORDER_EXPIRED, "the download order has expired")
        if order.state != ORDER_RELEASED:
            raise Refusal(codes.PROFILE_NOT_RELEASED, f"the order is {order.state}")
        return order

    # -- sessions ------------------------------------------------------------------------------

    def _session(self, transaction_id: bytes, *states: str) -> Session:
        session = self.sessions.get(transaction_id)
        if session is None or session.state == "closed":
            raise Refusal(codes.TRANSACTION_ID_UNKNOWN, "unknown transactionId")
        if self.clock() > session.expires_at:
            self._close(session, expired=True)
            raise Refusal(codes.TRANSACTION_ID_UNKNOWN, "the RSP session has expired")
        if states and session.state not in states:
            raise Refusal(codes.TRANSACTION_ID_UNKNOWN,
                          f"transactionId is in state {session.state}, not {'/'.join(states)}")
        return session

    def _close(self, session: Session, *, expired: bool = False) -> None:
        session.state = "closed"
        order = session.order
        if expired and order is not None and order.state == ORDER_DOWNLOADING:
            self._set_order_state(order, ORDER_RELEASED)

    # -- ES9+ ----------------------------------------------------------------------------------

    def initiate_authentication(self, req: es9p.InitiateAuthenticationRequest
                                ) -> es9p.InitiateAuthenticationResponse:  # §5.6.1
        if req.smdp_address not in self.addresses:
            raise Refusal(codes.INVALID_SMDP_ADDRESS, f"this is not {req.smdp_address!r}")
        if len(req.euicc_challenge) != 16:
            raise Refusal(codes.MALFORMED, "euiccChallenge must be 16 bytes")
        info1 = _decode("EUICCInfo1", req.euicc_info1)
        if info1["svn"][0] != SUPPORTED_SVN_MAJOR:
            raise Refusal(codes.SVN_NOT_SUPPORTED, f"SVN {info1['svn'].hex()} is not supported")
        ci_pkid = self.pki.ci_pkid
        if ci_pkid not in info1["euiccCiPKIdListForVerification"]:
            raise Refusal(codes.CI_PK_UNAVAILABLE, "no CERT.DPauth under a CI the eUICC can verify")
        if ci_pkid not in info1["euiccCiPKIdListForSigning"]:
            raise Refusal(codes.SECURITY_CONFIGURATION_NOT_SUPPORTED,
                          "the eUICC signs with no CI this SM-DP+ trusts")
        transaction_id = os.urandom(16)
        server_challenge = os.urandom(16)
        server_signed1 = codec.encode("ServerSigned1", {
            "transactionId": transaction_id, "euiccChallenge": req.euicc_challenge,
            "serverAddress": self.address, "serverChallenge": server_challenge})
        signature = rspcrypto.sign_rs(self.pki.dpauth.key, server_signed1)
        self._expire_sessions()
        self.sessions[transaction_id] = Session(
            transaction_id=transaction_id, expires_at=self.clock() + self.session_ttl_s,
            euicc_challenge=req.euicc_challenge, server_challenge=server_challenge,
            ci=self.pki.ci.cert)
        return es9p.InitiateAuthenticationResponse(
            transaction_id=transaction_id, server_signed1=server_signed1,
            server_signature1=signature, euicc_ci_pkid_to_be_used=ci_pkid,
            server_certificate=self.pki.dpauth.cert_der)

    def authenticate_client(self, req: es9p.AuthenticateClientRequest
                            ) -> es9p.AuthenticateClientResponse:  # §5.6.3
        session = self._session(req.transaction_id, "initiated")
        raw = req.authenticate_server_response
        kind, value = _decode("AuthenticateServerResponse", raw)
        if kind != "authenticateResponseOk":
            raise Refusal(codes.MALFORMED, f"the eUICC answered {kind}; end it with cancelSession")
        euicc = self._verify_certificates(value["euiccCertificate"], value["eumCertificate"], session.ci)
        euicc_signed1 = _slice(raw, 0, 0)
        try:
            common.verify_euicc_signed(euicc.certificate, euicc_signed1, value["euiccSignature1"])
        except rspcrypto.RspCryptoError as exc:
            raise Refusal(codes.EUICC_SIGNATURE_INVALID, f"euiccSignature1: {exc}") from exc
        signed1 = value["euiccSigned1"]
        if signed1["transactionId"] != session.transaction_id:
            raise Refusal(codes.TRANSACTION_ID_UNKNOWN, "euiccSigned1 is for another transaction")
        if signed1["serverChallenge"] != session.server_challenge:
            raise Refusal(codes.EUICC_SIGNATURE_INVALID, "euiccSigned1 answers another serverChallenge")
        if signed1["serverAddress"] not in self.addresses:
            raise Refusal(codes.INVALID_SMDP_ADDRESS, "euiccSigned1 names another SM-DP+")
        _, ctx = signed1["ctxParams1"]
        order = self._find_order(ctx.get("matchingId") or "", euicc.eid)
        session.euicc = euicc
        session.euicc_signature1 = value["euiccSignature1"]
        session.order = order
        session.state = "authenticated"
        order.transaction_id = session.transaction_id
        order.euicc_certificate = common.certificate_der(euicc.certificate)
        order.attempts += 1
        self._set_order_state(order, ORDER_DOWNLOADING)
        smdp_signed2 = codec.encode("SmdpSigned2", {"transactionId": session.transaction_id,
                                                    "ccRequiredFlag": False})
        signature2 = rspcrypto.sign_rs(self.pki.dppb.key, smdp_signed2 + _signature_tlv(session.euicc_signature1))
        session.smdp_signature2 = signature2
        return es9p.AuthenticateClientResponse(
            transaction_id=session.transaction_id,
            profile_metadata=order.spec().metadata_der(self.address),
            smdp_signed2=smdp_signed2, smdp_signature2=signature2,
            smdp_certificate=self.pki.dppb.cert_der)

    def _verify_certificates(self, euicc_der: bytes, eum_der: bytes,
                             ci: x509.Certificate) -> common.EuiccCertificates:
        """CERT.EUM then CERT.EUICC, each failure with its own §5.6.3 code."""
        now = self._now()
        try:
            eum = rspcrypto.load_certificate_der(eum_der)
        except rspcrypto.CertificateInvalid as exc:
            raise Refusal(codes.EUM_CERTIFICATE_INVALID, str(exc)) from exc
        if rspcrypto.authority_key_identifier(eum) not in (None, rspcrypto.subject_key_identifier(ci)):
            raise Refusal(codes.CI_PK_UNKNOWN, "CERT.EUM is not issued by the CI in use")
        try:
            rspcrypto.check_validity(eum, now)
        except rspcrypto.CertificateInvalid as exc:
            raise Refusal(codes.EUM_CERTIFICATE_EXPIRED, str(exc)) from exc
        try:
            rspcrypto.verify_issued_by(eum, ci, at=now)
            rspcrypto.check_role(eum, rspcrypto.OID_RSP_ROLE_EUM)
        except rspcrypto.CertificateInvalid as exc:
            raise Refusal(codes.EUM_CERTIFICATE_INVALID, str(exc)) from exc
        try:
            euicc = rspcrypto.load_certificate_der(euicc_der)
        except rspcrypto.CertificateInvalid as exc:
            raise Refusal(codes.EUICC_CERTIFICATE_INVALID, str(exc)) from exc
        try:
            rspcrypto.check_validity(euicc, now)
        except rspcrypto.CertificateInvalid as exc:
            raise Refusal(codes.EUICC_CERTIFICATE_EXPIRED, str(exc)) from exc
        try:
            eid = rspcrypto.verify_euicc_chain(euicc, eum, ci, at=now)
        except rspcrypto.CertificateInvalid as exc:
            raise Refusal(codes.EUICC_CERTIFICATE_INVALID, str(exc)) from exc
        return common.EuiccCertificates(bytes.fromhex(eid), euicc, eum)

    def get_bound_profile_package(self, req: es9p.GetBoundProfilePackageRequest
                                  ) -> es9p.GetBoundProfilePackageResponse:  # §5.6.2
        session = self._session(req.transaction_id, "authenticated", "bound")
        assert session.euicc is not None and session.order is not None
        raw = req.prepare_download_response
        kind, value = _decode("PrepareDownloadResponse", raw)
        if kind == "downloadResponseError":
            self._close(session)
            self._set_order_state(session.order, ORDER_RELEASED)
            raise Refusal(codes.EXECUTION_ERROR,
                          f"the eUICC refused PrepareDownload (downloadErrorCode {value['downloadErrorCode']})")
        if kind != "downloadResponseOk":
            raise Refusal(codes.MALFORMED, f"{kind} is not accepted on ES9+")
        euicc_signed2 = _slice(raw, 0, 0)
        try:
            common.verify_euicc_signed(session.euicc.certificate,
                                       euicc_signed2 + _signature_tlv(session.smdp_signature2),
                                       value["euiccSignature2"])
        except rspcrypto.RspCryptoError as exc:
            raise Refusal(codes.EUICC_SIGNATURE_INVALID, f"euiccSignature2: {exc}") from exc
        signed2 = value["euiccSigned2"]
        if signed2["transactionId"] != session.transaction_id:
            raise Refusal(codes.TRANSACTION_ID_UNKNOWN, "euiccSigned2 is for another transaction")
        order = session.order
        if order.expires_at is not None and self.clock() > order.expires_at:
            self._close(session)
            raise Refusal(codes.DOWNLOAD_ORDER_EXPIRED, "the download order has expired")
        otpk = signed2["euiccOtpk"]
        if session.bpp is None or session.bound_otpk != otpk:
            try:
                session.bpp = build_bpp(transaction_id=session.transaction_id, eid=session.euicc.eid,
                                        euicc_otpk=otpk, spec=order.spec(), smdp_address=self.address,
                                        smdp_oid=self.oid, dppb_key=self.pki.dppb.key)
            except rspcrypto.RspCryptoError as exc:
                raise Refusal(codes.MALFORMED, f"otPK.EUICC.ECKA: {exc}") from exc
            session.bound_otpk = otpk
        session.state = "bound"
        return es9p.GetBoundProfilePackageResponse(session.transaction_id, session.bpp.der)

    def handle_notification(self, req: es9p.HandleNotificationRequest) -> None:  # §5.6.4
        raw = req.pending_notification
        digest = hashlib.sha256(raw).digest()
        if digest in self._seen_notifications:
            return
        try:
            record = self._check_notification(raw)
        except DecodeError as exc:
            record = ReceivedNotification(self.clock(), "undecodable", False, str(exc),
                                          None, None, None, None, raw)
        self._seen_notifications.add(digest)
        self.notifications.append(record)
        self._save()

    def _check_notification(self, raw: bytes) -> ReceivedNotification:
        kind, value = codec.decode("PendingNotification", raw)
        now = self.clock()
        if kind == "profileInstallationResult":
            data = value["profileInstallationResultData"]
            tid = data["transactionId"]
            meta = data["notificationMetadata"]
            result_kind, result = data["finalResult"]
            order = next((o for o in self.orders.values() if o.transaction_id == tid), None)
            verified, detail = False, "no download with this transactionId"
            if order is not None and order.euicc_certificate is not None:
                cert = rspcrypto.load_certificate_der(order.euicc_certificate)
                try:
                    common.verify_euicc_signed(cert, _slice(raw, 0), value["euiccSignPIR"])
                    verified, detail = True, result_kind
                except rspcrypto.RspCryptoError as exc:
                    detail = f"euiccSignPIR: {exc}"
                if verified and order.state in (ORDER_DOWNLOADING, ORDER_RELEASED):
                    if result_kind == "successResult":
                        self._set_order_state(order, ORDER_INSTALLED)
                    else:
                        detail = f"errorResult bppCommandId {result['bppCommandId']} errorReason {result['errorReason']}"
                        self._set_order_state(order, ORDER_FAILED)
                    session = self.sessions.get(tid)
                    if session is not None:
                        self._close(session)
            return ReceivedNotification(now, "profileInstallationResult", verified, detail,
                                        meta["seqNumber"], tid.hex().upper(),
                                        _iccid(meta), "install", raw)
        if kind == "otherSignedNotification":
            meta = value["tbsOtherNotification"]
            verified, detail = False, "ok"
            try:
                euicc = common.verify_euicc_certificates(value["euiccCertificate"], value["eumCertificate"],
                                                         self.pki.ci.cert)
                common.verify_euicc_signed(euicc.certificate, _slice(raw, 0),
                                           value["euiccNotificationSignature"])
                verified = True
            except rspcrypto.RspCryptoError as exc:
                detail = str(exc)
            event = _event(meta["profileManagementOperation"])
            if verified and event == "delete":
                order = next((o for o in self.orders.values()
                              if o.iccid == meta.get("iccid") and o.state == ORDER_INSTALLED), None)
                if order is not None:
                    self._set_order_state(order, ORDER_DELETED)
            return ReceivedNotification(now, "otherSignedNotification", verified, detail,
                                        meta["seqNumber"], None, _iccid(meta), event, raw)
        return ReceivedNotification(now, kind, False, "compact notifications are for the eIM",
                                    None, None, None, None, raw)

    def cancel_session(self, req: es9p.CancelSessionRequest) -> None:  # §5.6.5
        session = self._session(req.transaction_id)
        raw = req.cancel_session_response
        kind, value = _decode("CancelSessionResponse", raw)
        if kind != "cancelSessionResponseOk":
            raise Refusal(codes.MALFORMED, f"{kind} is not a signed cancellation")
        signed = value["euiccCancelSessionSigned"]
        if session.euicc is not None:
            try:
                common.verify_euicc_signed(session.euicc.certificate, _slice(raw, 0, 0),
                                           value["euiccCancelSessionSignature"])
            except rspcrypto.RspCryptoError as exc:
                raise Refusal(codes.EUICC_SIGNATURE_INVALID, f"euiccCancelSessionSignature: {exc}") from exc
        if signed["transactionId"] != session.transaction_id:
            raise Refusal(codes.TRANSACTION_ID_UNKNOWN, "the cancellation is for another transaction")
        if signed["smdpOid"] != self.oid:
            raise Refusal(codes.INVALID_SMDP_OID, f"smdpOid {signed['smdpOid']} is not this SM-DP+")
        self._close(session)
        order = session.order
        if order is not None and order.state == ORDER_DOWNLOADING:
            reason = signed["reason"]
            self._set_order_state(order, ORDER_RELEASED if reason in RETRYABLE_CANCEL_REASONS
                                  else ORDER_CANCELLED)

    # -- housekeeping --------------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def _expire_sessions(self) -> None:
        now = self.clock()
        for tid, session in list(self.sessions.items()):
            if session.state == "closed" or now > session.expires_at + self.session_ttl_s:
                if session.state != "closed":
                    self._close(session, expired=True)
                del self.sessions[tid]

    def _save(self) -> None:
        if self.state_file is None:
            return
        state = {"next_order": self._next_order,
                 "orders": [o.to_state() for o in self.orders.values()],
                 "notifications": [n.to_json() for n in self.notifications]}
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_file)

    def _load(self, path: Path) -> None:
        try:
            self._load_state(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: unusable SM-DP+ state: {exc!r}") from exc

    def _load_state(self, state: dict[str, Any]) -> None:
        self._next_order = state["next_order"]
        for obj in state["orders"]:
            order = Order.from_state(obj)
            if order.state == ORDER_DOWNLOADING:   # sessions do not survive a restart
                order.state = ORDER_RELEASED
            self.orders[order.order_id] = order
        for obj in state["notifications"]:
            obj = dict(obj)
            obj["der"] = bytes.fromhex(obj["der"])
            record = ReceivedNotification(**obj)
            self.notifications.append(record)
            self._seen_notifications.add(hashlib.sha256(record.der).digest())


def _decode(type_name: str, data: bytes) -> Any:
    try:
        return codec.decode(type_name, data)
    except DecodeError as exc:
        raise Refusal(codes.MALFORMED, str(exc)) from exc


def _slice(raw: bytes, *path: int) -> bytes:
    try:
        return common.raw_child(raw, *path)
    except DecodeError as exc:
        raise Refusal(codes.MALFORMED, str(exc)) from exc


def _signature_tlv(signature: bytes) -> bytes:
    return tlv.header(0x5F37, len(signature)) + signature


def _iccid(meta: dict[str, Any]) -> str | None:
    iccid = meta.get("iccid")
    return common.iccid_to_str(iccid) if iccid is not None else None


EVENTS = ("install", "enable", "disable", "delete")


def _event(bits: tuple[bytes, int]) -> str | None:
    data, nbits = bits
    for position, name in enumerate(EVENTS):
        if position < nbits and data[position // 8] & (0x80 >> (position % 8)):
            return name
    return None
