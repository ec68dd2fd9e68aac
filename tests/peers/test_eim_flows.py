"""eIM packages and the indirect download between the eIM peer, the SM-DP+ peer and the
software eUICC, driven by a minimal IPA script over the ESipa ASN.1 binding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.backhaul.http import BackhaulHttp
from gateway.spec import codec, signed
from hil import rspcrypto
from hil.euicc import SoftEuicc
from hil.peers import common
from hil.peers.eim import EimServer, compact
from hil.peers.smdpp import SmdppServer
from hil.pki import RspPki
from tests.peers.conftest import server_for
from tests.peers.es10b_script import Card, child, direct_download, esipa_raw


def add_initial_eim(card: Card, eim: EimServer, **kwargs: Any) -> Any:
    data = eim.service.own_configuration_data(**kwargs)
    return codec.decode("AddInitialEimResponse",
                        card.es10("AddInitialEimRequest", {"eimConfigurationDataList": [data]}))


async def run_one_package(card: Card, http: BackhaulHttp, eim_server: Any, eid: bytes) -> tuple[Any, Any]:
    """GetEimPackage -> LoadEuiccPackage -> ProvideEimPackageResult; (package, eIM answer)."""
    body = await esipa_raw(http, eim_server, codec.encode("EsipaMessageFromIpaToEim",
                                                          ("getEimPackageRequest", {"eidValue": eid})))
    assert body is not None
    alternative, package = codec.decode("EsipaMessageFromEimToIpa", body)
    assert alternative == "getEimPackageResponse"
    assert package[0] == "euiccPackageRequest", package
    request = child(body, 0)                       # the signed EuiccPackageRequest, as received
    result = card.call(request)
    answer = await esipa_raw(http, eim_server, signed.provide_eim_package_result(eid, result))
    assert answer is not None
    return package, codec.decode("EsipaMessageFromEimToIpa", answer)


async def test_psmo_package_is_signed_by_the_eim_run_by_the_euicc_and_its_signed_result_acknowledged(
        pki: RspPki, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    card = Card(euicc)
    add_initial_eim(card, eim)
    package = eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "listProfileInfo"}, {"op": "getRAT"}]})
    _, answer = await run_one_package(card, http, server_for(pki, eim.url), euicc.eid)
    assert answer[0] == "provideEimPackageResultResponse"
    kind, acks = answer[1]
    assert kind == "eimAcknowledgements" and len(acks) == 1
    (record,) = eim.service.devices[euicc.eid].results
    assert record.verified, record.detail
    assert package.state == "done"
    results = package.result["euiccPackageResultSigned"]["euiccPackageResultDataSigned"]["euiccResult"]
    assert [next(iter(r)) for r in results] == ["listProfileInfoResult", "getRATResult"]
    card.remove_notification(acks[0])
    assert not [n for n in euicc.notifications if n.event == "euiccPackageResult"]


async def indirect_download(card: Card, http: BackhaulHttp, eim_server: Any, eid: bytes) -> tuple[bytes, bytes, Any]:
    """SGP.32 indirect download, IPA side: (eimTransactionId, ProfileInstallationResult, eIM answer)."""
    body = await esipa_raw(http, eim_server, codec.encode("EsipaMessageFromIpaToEim",
                                                          ("getEimPackageRequest", {"eidValue": eid})))
    assert body is not None
    _, (kind, trigger) = codec.decode("EsipaMessageFromEimToIpa", body)
    assert kind == "profileDownloadTriggerRequest"
    eim_tid = trigger["eimTransactionId"]
    _, smdp_address, _ = trigger["profileDownloadData"][1].split("$")
    challenge, info1 = card.challenge_and_info1()
    init_body = await esipa_raw(http, eim_server, codec.encode("EsipaMessageFromIpaToEim", (
        "initiateAuthenticationRequestEsipa", {"euiccChallenge": challenge, "smdpAddress": smdp_address,
                                               "euiccInfo1": codec.decode("EUICCInfo1", info1),
                                               "eimTransactionId": eim_tid})))
    assert init_body is not None
    _, (kind, ok) = codec.decode("EsipaMessageFromEimToIpa", init_body)
    assert kind == "initiateAuthenticationOkEsipa", (kind, ok)
    asr = card.authenticate_server(child(init_body, 0, 1), ok["serverSignature1"],
                                   ok["euiccCiPKIdentifierToBeUsed"], ok["serverCertificate"], ok["matchingId"])
    tid = ok["transactionId"]
    auth_body = await esipa_raw(http, eim_server, signed.authenticate_client_request(tid, asr))
    assert auth_body is not None
    _, (kind, auth) = codec.decode("EsipaMessageFromEimToIpa", auth_body)
    assert kind == "authenticateClientOkDPEsipa", (kind, auth)
    prepare = card.prepare_download(child(auth_body, 0, 2), auth["smdpSignature2"], auth["smdpCertificate"])
    bpp_body = await esipa_raw(http, eim_server, signed.get_bound_profile_package_request(tid, prepare))
    assert bpp_body is not None
    assert codec.decode("EsipaMessageFromEimToIpa", bpp_body)[1][0] == "getBoundProfilePackageOkEsipa"
    pir = card.load_bpp(child(bpp_body, 0, 1))
    result = signed.wrap(0xBF54, signed.wrap(0x82, eim_tid), pir)   # eimTransactionId [2]
    answer = await esipa_raw(http, eim_server, signed.provide_profile_download_trigger_result(eid, result))
    assert answer is not None
    return eim_tid, pir, codec.decode("EsipaMessageFromEimToIpa", answer)


async def test_indirect_download_through_the_eim_installs_the_profile_and_reaches_the_smdpp(
        pki: RspPki, smdpp: SmdppServer, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    card = Card(euicc)
    add_initial_eim(card, eim)
    order = smdpp.service.order_profile(size=30_000)
    activation_code = order.to_json(smdpp.address)["activationCode"]
    package = eim.service.queue_profile_download(euicc.eid, {"activationCode": activation_code})
    _, pir, answer = await indirect_download(card, http, server_for(pki, eim.url), euicc.eid)
    data = codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"]
    assert data["finalResult"][0] == "successResult"
    assert [p.iccid for p in euicc.profiles] == [order.iccid]
    assert answer[1] == ("eimAcknowledgements", [data["notificationMetadata"]["seqNumber"]])
    assert package.state == "done"
    assert eim.service.devices[euicc.eid].results[-1].verified
    # the eIM verified euiccSignPIR and forwarded the result to the SM-DP+, which verified it too
    assert order.state == "installed"
    (note,) = smdpp.service.notifications
    assert note.verified and note.der == pir


async def test_enable_result_with_its_notifications_is_verified_and_every_sequence_number_acknowledged(
        pki: RspPki, smdpp: SmdppServer, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    card = Card(euicc)
    add_initial_eim(card, eim)
    order = smdpp.service.order_profile(size=4096)
    await direct_download(card, http, server_for(pki, smdpp.url), smdpp.address, order.matching_id)
    for note in card.pending_notifications():       # the install result went to the SM-DP+
        card.remove_notification(_seq(note))
    iccid = common.iccid_to_str(order.iccid)
    package = eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "enable", "iccid": iccid}]})
    server = server_for(pki, eim.url)
    body = await esipa_raw(http, server, codec.encode("EsipaMessageFromIpaToEim",
                                                      ("getEimPackageRequest", {"eidValue": euicc.eid})))
    result = card.call(child(body or b"", 0))
    notes = card.pending_notifications()
    assert len(notes) == 1                           # the enable notification
    answer = await esipa_raw(http, server, signed.provide_epr_and_notifications(euicc.eid, result, notes))
    _, (kind, acks) = codec.decode("EsipaMessageFromEimToIpa", answer or b"")
    epr_seq = codec.decode("EuiccPackageResult", result)[1]["euiccPackageResultDataSigned"]["seqNumber"]
    assert kind == "eimAcknowledgements" and sorted(acks) == sorted([epr_seq, _seq(notes[0])])
    device = eim.service.devices[euicc.eid]
    assert package.state == "done" and device.results[-1].verified
    (note,) = device.notifications
    assert note.verified and note.kind == "otherSignedNotification"
    assert euicc.state.enabled_profile() is not None


async def test_ipa_euicc_data_teaches_the_eim_the_euicc_certificate_and_delivers_notifications(
        pki: RspPki, eim: EimServer, http: BackhaulHttp) -> None:
    eid = rspcrypto.eid_with_check_digits("89049032" + "0" * 19 + "555")
    euicc = SoftEuicc(pki, eid)                       # no certificate for it in the PKI directory
    card = Card(euicc)
    add_initial_eim(card, eim)
    server = server_for(pki, eim.url)
    eim.service.register(euicc.eid)
    assert eim.service.devices[euicc.eid].certs is None
    request = eim.service.queue_ipa_euicc_data_request(euicc.eid, {"tags": ["eumCertificate", "euiccCertificate"]})
    body = await esipa_raw(http, server, codec.encode("EsipaMessageFromIpaToEim",
                                                      ("getEimPackageRequest", {"eidValue": euicc.eid})))
    response = card.call(child(body or b"", 0))
    answer = await esipa_raw(http, server, signed.provide_ipa_euicc_data_response(euicc.eid, response))
    assert codec.decode("EsipaMessageFromEimToIpa", answer or b"")[1] == ("emptyResponse", {})
    assert request.state == "done"
    device = eim.service.devices[euicc.eid]
    assert device.certs is not None and device.certs.eid == euicc.eid
    package = eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "getRAT"}]})
    await run_one_package(card, http, server, euicc.eid)
    assert package.state == "done" and device.results[-1].verified


def _seq(notification: bytes) -> int:
    kind, value = codec.decode("PendingNotification", notification)
    meta = (value["profileInstallationResultData"]["notificationMetadata"] if kind == "profileInstallationResult"
            else value["tbsOtherNotification"])
    return int(meta["seqNumber"])


async def test_one_queue_per_eid_hands_out_the_same_package_to_a_retrying_ipa_until_its_result_arrives(
        pki: RspPki, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    card = Card(euicc)
    add_initial_eim(card, eim)
    server = server_for(pki, eim.url)
    first = eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "getRAT"}]})
    second = eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "listProfileInfo"}]})
    poll = codec.encode("EsipaMessageFromIpaToEim", ("getEimPackageRequest", {"eidValue": euicc.eid}))
    again = [await esipa_raw(http, server, poll) for _ in range(2)]
    assert again[0] == again[1] and first.deliveries == 2 and second.state == "queued"
    result = card.call(child(again[0] or b"", 0))
    await esipa_raw(http, server, signed.provide_eim_package_result(euicc.eid, result))
    package, _ = await run_one_package(card, http, server, euicc.eid)
    assert (first.state, second.state) == ("done", "done")
    assert [p.counter for p in (first, second)] == [1, 2]
    assert codec.decode("EuiccPackageRequest", child(again[0] or b"", 0))["euiccPackageSigned"]["counterValue"] == 1



def compact_authenticate_server_response(full: bytes) -> bytes:
    """What an IPA minimizing ESipa bytes sends: euiccSigned1 and its signature, no certificates."""
    return signed.wrap(0xBF38, signed.wrap(0xA2, child(full, 0, 0), child(full, 0, 1)))


def compact_prepare_download_response(full: bytes) -> bytes:
    """CompactPrepareDownloadResponseOk: only otPK.EUICC.ECKA of euiccSigned2, and the signature."""
    otpk = codec.decode("PrepareDownloadResponse", full)[1]["euiccSigned2"]["euiccOtpk"]
    return signed.wrap(0xBF21, signed.wrap(0xA2, signed.wrap(0x30, signed.wrap(0x5F49, otpk)), child(full, 0, 1)))


def compact_cancel_session_response(full: bytes) -> bytes:
    reason = codec.decode("CancelSessionResponse", full)[1]["euiccCancelSessionSigned"]["reason"]
    return signed.wrap(0xBF41, signed.wrap(0xA2, signed.wrap(0x30, signed.wrap(0x80, bytes([reason]))),
                                           child(full, 0, 1)))


async def relayed_authentication(card: Card, http: BackhaulHttp, server: Any, eim: EimServer, smdpp: SmdppServer,
                                 eid: bytes) -> tuple[Any, bytes, bytes]:
    """Queue a download, relay InitiateAuthentication and a compact AuthenticateClient; (order, tid, answer)."""
    order = smdpp.service.order_profile(size=6000)
    eim.service.queue_profile_download(eid, {"activationCode": order.to_json(smdpp.address)["activationCode"]})
    body = await esipa_raw(http, server, codec.encode("EsipaMessageFromIpaToEim",
                                                      ("getEimPackageRequest", {"eidValue": eid})))
    _, (_, trigger) = codec.decode("EsipaMessageFromEimToIpa", body or b"")
    challenge, info1 = card.challenge_and_info1()
    init_body = await esipa_raw(http, server, codec.encode("EsipaMessageFromIpaToEim", (
        "initiateAuthenticationRequestEsipa", {"euiccChallenge": challenge,
                                               "eimTransactionId": trigger["eimTransactionId"]})))
    _, (_, ok) = codec.decode("EsipaMessageFromEimToIpa", init_body or b"")
    asr = card.authenticate_server(child(init_body or b"", 0, 1), ok["serverSignature1"],
                                   ok["euiccCiPKIdentifierToBeUsed"], ok["serverCertificate"], ok["matchingId"])
    auth_body = await esipa_raw(http, server, signed.authenticate_client_request(
        ok["transactionId"], compact_authenticate_server_response(asr)))
    _, (kind, auth) = codec.decode("EsipaMessageFromEimToIpa", auth_body or b"")
    assert kind == "authenticateClientOkDPEsipa", (kind, auth)
    return order, ok["transactionId"], auth_body or b""


async def test_compact_euicc_responses_are_rebuilt_byte_exact_for_the_smdpp(
        pki: RspPki, smdpp: SmdppServer, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    card = Card(euicc)
    server = server_for(pki, eim.url)
    order, tid, auth_body = await relayed_authentication(card, http, server, eim, smdpp, euicc.eid)
    _, (_, auth) = codec.decode("EsipaMessageFromEimToIpa", auth_body)
    prepare = card.prepare_download(child(auth_body, 0, 2), auth["smdpSignature2"], auth["smdpCertificate"])
    bpp_body = await esipa_raw(http, server, signed.get_bound_profile_package_request(
        tid, compact_prepare_download_response(prepare)))
    assert codec.decode("EsipaMessageFromEimToIpa", bpp_body or b"")[1][0] == "getBoundProfilePackageOkEsipa"
    pir = card.load_bpp(child(bpp_body or b"", 0, 1))
    assert await esipa_raw(http, server, signed.handle_notification(pir)) is None
    assert order.state == "installed"


async def test_a_compact_cancel_session_is_rebuilt_and_accepted_by_the_smdpp(
        pki: RspPki, smdpp: SmdppServer, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    card = Card(euicc)
    server = server_for(pki, eim.url)
    order, tid, _ = await relayed_authentication(card, http, server, eim, smdpp, euicc.eid)
    cancel = compact_cancel_session_response(card.cancel_session(tid, 1))
    answer = await esipa_raw(http, server, signed.cancel_session_request(tid, cancel))
    assert codec.decode("EsipaMessageFromEimToIpa", answer or b"") == \
        ("cancelSessionResponseEsipa", ("cancelSessionOk", {}))
    assert order.state == "released"


def test_a_compact_cancel_session_is_rebuilt_only_with_the_smdp_oid_of_its_session() -> None:
    signature = signed.wrap(0x5F37, bytes(64))
    raw = signed.wrap(0xBF41, signed.wrap(0xA2, signed.wrap(0x30, signed.wrap(0x80, b"\x01")) + signature))
    value = codec.decode("CancelSessionResponse", raw)[1]
    tid = bytes(range(16))
    assert compact.cancel_session_response(raw, value, tid, None) is None   # never signed with a made-up OID
    full = compact.cancel_session_response(raw, value, tid, "2.999.10")
    assert full is not None
    assert codec.decode("CancelSessionResponse", full)[1]["euiccCancelSessionSigned"] == {
        "transactionId": tid, "smdpOid": "2.999.10", "reason": 1}


async def test_a_restarted_eim_keeps_its_counters_queues_and_results_in_its_state_file(
        pki: RspPki, http: BackhaulHttp, euicc: SoftEuicc, tmp_path: Path) -> None:
    state = tmp_path / "eim.json"
    card = Card(euicc)
    async with EimServer(pki, state_file=state) as eim:
        add_initial_eim(card, eim)
        eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "getRAT"}]})
        await run_one_package(card, http, server_for(pki, eim.url), euicc.eid)
        eim.service.queue_ipa_euicc_data_request(euicc.eid, {"tags": ["euiccInfo2"]})
    async with EimServer(pki, state_file=state) as eim:
        device = eim.service.devices[euicc.eid]
        assert device.counter == 1 and device.results[0].verified
        assert [p.state for p in device.packages] == ["done", "queued"]
        package = eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "listProfileInfo"}]})
        assert package.counter == 2
        device.packages[1].state = "done"          # skip the data request in this test
        await run_one_package(card, http, server_for(pki, eim.url), euicc.eid)
        assert package.state == "done" and device.results[-1].verified
