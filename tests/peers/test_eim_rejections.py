"""The eIM refuses what a real eIM refuses and keeps what a retrying IPA sends twice only once;
its eimSignature is what the eUICC and an independent DER encoder expect."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.backhaul.http import BackhaulHttp
from gateway.spec import codec, signed
from hil import rspcrypto
from hil.euicc import SoftEuicc
from hil.peers.common import iccid_to_str
from hil.peers.eim import EimServer, signing
from hil.peers.smdpp import SmdppServer
from hil.pki import RspPki
from tests.peers.conftest import server_for
from tests.peers.es10b_script import Card, child, direct_download, esipa, esipa_raw
from tests.peers.test_eim_flows import add_initial_eim, run_one_package

OTHER_EID = rspcrypto.eid_with_check_digits("89049032" + "0" * 20 + "77")


def ipa_message(alternative: str, value: Any) -> bytes:
    return codec.encode("EsipaMessageFromIpaToEim", (alternative, value))


async def get_package(http: BackhaulHttp, server: Any, eid: bytes) -> tuple[bytes, Any]:
    body = await esipa_raw(http, server, ipa_message("getEimPackageRequest", {"eidValue": eid}))
    assert body is not None
    return body, codec.decode("EsipaMessageFromEimToIpa", body)[1]


async def test_get_eim_package_answers_eid_not_found_and_no_package_available(
        pki: RspPki, eim: EimServer, http: BackhaulHttp) -> None:
    server = server_for(pki, eim.url)
    eid = pki.eid_bytes
    assert (await get_package(http, server, eid))[1] == ("eimPackageError", 2)
    eim.service.register(eid)
    assert (await get_package(http, server, eid))[1] == ("eimPackageError", 1)


async def test_provide_result_without_or_with_an_unknown_eid_is_refused(
        pki: RspPki, eim: EimServer, http: BackhaulHttp) -> None:
    server = server_for(pki, eim.url)
    error = ("eimPackageResultResponseError", {"eimPackageResultErrorCode": 1})
    assert await esipa(http, server, ("provideEimPackageResult", {"eimPackageResult": error})) == \
        ("provideEimPackageResultResponse", ("provideEimPackageResultError", 4))
    assert await esipa(http, server, ("provideEimPackageResult", {"eidValue": pki.eid_bytes,
                                                                  "eimPackageResult": error})) == \
        ("provideEimPackageResultResponse", ("provideEimPackageResultError", 2))


async def test_a_result_sent_twice_is_acknowledged_twice_and_stored_once(
        pki: RspPki, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    server = server_for(pki, eim.url)
    card = Card(euicc)
    add_initial_eim(card, eim)
    eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "getRAT"}]})
    body, _ = await get_package(http, server, euicc.eid)
    result = card.call(child(body, 0))
    message = signed.provide_eim_package_result(euicc.eid, result)
    first = await esipa_raw(http, server, message)
    second = await esipa_raw(http, server, message)
    assert first == second
    assert codec.decode("EsipaMessageFromEimToIpa", first or b"")[1][0] == "eimAcknowledgements"
    assert len(eim.service.devices[euicc.eid].results) == 1


async def test_a_forged_result_or_one_presented_for_another_eid_is_refused_and_not_acknowledged(
        pki: RspPki, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    server = server_for(pki, eim.url)
    card = Card(euicc)
    add_initial_eim(card, eim)
    other = SoftEuicc(pki, OTHER_EID)
    _, other_cert = pki.issue_euicc(OTHER_EID)
    eim.service.register(other.eid, euicc_certificate=other_cert.public_bytes(Encoding.DER))
    package = eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "getRAT"}]})
    body, _ = await get_package(http, server, euicc.eid)
    result = card.call(child(body, 0))
    signature = codec.decode("EuiccPackageResult", result)[1]["euiccSignEPR"]
    forged = result.replace(signature, bytes([signature[0] ^ 0x80]) + signature[1:])
    refused = ("provideEimPackageResultResponse", ("provideEimPackageResultError", 127))
    assert codec.decode("EsipaMessageFromEimToIpa", await esipa_raw(
        http, server, signed.provide_eim_package_result(euicc.eid, forged)) or b"") == refused
    assert codec.decode("EsipaMessageFromEimToIpa", await esipa_raw(
        http, server, signed.provide_eim_package_result(other.eid, result)) or b"") == refused
    assert package.state == "delivered"
    answer = await esipa_raw(http, server, signed.provide_eim_package_result(euicc.eid, result))
    assert codec.decode("EsipaMessageFromEimToIpa", answer or b"")[1][0] == "eimAcknowledgements"
    assert package.state == "done"


async def test_the_euicc_refuses_a_package_with_a_bad_eim_signature_and_a_replayed_counter(
        pki: RspPki, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    server = server_for(pki, eim.url)
    card = Card(euicc)
    add_initial_eim(card, eim)
    eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "getRAT"}]})
    body, (_, request) = await get_package(http, server, euicc.eid)
    raw = child(body, 0)
    signature = codec.decode("EuiccPackageRequest", raw)["eimSignature"]
    tampered = raw.replace(signature, bytes([signature[0] ^ 1]) + signature[1:])
    kind, _ = codec.decode("EuiccPackageResult", card.call(tampered))
    assert kind == "euiccPackageErrorUnsigned"
    assert codec.decode("EuiccPackageResult", card.call(raw))[0] == "euiccPackageResultSigned"
    # the eIM forgets its counter: the eUICC refuses the replay with a signed error
    device = eim.service.devices[euicc.eid]
    device.packages.clear()
    eim.service.register(euicc.eid, counter=0)
    replay = eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "getRAT"}]})
    _, answer = await run_one_package(card, http, server, euicc.eid)
    assert answer[1] == ("emptyResponse", {})
    assert replay.state == "failed"
    assert replay.result is not None
    assert replay.result["euiccPackageErrorSigned"]["euiccPackageErrorDataSigned"]["euiccPackageErrorCode"] == 4
    assert device.results[-1].verified


@pytest.mark.parametrize(("token", "suffix"), [
    (None, ""), (0, "840100"), (1, "840101"), (127, "84017f"), (128, "84020080"),
    (255, "840200ff"), (256, "84020100"), (70000, "8403011170")])
def test_eim_and_result_signature_inputs_append_the_token_as_der_integer_content(
        token: int | None, suffix: str) -> None:
    data = codec.encode("EuiccPackageSigned", {"eimId": "x", "eidValue": bytes(16), "counterValue": 5,
                                               "euiccPackage": ("psmoList", [("getRAT", {})])})
    assert signing.eim_signature_input(data, token) == data + bytes.fromhex(suffix)
    assert signing.euicc_package_result_signature_input(data, token) == data + bytes.fromhex(suffix)


def test_eim_signature_verifies_over_an_independent_der_encoding_of_euicc_package_signed(pki: RspPki) -> None:
    module = importlib.import_module("asn1_play.generated_code.asn1.GSMA.SGP_32.v1_2.python_gen.sgp32.sgp32")
    oracle = module.GLOBAL.MOD["SGP32Definitions"]
    value = {"eimId": "ipae-test-eim", "eidValue": pki.eid_bytes, "counterValue": 300,
             "eimTransactionId": bytes.fromhex("0102030405"),
             "euiccPackage": ("psmoList", [("enable", {"iccid": bytes.fromhex("98941032547698103214")})])}
    request = signing.sign_euicc_package(pki.eim_sign.key, value, 258)
    parsed = oracle["EuiccPackageRequest"]
    parsed.from_der(request)
    independent = oracle["EuiccPackageSigned"]
    independent.set_val(parsed.get_val()["euiccPackageSigned"])
    token_tlv = bytes([0x84, 0x02, 0x01, 0x02])          # associationToken 258, written out by hand
    r_s = parsed.get_val()["eimSignature"]
    der_sig = rspcrypto.rs_to_der(r_s)
    pki.eim_sign.cert.public_key().verify(der_sig, independent.to_der() + token_tlv, ec.ECDSA(hashes.SHA256()))


async def test_an_association_token_is_covered_by_both_signatures(
        pki: RspPki, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    card = Card(euicc)
    response = add_initial_eim(card, eim, association_token=True)
    (kind, token), = response[1]
    assert kind == "associationToken"
    eim.service.register(euicc.eid, association_token=token)
    package = eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "getRAT"}]})
    await run_one_package(card, http, server_for(pki, eim.url), euicc.eid)
    assert package.state == "done" and eim.service.devices[euicc.eid].results[-1].verified


async def test_indirect_download_functions_refuse_an_unknown_transaction(
        pki: RspPki, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc, smdpp: SmdppServer) -> None:
    server = server_for(pki, eim.url)
    unknown = bytes(16)
    prepare = codec.encode("PrepareDownloadResponse", ("downloadResponseError", {
        "transactionId": unknown, "downloadErrorCode": 4}))
    assert (await esipa_raw(http, server, signed.get_bound_profile_package_request(unknown, prepare))) == \
        codec.encode("EsipaMessageFromEimToIpa", ("getBoundProfilePackageResponseEsipa",
                                                  ("getBoundProfilePackageErrorEsipa", 95)))
    cancel = codec.encode("CancelSessionResponse", ("cancelSessionResponseError", 5))
    assert codec.decode("EsipaMessageFromEimToIpa", await esipa_raw(
        http, server, signed.cancel_session_request(unknown, cancel)) or b"") == \
        ("cancelSessionResponseEsipa", ("cancelSessionError", 1))
    asr = codec.encode("AuthenticateServerResponse", ("authenticateResponseError", {
        "transactionId": unknown, "authenticateErrorCode": 4}))
    assert codec.decode("EsipaMessageFromEimToIpa", await esipa_raw(
        http, server, signed.authenticate_client_request(unknown, asr)) or b"") == \
        ("authenticateClientResponseEsipa", ("authenticateClientErrorEsipa", 10))


async def test_an_smdp_refusal_reaches_the_ipa_as_the_esipa_code(
        pki: RspPki, eim: EimServer, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    server = server_for(pki, eim.url)
    card = Card(euicc)
    challenge, info1 = card.challenge_and_info1()
    body = await esipa_raw(http, server, ipa_message("initiateAuthenticationRequestEsipa", {
        "euiccChallenge": challenge, "smdpAddress": smdpp.address, "euiccInfo1": codec.decode("EUICCInfo1", info1)}))
    assert body is not None
    _, (_, ok) = codec.decode("EsipaMessageFromEimToIpa", body)
    asr = card.authenticate_server(child(body, 0, 1), ok["serverSignature1"], ok["euiccCiPKIdentifierToBeUsed"],
                                   ok["serverCertificate"], "NO-SUCH-ORDER")
    answer = await esipa_raw(http, server, signed.authenticate_client_request(ok["transactionId"], asr))
    assert codec.decode("EsipaMessageFromEimToIpa", answer or b"") == \
        ("authenticateClientResponseEsipa", ("authenticateClientErrorEsipa", 6))   # matchingIdRefused


async def start_indirect(card: Card, http: BackhaulHttp, server: Any, smdp_address: str,
                         matching_id: str) -> tuple[bytes, bytes]:
    """InitiateAuthentication and AuthenticateServer through the eIM; (transactionId, ASR)."""
    challenge, info1 = card.challenge_and_info1()
    body = await esipa_raw(http, server, ipa_message("initiateAuthenticationRequestEsipa", {
        "euiccChallenge": challenge, "smdpAddress": smdp_address, "euiccInfo1": codec.decode("EUICCInfo1", info1)}))
    _, (kind, ok) = codec.decode("EsipaMessageFromEimToIpa", body or b"")
    assert kind == "initiateAuthenticationOkEsipa"
    asr = card.authenticate_server(child(body or b"", 0, 1), ok["serverSignature1"],
                                   ok["euiccCiPKIdentifierToBeUsed"], ok["serverCertificate"], matching_id)
    return ok["transactionId"], asr


async def test_a_signed_cancel_session_is_relayed_to_the_smdp_and_a_forged_one_refused(
        pki: RspPki, eim: EimServer, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    server = server_for(pki, eim.url)
    card = Card(euicc)
    order = smdpp.service.order_profile(size=4096)
    tid, asr = await start_indirect(card, http, server, smdpp.address, order.matching_id)
    answer = await esipa(http, server, ("authenticateClientRequestEsipa", {
        "transactionId": tid, "authenticateServerResponse": codec.decode("AuthenticateServerResponse", asr)}))
    assert answer is not None and answer[1][0] == "authenticateClientOkDPEsipa"
    cancel = card.cancel_session(tid, 0)                 # endUserRejection
    signature = codec.decode("CancelSessionResponse", cancel)[1]["euiccCancelSessionSignature"]
    forged = cancel.replace(signature, bytes([signature[0] ^ 2]) + signature[1:])
    assert codec.decode("EsipaMessageFromEimToIpa", await esipa_raw(
        http, server, signed.cancel_session_request(tid, forged)) or b"") == \
        ("cancelSessionResponseEsipa", ("cancelSessionError", 2))     # euiccSignatureInvalid
    assert codec.decode("EsipaMessageFromEimToIpa", await esipa_raw(
        http, server, signed.cancel_session_request(tid, cancel)) or b"") == \
        ("cancelSessionResponseEsipa", ("cancelSessionOk", {}))
    assert order.state == "cancelled"


async def test_an_expired_relayed_session_is_an_invalid_transaction(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    now = [0.0]
    async with EimServer(pki, smdp_url=smdpp.url, session_ttl_s=30, clock=lambda: now[0]) as eim:
        server = server_for(pki, eim.url)
        order = smdpp.service.order_profile(size=4096)
        tid, asr = await start_indirect(Card(euicc), http, server, smdpp.address, order.matching_id)
        now[0] += 31
        assert codec.decode("EsipaMessageFromEimToIpa", await esipa_raw(
            http, server, signed.authenticate_client_request(tid, asr)) or b"") == \
            ("authenticateClientResponseEsipa", ("authenticateClientErrorEsipa", 10))


async def test_a_notification_sent_twice_is_stored_once_and_acknowledged_with_the_next_result(
        pki: RspPki, eim: EimServer, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    server = server_for(pki, eim.url)
    card = Card(euicc)
    add_initial_eim(card, eim)
    order = smdpp.service.order_profile(size=4096)
    await direct_download(card, http, server_for(pki, smdpp.url), smdpp.address, order.matching_id)
    iccid = order.iccid
    eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "enable", "iccid": iccid_to_str(iccid)}]})
    body, _ = await get_package(http, server, euicc.eid)
    result = card.call(child(body, 0))
    enable_note = card.pending_notifications()[-1]
    for _ in range(2):
        assert await esipa_raw(http, server, signed.handle_notification(enable_note)) is None
    device = eim.service.devices[euicc.eid]
    assert len(device.notifications) == 1 and device.notifications[0].verified
    answer = await esipa(http, server, ("provideEimPackageResult", {
        "eidValue": euicc.eid, "eimPackageResult": ("euiccPackageResult", codec.decode("EuiccPackageResult", result))}))
    assert answer is not None
    kind, acks = answer[1]
    assert kind == "eimAcknowledgements" and device.notifications[0].seq_number in acks and len(acks) == 2
