"""Profile download against the software eUICC, with real signatures and SCP03t, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.exceptions import InvalidSignature

from gateway.spec import bpp as bpp_split
from gateway.spec import codec
from hil.euicc import Faults, PowerLoss, SoftEuicc
from hil import rspcrypto
from hil.pki import RspPki, generate_pki, issue_certificate
from test_euicc_support import (
    Card,
    MiniSmdp,
    Order,
    download,
    iccid,
    oracle_decode,
    raw_child,
    verify_rs,
)


@pytest.fixture
def card(euicc: SoftEuicc) -> Card:
    return Card(euicc)


@pytest.fixture(scope="module")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> RspPki:
    return generate_pki(tmp_path_factory.mktemp("rogue"))


def test_challenge_is_fresh_16_bytes_each_time(card: Card) -> None:
    first = card.es10("GetEuiccChallengeRequest", {}, "GetEuiccChallengeResponse")["euiccChallenge"]
    second = card.es10("GetEuiccChallengeRequest", {}, "GetEuiccChallengeResponse")["euiccChallenge"]
    assert len(first) == 16 and first != second


def test_euicc_info1_and_2_name_the_ci_and_decode_in_the_oracle(card: Card, pki: RspPki) -> None:
    info1 = card.call(bytes.fromhex("BF2000"))
    assert codec.decode("EUICCInfo1", info1)["euiccCiPKIdListForSigning"] == [pki.ci_pkid]
    assert oracle_decode("EUICCInfo1", info1, "RSPDefinitions")["euiccCiPKIdListForVerification"] == [pki.ci_pkid]
    info2 = card.call(bytes.fromhex("BF2200"))
    decoded = oracle_decode("EUICCInfo2", info2)
    assert decoded["euiccCiPKIdListForSigning"] == [pki.ci_pkid]
    assert decoded["iotSpecificInfo"]["iotVersion"] == [b"\x01\x02\x00"]


def test_full_download_installs_a_profile_with_a_signed_installation_result(
        card: Card, euicc: SoftEuicc, pki: RspPki) -> None:
    order = Order(iccid(1))
    pir, smdp = download(card, pki, order)
    data = codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"]
    assert data["finalResult"][0] == "successResult"
    assert data["transactionId"] == smdp.transaction_id
    assert data["notificationMetadata"]["notificationAddress"] == smdp.address
    assert bytes.fromhex("060388370A") in raw_child(pir, 0)   # smdpOid 2.999.10 from CERT.DPauth
    assert smdp.euicc_cert is not None
    verify_rs(smdp.euicc_cert, raw_child(pir, 0), codec.decode("ProfileInstallationResult", pir)["euiccSignPIR"])
    assert oracle_decode("ProfileInstallationResult", pir)["profileInstallationResultData"]["transactionId"] \
        == smdp.transaction_id
    [profile] = euicc.profiles
    assert profile.iccid == order.iccid and profile.state == "disabled" and profile.install_state == "installed"
    assert profile.profile_elements == len(order.pe_bytes)
    assert not euicc.session_open
    [note] = euicc.notifications
    assert note.event == "install" and note.der == pir


def test_download_with_replace_session_keys_and_small_segments(euicc: SoftEuicc, pki: RspPki) -> None:
    card = Card(euicc, segment_size=37, max_le=100)
    pir, _ = download(card, pki, Order(iccid(2), pe_bytes=bytes(3000)), replace_keys=True)
    assert codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"]["finalResult"][0] \
        == "successResult"
    assert euicc.profiles[0].profile_elements == 3000


def test_authenticate_server_refuses_a_server_certificate_from_an_unknown_ci(
        card: Card, pki: RspPki, rogue_pki: RspPki) -> None:
    challenge = card.es10("GetEuiccChallengeRequest", {}, "GetEuiccChallengeResponse")["euiccChallenge"]
    smdp = MiniSmdp(pki, dpauth_key=rogue_pki.dpauth.key, dpauth_der=rogue_pki.dpauth.cert_der)
    kind, err = codec.decode("AuthenticateServerResponse", card.call(smdp.authenticate_server_request(challenge)))
    assert kind == "authenticateResponseError" and err["authenticateErrorCode"] == 7
    assert not card.euicc.session_open


def test_authenticate_server_refuses_an_unknown_ci_to_be_used(card: Card, rogue_pki: RspPki, pki: RspPki) -> None:
    challenge = card.es10("GetEuiccChallengeRequest", {}, "GetEuiccChallengeResponse")["euiccChallenge"]
    request = MiniSmdp(pki).authenticate_server_request(challenge, ci_pkid=rogue_pki.ci_pkid)
    assert codec.decode("AuthenticateServerResponse", card.call(request))[1]["authenticateErrorCode"] == 7


def test_authenticate_server_refuses_a_signature_by_another_key(card: Card, pki: RspPki) -> None:
    challenge = card.es10("GetEuiccChallengeRequest", {}, "GetEuiccChallengeResponse")["euiccChallenge"]
    smdp = MiniSmdp(pki, dpauth_key=pki.dppb.key)
    kind, err = codec.decode("AuthenticateServerResponse", card.call(smdp.authenticate_server_request(challenge)))
    assert (kind, err["authenticateErrorCode"]) == ("authenticateResponseError", 2)


def test_authenticate_server_refuses_another_challenge_and_no_session(card: Card, pki: RspPki) -> None:
    request = MiniSmdp(pki).authenticate_server_request(bytes(16))
    assert codec.decode("AuthenticateServerResponse", card.call(request))[1]["authenticateErrorCode"] == 4
    card.es10("GetEuiccChallengeRequest", {}, "GetEuiccChallengeResponse")
    assert codec.decode("AuthenticateServerResponse", card.call(request))[1]["authenticateErrorCode"] == 6


def test_authenticate_server_refuses_a_dppb_certificate_in_place_of_dpauth(card: Card, pki: RspPki) -> None:
    challenge = card.es10("GetEuiccChallengeRequest", {}, "GetEuiccChallengeResponse")["euiccChallenge"]
    smdp = MiniSmdp(pki, dpauth_key=pki.dppb.key, dpauth_der=pki.dppb.cert_der)
    assert codec.decode("AuthenticateServerResponse",
                        card.call(smdp.authenticate_server_request(challenge)))[1]["authenticateErrorCode"] == 1


def test_authenticate_server_refuses_a_dpauth_certificate_naming_no_smdp_oid_as_invalid_oid(
        card: Card, pki: RspPki) -> None:
    no_oid = issue_certificate(x509.Name.from_rfc4514_string("CN=SMDP without OID,O=ipae-gateway Test"),
                               (pki.ci.key, pki.ci.cert), roles=[rspcrypto.OID_RSP_ROLE_DP_AUTH],
                               key_usage=pki.dpauth.cert.extensions.get_extension_for_class(x509.KeyUsage).value)
    challenge = card.es10("GetEuiccChallengeRequest", {}, "GetEuiccChallengeResponse")["euiccChallenge"]
    smdp = MiniSmdp(pki, dpauth_key=no_oid[0], dpauth_der=no_oid[1].public_bytes(serialization.Encoding.DER))
    kind, err = codec.decode("AuthenticateServerResponse", card.call(smdp.authenticate_server_request(challenge)))
    assert (kind, err["authenticateErrorCode"]) == ("authenticateResponseError", 5)
    assert not card.euicc.session_open


def test_a_profile_configured_without_dp_proprietary_data_lists_without_it_and_keeps_the_dpauth_oid(
        card: Card, euicc: SoftEuicc, pki: RspPki) -> None:
    download(card, pki, Order(iccid(1), dp_oid=None))
    download(card, pki, Order(iccid(2)))
    _, infos = card.es10("ProfileInfoListRequest", {}, "ProfileInfoListResponse")
    assert ["dpProprietaryData" in info for info in infos] == [False, True]
    assert infos[1]["dpProprietaryData"] == {"dpOid": "2.999.10"}
    assert [p.smdp_oid for p in euicc.profiles] == ["2.999.10", "2.999.10"]   # CERT.DPauth's, never "" or "0.0"


def test_prepare_download_refuses_a_bad_smdp_signature2(card: Card, pki: RspPki) -> None:
    smdp = MiniSmdp(pki)
    challenge = card.es10("GetEuiccChallengeRequest", {}, "GetEuiccChallengeResponse")["euiccChallenge"]
    smdp.check_authenticate_response(card.call(smdp.authenticate_server_request(challenge)))
    kind, err = codec.decode("PrepareDownloadResponse", card.call(smdp.prepare_download_request(key=pki.dpauth.key)))
    assert (kind, err["downloadErrorCode"]) == ("downloadResponseError", 2)


def test_prepare_download_without_authentication_has_no_session(card: Card, pki: RspPki) -> None:
    smdp = MiniSmdp(pki, euicc_signature1=bytes(64))
    assert codec.decode("PrepareDownloadResponse", card.call(smdp.prepare_download_request()))[1][
        "downloadErrorCode"] == 4


def _prepared(card: Card, pki: RspPki) -> MiniSmdp:
    smdp = MiniSmdp(pki)
    challenge = card.es10("GetEuiccChallengeRequest", {}, "GetEuiccChallengeResponse")["euiccChallenge"]
    smdp.check_authenticate_response(card.call(smdp.authenticate_server_request(challenge)))
    smdp.check_prepare_response(card.call(smdp.prepare_download_request()))
    return smdp


def _error_of(pir: bytes) -> tuple[int, int]:
    kind, err = codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"]["finalResult"]
    assert kind == "errorResult"
    return err["bppCommandId"], err["errorReason"]


def test_tampered_profile_element_segment_gets_an_early_error_result(card: Card, euicc: SoftEuicc,
                                                                      pki: RspPki) -> None:
    smdp = _prepared(card, pki)
    bpp = smdp.bound_profile_package(euicc.eid, Order(iccid(3), pe_bytes=bytes(2500)))
    segments = bpp_split.segments(bpp)
    target = len(segments) - 2
    segments[target] = segments[target][:-9] + bytes([segments[target][-9] ^ 1]) + segments[target][-8:]
    for index, segment in enumerate(segments):
        data = card.call(segment)
        if data:
            break
    assert index == target
    assert _error_of(data) == (5, 8)
    assert euicc.profiles == [] and not euicc.session_open
    assert smdp.euicc_cert is not None
    verify_rs(smdp.euicc_cert, raw_child(data, 0), codec.decode("ProfileInstallationResult", data)["euiccSignPIR"])
    assert euicc.notifications[-1].der == data


def test_bpp_bound_to_another_transaction_is_refused_at_initialise_secure_channel(
        card: Card, euicc: SoftEuicc, pki: RspPki) -> None:
    smdp = _prepared(card, pki)
    good = smdp.transaction_id
    smdp.transaction_id = bytes(16)
    bpp = smdp.bound_profile_package(euicc.eid, Order(iccid(4)))
    smdp.transaction_id = good
    data, index = card.load_bpp(bpp)
    assert index == 0 and _error_of(data) == (0, 3)


def test_bpp_signed_for_another_euicc_otpk_is_an_invalid_signature(card: Card, euicc: SoftEuicc,
                                                                   pki: RspPki) -> None:
    smdp = _prepared(card, pki)
    real = smdp.euicc_otpk
    from hil import rspcrypto
    smdp.euicc_otpk = rspcrypto.public_key_bytes(rspcrypto.generate_key().public_key())
    bpp = smdp.bound_profile_package(euicc.eid, Order(iccid(5)))
    smdp.euicc_otpk = real
    data, index = card.load_bpp(bpp)
    assert index == 0 and _error_of(data) == (0, 2)


def test_second_install_of_the_same_iccid_is_refused(card: Card, euicc: SoftEuicc, pki: RspPki) -> None:
    download(card, pki, Order(iccid(6)))
    pir, _ = download(card, pki, Order(iccid(6)))
    assert _error_of(pir) == (2, 9)
    assert len(euicc.profiles) == 1


def test_full_memory_refuses_the_isdp(euicc: SoftEuicc, pki: RspPki) -> None:
    euicc.faults.memory_full = True
    pir, _ = download(Card(euicc), pki, Order(iccid(7)))
    assert _error_of(pir) == (1, 10)
    assert euicc.profiles == []


def test_cancel_session_answers_a_signed_response_and_ends_the_session(card: Card, euicc: SoftEuicc,
                                                                       pki: RspPki) -> None:
    smdp = _prepared(card, pki)
    response = card.call(codec.encode("CancelSessionRequest", {"transactionId": smdp.transaction_id, "reason": 1}))
    kind, ok = codec.decode("CancelSessionResponse", response)
    assert kind == "cancelSessionResponseOk"
    signed = ok["euiccCancelSessionSigned"]
    assert (signed["transactionId"], signed["reason"]) == (smdp.transaction_id, 1)
    assert bytes.fromhex("810388370A") in raw_child(response, 0, 0)   # smdpOid 2.999.10
    verify_rs(pki.euicc.cert, raw_child(response, 0, 0), ok["euiccCancelSessionSignature"])
    assert not euicc.session_open
    again = card.call(codec.encode("CancelSessionRequest", {"transactionId": smdp.transaction_id, "reason": 1}))
    assert codec.decode("CancelSessionResponse", again) == ("cancelSessionResponseError", 5)


def test_cancel_session_answer_is_not_valid_for_another_key(card: Card, pki: RspPki) -> None:
    smdp = _prepared(card, pki)
    response = card.call(codec.encode("CancelSessionRequest", {"transactionId": smdp.transaction_id, "reason": 2}))
    with pytest.raises(InvalidSignature):
        verify_rs(pki.dpauth.cert, raw_child(response, 0, 0),
                  codec.decode("CancelSessionResponse", response)[1]["euiccCancelSessionSignature"])


@pytest.mark.parametrize(("tear_after", "command"), [(2, 2), (5, 5)])
def test_tear_in_the_middle_of_the_bpp_leaves_no_profile_and_reports_interruption(
        pki: RspPki, tmp_path: Path, tear_after: int, command: int) -> None:
    state = tmp_path / "euicc.json"
    euicc = SoftEuicc(pki, pki.eid_bytes, state, faults=Faults(tear_after_bpp_segments=tear_after))
    card = Card(euicc)
    smdp = _prepared(card, pki)
    segments = bpp_split.segments(smdp.bound_profile_package(euicc.eid, Order(iccid(8), pe_bytes=bytes(2500))))
    with pytest.raises(PowerLoss):
        for segment in segments:
            card.call(segment)
    with pytest.raises(PowerLoss):
        euicc.transmit(bytes.fromhex("00A4040010") + bytes(16))
    [torn] = json.loads(state.read_text())["state"]["profiles"]
    assert torn["install_state"] == "installing"          # what the card's NVM held at the tear
    reborn = SoftEuicc(pki, pki.eid_bytes, state)
    assert reborn.profiles == []
    [note] = reborn.notifications
    assert note.event == "install"
    assert _error_of(note.der) == (command, 11)
    assert codec.decode("ProfileInstallationResult", note.der)["profileInstallationResultData"]["transactionId"] \
        == smdp.transaction_id
    verify_rs(pki.euicc.cert, raw_child(note.der, 0), codec.decode("ProfileInstallationResult", note.der)["euiccSignPIR"])


def test_power_cycle_after_a_tear_on_the_same_object(pki: RspPki) -> None:
    euicc = SoftEuicc(pki, pki.eid_bytes, None, faults=Faults(tear_after_bpp_segments=3))
    card = Card(euicc)
    smdp = _prepared(card, pki)
    with pytest.raises(PowerLoss):
        card.load_bpp(smdp.bound_profile_package(euicc.eid, Order(iccid(9))))
    euicc.power_cycle()
    assert euicc.profiles == [] and not euicc.session_open
    assert _error_of(euicc.notifications[0].der)[1] == 11
    download(Card(euicc), pki, Order(iccid(9)))
    assert [p.iccid for p in euicc.profiles] == [iccid(9)]


def test_euicc_for_another_eid_gets_its_own_certificate_under_the_eum(pki: RspPki) -> None:
    eid = bytes.fromhex("89049032000000000000000000001234")
    euicc = SoftEuicc(pki, eid)
    card = Card(euicc)
    smdp = MiniSmdp(pki)
    challenge = card.es10("GetEuiccChallengeRequest", {}, "GetEuiccChallengeResponse")["euiccChallenge"]
    ok = smdp.check_authenticate_response(card.call(smdp.authenticate_server_request(challenge)))
    cert = x509.load_der_x509_certificate(ok["euiccCertificate"])
    assert cert.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == eid.hex()


def test_every_download_response_decodes_in_the_independent_decoder(card: Card, euicc: SoftEuicc,
                                                                     pki: RspPki) -> None:
    smdp = MiniSmdp(pki)
    challenge = card.call(bytes.fromhex("BF2E00"))
    assert oracle_decode("GetEuiccChallengeResponse", challenge, "RSPDefinitions")["euiccChallenge"] \
        == codec.decode("GetEuiccChallengeResponse", challenge)["euiccChallenge"]
    auth = card.call(smdp.authenticate_server_request(codec.decode("GetEuiccChallengeResponse",
                                                                   challenge)["euiccChallenge"]))
    kind, ok = oracle_decode("AuthenticateServerResponse", auth)
    assert kind == "authenticateResponseOk" and ok["euiccSigned1"]["transactionId"] == smdp.transaction_id
    smdp.check_authenticate_response(auth)
    prepared = card.call(smdp.prepare_download_request())
    kind, ok = oracle_decode("PrepareDownloadResponse", prepared)
    assert kind == "downloadResponseOk" and len(ok["euiccSigned2"]["euiccOtpk"]) == 65
    cancel = card.call(codec.encode("CancelSessionRequest", {"transactionId": smdp.transaction_id, "reason": 4}))
    kind, ok = oracle_decode("CancelSessionResponse", cancel)
    assert kind == "cancelSessionResponseOk" and ok["euiccCancelSessionSigned"]["reason"] == 4
    download(card, pki, Order(iccid(30)))
    listed = card.call(bytes.fromhex("BF2800"))
    assert oracle_decode("ListNotificationResponse", listed, "RSPDefinitions")[1][0]["seqNumber"] == 1
    pending = card.call(bytes.fromhex("BF2B00"))
    kind, items = oracle_decode("RetrieveNotificationsListResponse", pending)
    assert kind == "notificationList" and items[0][0] == "profileInstallationResult"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_corruption_of_a_bpp_is_refused_without_installing(pki: RspPki, data: st.DataObject) -> None:
    euicc = SoftEuicc(pki, pki.eid_bytes)
    card = Card(euicc)
    smdp = _prepared(card, pki)
    segments = bpp_split.segments(smdp.bound_profile_package(euicc.eid, Order(iccid(40), pe_bytes=bytes(1200))))
    index = data.draw(st.integers(0, len(segments) - 1))
    position = data.draw(st.integers(0, len(segments[index]) - 1))
    flip = data.draw(st.integers(1, 255))
    segment = bytearray(segments[index])
    segment[position] ^= flip
    segments[index] = bytes(segment)
    outcome = None
    for segment in segments:
        response, sw = card.call_sw(segment)
        assert sw in (0x9000, 0x6A80, 0x6A88, 0x6985)
        if sw != 0x9000 or response:
            outcome = response
            break
    if outcome:
        kind, _ = codec.decode("ProfileInstallationResult", outcome)["profileInstallationResultData"]["finalResult"]
        assert kind == "errorResult"
    if euicc.session_open:      # the IPA ends a failed download with CancelSession
        card.call(codec.encode("CancelSessionRequest", {"transactionId": smdp.transaction_id, "reason": 5}))
    assert euicc.profiles == [] and euicc.bpp is None
