"""Indirect profile download (SGP.32 §3.2, ESipa §6.3.2.1-4): the eIM relays to the SM-DP+.

InitiateAuthentication / AuthenticateClient / GetBoundProfilePackage / CancelSession from the
IPA are sent on to the SM-DP+ over ES9+ with the gateway's own client
(gateway.backhaul.es9p_client); what the SM-DP+ or the eUICC signed travels both ways as the
exact bytes received (`wire.Embedded`). The SM-DP+ is the one named by the IPA, else the one
of the download trigger's activation code, else the eIM's default. ES9+ refusals become the
ESipa error values below; a relayed session expires like the SM-DP+'s own. Along the way
the eIM learns (after verifying the chain) the eUICC certificate of the device. Compact
eUICC responses (minimizeEsipaBytes) are rebuilt to their full form first (`compact`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.backhaul import es9p_client
from gateway.backhaul.http import Server
from gateway.errors import DecodeError, FunctionFailed, GatewayError, LocalProtocolError
from gateway.spec import codec, es9p
from hil import rspcrypto
from hil.peers import common
from hil.peers.eim import compact
from hil.peers.eim.model import Package, ProxiedSession
from hil.peers.eim.wire import Embedded

if TYPE_CHECKING:
    from hil.peers.eim.service import Eim

log = logging.getLogger(__name__)

SVN = bytes([2, 5, 0])
UNDEFINED = 127

# ES9+ codes -> ESipa error values (SGP.32 §6.3.2.x mirror SGP.22 §5.6)
INITIATE_AUTHENTICATION_ERRORS = {("8.8.1", "3.8"): 1, ("8.8.3", "3.1"): 2, ("8.8.2", "3.1"): 3,
                                  ("8.8.4", "3.7"): 3}
AUTHENTICATE_CLIENT_ERRORS = {("8.1.2", "6.1"): 1, ("8.1.2", "6.3"): 2, ("8.1.3", "6.1"): 3,
                              ("8.1.3", "6.3"): 4, ("8.1", "6.1"): 5, ("8.2.6", "3.8"): 6,
                              ("8.1.1", "3.8"): 7, ("8.2.5", "4.3"): 8, ("8.2", "1.2"): 8,
                              ("8.11.1", "3.9"): 9, ("8.10.1", "3.9"): 10, ("8.8.5", "4.10"): 8}
GET_BPP_ERRORS = {("8.1", "6.1"): 1, ("8.2.7", "2.2"): 2, ("8.2.7", "3.8"): 3, ("8.2.7", "6.4"): 4,
                  ("8.8.5", "4.10"): 6, ("8.10.1", "3.9"): 95}
CANCEL_SESSION_ERRORS = {("8.10.1", "3.9"): 1, ("8.1", "6.1"): 2}


def _oid_of(certificate: bytes) -> str | None:
    try:
        return rspcrypto.smdp_oid(rspcrypto.load_certificate_der(certificate))
    except rspcrypto.RspCryptoError:
        return None


def _in_full(raw: bytes, type_name: str, compact_kind: str,
             rebuild: Callable[[bytes, Any], bytes | None]) -> tuple[bytes, tuple[str, Any]] | None:
    """An eUICC response as received, or rebuilt in full (`rebuild`) when it came in its compact
    form, with its decoded value; None when it does not decode or cannot be rebuilt."""
    try:
        decoded = codec.decode(type_name, raw)
    except DecodeError:
        return None
    if decoded[0] != compact_kind:
        return raw, decoded
    full = rebuild(raw, decoded[1])
    return None if full is None else (full, codec.decode(type_name, full))


def _es9p_error(exc: GatewayError, errors: dict[tuple[str, str], int], call: str) -> int:
    """The ESipa error code for a failed ES9+ call: the code `errors` maps a FunctionFailed's
    subject and reason to, else undefinedError (logged: the SM-DP+ was not reached or answered badly)."""
    if isinstance(exc, FunctionFailed):
        return errors.get((exc.subject_code or "", exc.reason_code or ""), UNDEFINED)
    log.warning("%s failed: %s", call, exc)
    return UNDEFINED


def _session(eim: Eim, transaction_id: bytes) -> ProxiedSession | None:
    """The relayed download with this transactionId, unless unknown or expired."""
    session = eim.sessions.get(transaction_id)
    if session is not None and eim.clock() > session.expires_at:
        del eim.sessions[transaction_id]
        return None
    return session


def _smdp_server(eim: Eim, address: str | None) -> Server:
    if address:
        return Server.from_fqdn(address, eim.server_trust)
    if eim.smdp_url is None:
        raise LocalProtocolError("no SM-DP+ address and no default SM-DP+")
    return Server(eim.smdp_url, eim.server_trust)


def _default_euicc_info1(eim: Eim) -> bytes:
    pkids = [eim.pki.ci_pkid]
    return codec.encode("EUICCInfo1", {"svn": SVN, "euiccCiPKIdListForVerification": pkids,
                                       "euiccCiPKIdListForSigning": pkids})


def _trigger(eim: Eim, eim_transaction_id: bytes | None) -> Package | None:
    if eim_transaction_id is None:
        return None
    for device in eim.devices.values():
        package = eim.package_by_tid(device, eim_transaction_id)
        if package is not None and package.kind == "profileDownloadTriggerRequest":
            return package
    return None


async def initiate_authentication(eim: Eim, value: dict[str, Any]) -> tuple[str, Any]:
    trigger = _trigger(eim, value.get("eimTransactionId"))
    address = value.get("smdpAddress")
    matching_id: str | None = None
    if trigger is not None:
        kind, data = trigger.payload["profileDownloadData"]
        if kind == "activationCode":
            parts = data.split("$")
            if len(parts) >= 3:
                address = address or parts[1]
                matching_id = parts[2]
    try:
        server = _smdp_server(eim, address)
    except (LocalProtocolError, GatewayError):
        return ("initiateAuthenticationErrorEsipa", 1)
    info1 = value.get("euiccInfo1") or _default_euicc_info1(eim)
    smdp_address = address or server.base_url.removeprefix("https://")
    try:
        reply = await es9p_client.initiate_authentication(
            eim.client(), server, es9p.InitiateAuthenticationRequest(value["euiccChallenge"], info1, smdp_address))
    except GatewayError as exc:
        return ("initiateAuthenticationErrorEsipa", _es9p_error(
            exc, INITIATE_AUTHENTICATION_ERRORS, f"initiateAuthentication at {server.base_url}"))
    eim.sessions[reply.transaction_id] = ProxiedSession(
        reply.transaction_id, server, value.get("eimTransactionId"),
        expires_at=eim.clock() + eim.session_ttl_s, smdp_oid=_oid_of(reply.server_certificate),
        eid=trigger.eid if trigger is not None else None, package=trigger)
    ok: dict[str, Any] = {"transactionId": reply.transaction_id,
                          "serverSigned1": Embedded("ServerSigned1", reply.server_signed1),
                          "serverSignature1": reply.server_signature1,
                          "euiccCiPKIdentifierToBeUsed": reply.euicc_ci_pkid_to_be_used,
                          "serverCertificate": reply.server_certificate}
    if matching_id is not None:
        ok["matchingId"] = matching_id
    return ("initiateAuthenticationOkEsipa", ok)


async def authenticate_client(eim: Eim, value: dict[str, Any]) -> tuple[str, Any]:
    session = _session(eim, value["transactionId"])
    if session is None:
        return ("authenticateClientErrorEsipa", 10)    # invalidTransactionId
    known = eim.devices.get(session.eid) if session.eid is not None else None
    full = _in_full(value["authenticateServerResponse"], "AuthenticateServerResponse", "compactAuthenticateResponseOk",
                    lambda raw, _: compact.authenticate_server_response(raw, known.certs if known else None))
    if full is None:
        return ("authenticateClientErrorEsipa", UNDEFINED)
    raw, (kind, response) = full
    if kind == "authenticateResponseOk":
        try:
            certs = common.verify_euicc_certificates(response["euiccCertificate"],
                                                     response["eumCertificate"], eim.pki.ci.cert)
            session.eid = certs.eid
            device = eim.device(certs.eid)
            assert device is not None
            if device.certs is None:
                device.certs = certs
        except rspcrypto.RspCryptoError:
            pass    # the SM-DP+ refuses it with the precise code
    try:
        reply = await es9p_client.authenticate_client(
            eim.client(), session.server, es9p.AuthenticateClientRequest(session.transaction_id, raw))
    except GatewayError as exc:
        return ("authenticateClientErrorEsipa", _es9p_error(exc, AUTHENTICATE_CLIENT_ERRORS, "authenticateClient"))
    return ("authenticateClientOkDPEsipa", {
        "transactionId": reply.transaction_id,
        "profileMetaData": Embedded("StoreMetadataRequest", reply.profile_metadata),
        "smdpSigned2": Embedded("SmdpSigned2", reply.smdp_signed2),
        "smdpSignature2": reply.smdp_signature2,
        "smdpCertificate": reply.smdp_certificate})


async def get_bound_profile_package(eim: Eim, value: dict[str, Any]) -> tuple[str, Any]:
    session = _session(eim, value["transactionId"])
    if session is None:
        return ("getBoundProfilePackageErrorEsipa", 95)    # invalidTransactionId
    full = _in_full(value["prepareDownloadResponse"], "PrepareDownloadResponse", "compactDownloadResponseOk",
                    lambda raw, response: compact.prepare_download_response(raw, response, session.transaction_id))
    if full is None:
        return ("getBoundProfilePackageErrorEsipa", UNDEFINED)
    raw = full[0]
    try:
        reply = await es9p_client.get_bound_profile_package(
            eim.client(), session.server, es9p.GetBoundProfilePackageRequest(session.transaction_id, raw))
    except GatewayError as exc:
        return ("getBoundProfilePackageErrorEsipa", _es9p_error(exc, GET_BPP_ERRORS, "getBoundProfilePackage"))
    return ("getBoundProfilePackageOkEsipa", {
        "transactionId": reply.transaction_id,
        "boundProfilePackage": Embedded("BoundProfilePackage", reply.bound_profile_package)})


async def cancel_session(eim: Eim, value: dict[str, Any]) -> tuple[str, Any]:
    session = _session(eim, value["transactionId"])
    if session is None:
        return ("cancelSessionError", 1)    # invalidTransactionId
    full = _in_full(value["cancelSessionResponse"], "CancelSessionResponse", "compactCancelSessionResponseOk",
                    lambda raw, response: compact.cancel_session_response(raw, response, session.transaction_id,
                                                                          session.smdp_oid))
    if full is None:
        return ("cancelSessionError", UNDEFINED)
    raw = full[0]
    try:
        await es9p_client.cancel_session(
            eim.client(), session.server, es9p.CancelSessionRequest(session.transaction_id, raw))
    except GatewayError as exc:
        return ("cancelSessionError", _es9p_error(exc, CANCEL_SESSION_ERRORS, "cancelSession"))
    del eim.sessions[session.transaction_id]
    if session.package is not None:
        eim.finish_package(session.package, "failed", {"cancelled": True})
    return ("cancelSessionOk", {})
