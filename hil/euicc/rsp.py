"""ES10b functions of a profile download, eUICC side (SGP.22 §3.1.3, §5.7.5-5.7.14).

GetEuiccChallenge opens a volatile `RspSession`; AuthenticateServer checks the SM-DP+'s
CERT.DPauth up to a CI the eUICC knows and serverSignature1 over the exact serverSigned1
bytes received, then signs euiccSigned1; PrepareDownload checks CERT.DPpb and
smdpSignature2 (over smdpSigned2 || euiccSignature1), makes the one-time ECKA key pair and
signs euiccSigned2 (over euiccSigned2 || smdpSignature2). LoadBoundProfilePackage lives in
`bpp_load.py`. CancelSession ends the session with a signed response. Which bytes each
signature covers is `signed_data.py`'s business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.spec import codec, tlv
from hil import rspcrypto
from hil.euicc import signed_data
from hil.euicc.dispatch import es10
from hil.euicc.info import euicc_info1, euicc_info2

if TYPE_CHECKING:
    from hil.euicc.euicc import RspSession, SoftEuicc


class _Refused(Exception):
    def __init__(self, code: int, why: str) -> None:
        self.code = code
        super().__init__(why)


def _load_cert(der: bytes, code: int) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise _Refused(code, f"certificate does not parse: {exc}") from exc


def _check_server_certificate(euicc: SoftEuicc, cert: x509.Certificate, role: x509.ObjectIdentifier,
                              ci_pkid: bytes | None, *, invalid_cert: int, unsupported_curve: int,
                              ci_unknown: int | None) -> None:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _Refused(unsupported_curve, "server key is not on a supported curve")
    issuer_pkid = rspcrypto.authority_key_identifier(cert)
    ci = euicc.identity.ci_for(issuer_pkid) if issuer_pkid is not None else None
    if ci is None or (ci_pkid is not None and issuer_pkid != ci_pkid):
        raise _Refused(ci_unknown if ci_unknown is not None else invalid_cert,
                       "server certificate is not issued by the CI to be used")
    try:
        rspcrypto.verify_server_certificate(cert, ci, role)
    except rspcrypto.CertificateInvalid as exc:
        raise _Refused(invalid_cert, str(exc)) from exc


def _children(request: bytes) -> list[tlv.Tlv]:
    return tlv.children(request, tlv.read_single(request))


# --- GetEuiccChallenge, GetEUICCInfo (SGP.22 §5.7.7, §5.7.8) --------------------------------


@es10(0xBF2E, "GetEuiccChallenge", "GetEuiccChallengeRequest")
def get_euicc_challenge(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    from hil.euicc.bpp_load import abort_load
    from hil.euicc.euicc import RspSession

    abort_load(euicc)
    euicc.session = RspSession(euicc_challenge=euicc.random(16))
    return codec.encode("GetEuiccChallengeResponse", {"euiccChallenge": euicc.session.euicc_challenge})


@es10(0xBF20, "GetEUICCInfo1", "GetEuiccInfo1Request")
def get_euicc_info1(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    return codec.encode("EUICCInfo1", euicc_info1(euicc))


@es10(0xBF22, "GetEUICCInfo2", "GetEuiccInfo2Request")
def get_euicc_info2(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    return codec.encode("EUICCInfo2", euicc_info2(euicc))


# --- AuthenticateServer (SGP.22 §5.7.13) ----------------------------------------------------

AUTH_INVALID_CERTIFICATE = 1
AUTH_INVALID_SIGNATURE = 2
AUTH_UNSUPPORTED_CURVE = 3
AUTH_NO_SESSION = 4
AUTH_INVALID_OID = 5
AUTH_CHALLENGE_MISMATCH = 6
AUTH_CI_PK_UNKNOWN = 7


@es10(0xBF38, "AuthenticateServer", "AuthenticateServerRequest")
def authenticate_server(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    signed1 = value["serverSigned1"]
    transaction_id = signed1["transactionId"]
    try:
        session = _authenticate(euicc, request, value)
    except _Refused as refusal:
        euicc.session = None
        return codec.encode("AuthenticateServerResponse", ("authenticateResponseError", {
            "transactionId": transaction_id, "authenticateErrorCode": refusal.code}))
    euicc_signed1 = {
        "transactionId": transaction_id,
        "serverAddress": signed1["serverAddress"],
        "serverChallenge": signed1["serverChallenge"],
        "euiccInfo2": euicc_info2(euicc),
        "ctxParams1": value["ctxParams1"],
    }
    signed_bytes = codec.encode("EuiccSigned1", euicc_signed1)
    signature = euicc.sign(signed_data.euicc_signature1_input(signed_bytes))
    session.euicc_signature1 = signature
    session.phase = "authenticated"
    return codec.encode("AuthenticateServerResponse", ("authenticateResponseOk", {
        "euiccSigned1": euicc_signed1,
        "euiccSignature1": signature,
        "euiccCertificate": euicc.identity.certificate_der,
        "eumCertificate": euicc.identity.eum_certificate_der,
    }))


def _authenticate(euicc: SoftEuicc, request: bytes, value: Any) -> RspSession:
    session = euicc.session
    if session is None or session.phase != "challenge":
        raise _Refused(AUTH_NO_SESSION, "no GetEuiccChallenge before AuthenticateServer")
    ci_pkid = value["euiccCiPKIdToBeUsed"]
    if euicc.identity.ci_for(ci_pkid) is None:
        raise _Refused(AUTH_CI_PK_UNKNOWN, "euiccCiPKIdToBeUsed is not one of the eUICC's CIs")
    cert = _load_cert(value["serverCertificate"], AUTH_INVALID_CERTIFICATE)
    _check_server_certificate(euicc, cert, rspcrypto.OID_RSP_ROLE_DP_AUTH, ci_pkid,
                              invalid_cert=AUTH_INVALID_CERTIFICATE,
                              unsupported_curve=AUTH_UNSUPPORTED_CURVE, ci_unknown=AUTH_CI_PK_UNKNOWN)
    smdp_oid = rspcrypto.smdp_oid(cert)
    if smdp_oid is None:   # SGP.22 §4.5.2.1: CERT.DPauth names its SM-DP+ OID (subjectAltName registeredID)
        raise _Refused(AUTH_INVALID_OID, "CERT.DPauth names no SM-DP+ OID")
    server_signed1 = _children(request)[0].raw_of(request)
    try:
        rspcrypto.verify_rs_with_certificate(
            cert, signed_data.server_signature1_input(server_signed1), value["serverSignature1"])
    except rspcrypto.RspCryptoError as exc:
        raise _Refused(AUTH_INVALID_SIGNATURE, str(exc)) from exc
    signed1 = value["serverSigned1"]
    if signed1["euiccChallenge"] != session.euicc_challenge:
        raise _Refused(AUTH_CHALLENGE_MISMATCH, "serverSigned1 carries another euiccChallenge")
    session.transaction_id = signed1["transactionId"]
    session.server_address = signed1["serverAddress"]
    session.server_challenge = signed1["serverChallenge"]
    session.ci_pkid = ci_pkid
    session.dpauth_der = value["serverCertificate"]
    session.smdp_oid = smdp_oid
    return session


# --- PrepareDownload (SGP.22 §5.7.5) ---------------------------------------------------------

DL_INVALID_CERTIFICATE = 1
DL_INVALID_SIGNATURE = 2
DL_UNSUPPORTED_CURVE = 3
DL_NO_SESSION = 4
DL_INVALID_TRANSACTION_ID = 5


@es10(0xBF21, "PrepareDownload", "PrepareDownloadRequest")
def prepare_download(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    signed2 = value["smdpSigned2"]
    transaction_id = signed2["transactionId"]
    try:
        session = _prepare(euicc, request, value)
    except _Refused as refusal:
        euicc.session = None
        return codec.encode("PrepareDownloadResponse", ("downloadResponseError", {
            "transactionId": transaction_id, "downloadErrorCode": refusal.code}))
    previous = signed2.get("bppEuiccOtpk")
    if previous is None or previous != session.ot_public:
        session.ot_private = rspcrypto.generate_key()
        session.ot_public = rspcrypto.public_key_bytes(session.ot_private.public_key())
    euicc_signed2: dict[str, Any] = {"transactionId": transaction_id, "euiccOtpk": session.ot_public}
    if "hashCc" in value:
        euicc_signed2["hashCc"] = value["hashCc"]
    signed_bytes = codec.encode("EUICCSigned2", euicc_signed2)
    signature = euicc.sign(signed_data.euicc_signature2_input(signed_bytes, value["smdpSignature2"]))
    session.euicc_signature2 = signature
    session.phase = "prepared"
    return codec.encode("PrepareDownloadResponse", ("downloadResponseOk", {
        "euiccSigned2": euicc_signed2, "euiccSignature2": signature}))


def _prepare(euicc: SoftEuicc, request: bytes, value: Any) -> RspSession:
    session = euicc.session
    if session is None or session.phase != "authenticated":
        raise _Refused(DL_NO_SESSION, "no authenticated RSP session")
    cert = _load_cert(value["smdpCertificate"], DL_INVALID_CERTIFICATE)
    _check_server_certificate(euicc, cert, rspcrypto.OID_RSP_ROLE_DP_PB, session.ci_pkid,
                              invalid_cert=DL_INVALID_CERTIFICATE,
                              unsupported_curve=DL_UNSUPPORTED_CURVE, ci_unknown=None)
    smdp_signed2 = _children(request)[0].raw_of(request)
    try:
        rspcrypto.verify_rs_with_certificate(
            cert, signed_data.smdp_signature2_input(smdp_signed2, session.euicc_signature1),
            value["smdpSignature2"])
    except rspcrypto.RspCryptoError as exc:
        raise _Refused(DL_INVALID_SIGNATURE, str(exc)) from exc
    if value["smdpSigned2"]["transactionId"] != session.transaction_id:
        raise _Refused(DL_INVALID_TRANSACTION_ID, "smdpSigned2 is for another transaction")
    session.dppb_der = value["smdpCertificate"]
    session.smdp_signature2 = value["smdpSignature2"]
    return session


# --- CancelSession (SGP.22 §5.7.14) ----------------------------------------------------------


@es10(0xBF41, "CancelSession", "CancelSessionRequest")
def cancel_session(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    from hil.euicc.bpp_load import abort_load

    session = euicc.session
    if session is None or not session.transaction_id or value["transactionId"] != session.transaction_id:
        return codec.encode("CancelSessionResponse", ("cancelSessionResponseError", 5))
    signed = {"transactionId": session.transaction_id, "smdpOid": session.smdp_oid,
              "reason": value["reason"]}
    signed_bytes = codec.encode("EuiccCancelSessionSigned", signed)
    signature = euicc.sign(signed_data.cancel_session_signature_input(signed_bytes))
    abort_load(euicc)
    euicc.session = None
    return codec.encode("CancelSessionResponse", ("cancelSessionResponseOk", {
        "euiccCancelSessionSigned": signed, "euiccCancelSessionSignature": signature}))
