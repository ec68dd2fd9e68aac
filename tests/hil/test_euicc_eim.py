"""SGP.32 eIM functions of the software eUICC: eIM configuration, signed packages, PSMOs, eCOs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gateway.spec import codec
from hil import rspcrypto
from hil.euicc import SoftEuicc, signed_data
from hil.pki import RspPki
from test_euicc_support import (
    EIM_ID,
    Card,
    Order,
    download,
    eim_configuration,
    eim_package,
    iccid,
    oracle,
    oracle_decode,
    raw_child,
    verify_rs,
)


@pytest.fixture
def card(euicc: SoftEuicc, pki: RspPki) -> Card:
    card = Card(euicc)
    response = card.es10("AddInitialEimRequest", {"eimConfigurationDataList": [eim_configuration(pki)]},
                         "AddInitialEimResponse")
    assert response == ("addInitialEimOk", [("addOk", None)])
    return card


def run(card: Card, pki: RspPki, counter: int, package: tuple[str, list[Any]], **kw: Any) -> tuple[bytes, Any]:
    response = card.call(eim_package(pki, card.euicc.eid, counter, package, **kw))
    return response, codec.decode("EuiccPackageResult", response)


def results(decoded: Any) -> list[tuple[str, Any]]:
    kind, value = decoded
    assert kind == "euiccPackageResultSigned", decoded
    return list(value["euiccPackageResultDataSigned"]["euiccResult"])


@pytest.fixture
def two_profiles(card: Card, pki: RspPki) -> tuple[bytes, bytes]:
    download(card, pki, Order(iccid(11), fallback_allowed=True))
    download(card, pki, Order(iccid(12)))
    return iccid(11), iccid(12)


def test_add_initial_eim_only_once_and_configuration_reads_back(card: Card, pki: RspPki) -> None:
    again = card.es10("AddInitialEimRequest", {"eimConfigurationDataList": [eim_configuration(pki, "other")]},
                      "AddInitialEimResponse")
    assert again == ("addInitialEimError", 2)
    response = card.call(bytes.fromhex("BF5500"))
    [config] = codec.decode("GetEimConfigurationDataResponse", response)["eimConfigurationDataList"]
    assert config["eimId"] == EIM_ID and config["counterValue"] == 0 and config["euiccCiPKId"] == pki.ci_pkid
    assert oracle_decode("GetEimConfigurationDataResponse", response)["eimConfigurationDataList"][0]["eimFqdn"] \
        == EIM_ID
    none = card.es10("GetEimConfigurationDataRequest", {"searchCriteria": ("eimId", "nobody")},
                     "GetEimConfigurationDataResponse")
    assert none == {"eimConfigurationDataList": []}


def test_add_initial_eim_with_association_token_and_certificate(euicc: SoftEuicc, pki: RspPki) -> None:
    card = Card(euicc)
    response = card.es10("AddInitialEimRequest", {"eimConfigurationDataList": [
        eim_configuration(pki, association_token=True, certificate=True)]}, "AddInitialEimResponse")
    assert response == ("addInitialEimOk", [("associationToken", 1)])
    assert euicc.state.eims[0].eim_certificate == pki.eim_sign.cert_der


def test_add_initial_eim_refuses_an_unknown_ci_and_a_full_memory(euicc: SoftEuicc, pki: RspPki) -> None:
    card = Card(euicc)
    data = eim_configuration(pki)
    data["euiccCiPKId"] = bytes(20)
    assert card.es10("AddInitialEimRequest", {"eimConfigurationDataList": [data]},
                     "AddInitialEimResponse") == ("addInitialEimError", 3)
    euicc.faults.memory_full = True
    assert card.es10("AddInitialEimRequest", {"eimConfigurationDataList": [eim_configuration(pki)]},
                     "AddInitialEimResponse") == ("addInitialEimError", 1)
    assert euicc.state.eims == []


def test_package_result_is_signed_over_the_exact_data_and_decodes_in_the_oracle(card: Card, pki: RspPki) -> None:
    response, decoded = run(card, pki, 1, ("psmoList", [("getRAT", {})]))
    [(name, rat)] = results(decoded)
    assert name == "getRATResult" and rat[0]["pprFlags"] == (b"\x80", 1)
    data = decoded[1]["euiccPackageResultDataSigned"]
    assert (data["eimId"], data["counterValue"], data["eimTransactionId"]) == (EIM_ID, 1, b"\x01\x02")
    verify_rs(pki.euicc.cert, raw_child(response, 0, 0), decoded[1]["euiccSignEPR"])
    assert oracle_decode("EuiccPackageResult", response)[1]["euiccPackageResultDataSigned"]["seqNumber"] \
        == data["seqNumber"]


def test_package_result_with_association_token_covers_the_token(euicc: SoftEuicc, pki: RspPki) -> None:
    card = Card(euicc)
    card.es10("AddInitialEimRequest", {"eimConfigurationDataList": [eim_configuration(pki, association_token=True)]},
              "AddInitialEimResponse")
    unsigned_token = run(card, pki, 1, ("psmoList", [("getRAT", {})]))[1]
    assert unsigned_token[0] == "euiccPackageErrorUnsigned" and unsigned_token[1]["associationToken"] == 1
    response, decoded = run(card, pki, 1, ("psmoList", [("getRAT", {})]), association_token=1)
    signed = raw_child(response, 0, 0)
    verify_rs(pki.euicc.cert, signed + bytes.fromhex("840101"), decoded[1]["euiccSignEPR"])
    with pytest.raises(InvalidSignature):
        verify_rs(pki.euicc.cert, signed, decoded[1]["euiccSignEPR"])


def test_replayed_counter_is_refused_with_a_signed_error(card: Card, pki: RspPki) -> None:
    run(card, pki, 5, ("psmoList", [("getRAT", {})]))
    for counter in (5, 4):
        response, (kind, value) = run(card, pki, counter, ("psmoList", [("getRAT", {})]))
        assert kind == "euiccPackageErrorSigned"
        assert value["euiccPackageErrorDataSigned"]["euiccPackageErrorCode"] == 4
        verify_rs(pki.euicc.cert, raw_child(response, 0, 0), value["euiccSignEPE"])
    assert card.euicc.state.eims[0].counter == 5


def test_package_for_another_eid_is_refused(card: Card, pki: RspPki) -> None:
    other = bytes.fromhex("89049032000000000000000000009999")
    response = card.call(eim_package(pki, other, 1, ("psmoList", [("getRAT", {})])))
    kind, value = codec.decode("EuiccPackageResult", response)
    assert kind == "euiccPackageErrorSigned"
    assert value["euiccPackageErrorDataSigned"]["euiccPackageErrorCode"] == 3
    assert card.euicc.state.eims[0].counter == 0


def test_package_signed_by_another_key_or_unknown_eim_is_an_unsigned_error(card: Card, pki: RspPki) -> None:
    _, (kind, value) = run(card, pki, 1, ("psmoList", [("getRAT", {})]), key=pki.dpauth.key)
    assert kind == "euiccPackageErrorUnsigned" and value["eimId"] == EIM_ID
    _, (kind, value) = run(card, pki, 1, ("psmoList", [("getRAT", {})]), eim_id="stranger")
    assert kind == "euiccPackageErrorUnsigned" and value["eimId"] == "stranger"
    assert card.euicc.state.eims[0].counter == 0


def test_package_with_a_field_added_after_signing_is_refused(card: Card, pki: RspPki) -> None:
    request = bytearray(eim_package(pki, card.euicc.eid, 1, ("psmoList", [("getRAT", {})])))
    request[request.index(b"\x81\x01\x01") + 2] = 2     # counterValue 1 -> 2, signature unchanged
    assert codec.decode("EuiccPackageResult", card.call(bytes(request)))[0] == "euiccPackageErrorUnsigned"


def test_enable_disable_delete_psmos_change_state_and_leave_signed_notifications(
        card: Card, pki: RspPki, two_profiles: tuple[bytes, bytes]) -> None:
    first, second = two_profiles
    euicc = card.euicc
    _, decoded = run(card, pki, 1, ("psmoList", [("enable", {"iccid": first})]))
    assert results(decoded) == [("enableResult", 0)]
    assert euicc.state.profile(first).state == "enabled"   # type: ignore[union-attr]
    _, decoded = run(card, pki, 2, ("psmoList", [("enable", {"iccid": second}), ("delete", {"iccid": first})]))
    assert results(decoded) == [("enableResult", 0), ("deleteResult", 0)]
    assert [p.iccid for p in euicc.profiles] == [second]
    events = [n.event for n in euicc.notifications]
    assert events == ["install", "install", "enable", "euiccPackageResult", "disable", "enable", "delete",
                      "euiccPackageResult"]
    delete_note = [n for n in euicc.notifications if n.event == "delete"][0]
    value = codec.decode("OtherSignedNotification", delete_note.der)
    assert value["tbsOtherNotification"]["iccid"] == first
    verify_rs(pki.euicc.cert, raw_child(delete_note.der, 0), value["euiccNotificationSignature"])
    assert oracle_decode("PendingNotification", delete_note.der)[0] == "otherSignedNotification"
    assert euicc.refresh_requests == 2


def test_failing_psmo_stops_the_package(card: Card, pki: RspPki, two_profiles: tuple[bytes, bytes]) -> None:
    first, second = two_profiles
    _, decoded = run(card, pki, 1, ("psmoList", [("disable", {"iccid": first}), ("enable", {"iccid": second})]))
    assert results(decoded) == [("disableResult", 2)]
    _, decoded = run(card, pki, 2, ("psmoList", [("delete", {"iccid": iccid(99)})]))
    assert results(decoded) == [("deleteResult", 1)]
    assert all(p.state == "disabled" for p in card.euicc.profiles)


def test_list_profile_info_psmo_with_search_criteria_and_tag_list(
        card: Card, pki: RspPki, two_profiles: tuple[bytes, bytes]) -> None:
    first, _ = two_profiles
    _, decoded = run(card, pki, 1, ("psmoList", [("listProfileInfo", {
        "searchCriteria": ("iccid", first), "tagList": bytes.fromhex("5A9F7095")})]))
    [(name, (kind, infos))] = results(decoded)
    assert (name, kind) == ("listProfileInfoResult", "profileInfoListOk")
    assert infos == [{"iccid": first, "profileState": 0, "profileClass": 2, "fallbackAttribute": False}]


def test_rollback_flag_then_profile_rollback_returns_to_the_previous_profile(
        card: Card, pki: RspPki, two_profiles: tuple[bytes, bytes]) -> None:
    first, second = two_profiles
    euicc = card.euicc
    run(card, pki, 1, ("psmoList", [("enable", {"iccid": first})]))
    run(card, pki, 2, ("psmoList", [("enable", {"iccid": second, "rollbackFlag": None})]))
    assert euicc.state.enabled_profile().iccid == second  # type: ignore[union-attr]
    response = card.call(codec.encode("ProfileRollbackRequest", {"refreshFlag": True}))
    decoded = codec.decode("ProfileRollbackResponse", response)
    assert decoded["cmdResult"] == 0
    kind, value = decoded["eUICCPackageResult"]
    assert kind == "euiccPackageResultSigned"
    assert value["euiccPackageResultDataSigned"]["euiccResult"] == [("rollbackResult", 0)]
    assert value["euiccPackageResultDataSigned"]["counterValue"] == 2
    assert euicc.state.enabled_profile().iccid == first  # type: ignore[union-attr]
    again = codec.decode("ProfileRollbackResponse", card.call(codec.encode("ProfileRollbackRequest",
                                                                           {"refreshFlag": True})))
    assert again == {"cmdResult": 1}


def test_fallback_attribute_and_fallback_mechanism(card: Card, pki: RspPki, two_profiles: tuple[bytes, bytes]) -> None:
    first, second = two_profiles
    euicc = card.euicc
    _, decoded = run(card, pki, 1, ("psmoList", [("setFallbackAttribute", {"iccid": second})]))
    assert results(decoded) == [("setFallbackAttributeResult", 2)]
    _, decoded = run(card, pki, 2, ("psmoList", [("setFallbackAttribute", {"iccid": first}),
                                                 ("enable", {"iccid": second})]))
    assert results(decoded) == [("setFallbackAttributeResult", 0), ("enableResult", 0)]
    fallback = codec.decode("ExecuteFallbackMechanismResponse",
                            card.call(codec.encode("ExecuteFallbackMechanismRequest", {"refreshFlag": True})))
    assert fallback == {"executeFallbackMechanismResult": 0}
    assert euicc.state.enabled_profile().iccid == first  # type: ignore[union-attr]
    _, decoded = run(card, pki, 3, ("psmoList", [("unsetFallbackAttribute", {})]))
    assert results(decoded) == [("unsetFallbackAttributeResult", 3)]
    back = codec.decode("ReturnFromFallbackResponse",
                        card.call(codec.encode("ReturnFromFallbackRequest", {"refreshFlag": True})))
    assert back == {"returnFromFallbackResult": 0}
    assert euicc.state.enabled_profile().iccid == second  # type: ignore[union-attr]
    _, decoded = run(card, pki, 4, ("psmoList", [("unsetFallbackAttribute", {})]))
    assert results(decoded) == [("unsetFallbackAttributeResult", 0)]
    assert codec.decode("ReturnFromFallbackResponse", card.call(codec.encode(
        "ReturnFromFallbackRequest", {"refreshFlag": True}))) == {"returnFromFallbackResult": 6}


def test_configure_immediate_enable_and_default_dp_address_psmos(card: Card, pki: RspPki) -> None:
    _, decoded = run(card, pki, 1, ("psmoList", [
        ("configureImmediateEnable", {"immediateEnableFlag": None, "defaultSmdpAddress": "dp.example"}),
        ("setDefaultDpAddress", {"defaultDpAddress": "smdp.example.org"})]))
    assert results(decoded) == [("configureImmediateEnableResult", 0),
                                ("setDefaultDpAddressResult", {"setDefaultDpAddressResult": 0})]
    assert card.euicc.state.immediate_enable and card.euicc.state.default_dp_address == "smdp.example.org"
    order = Order(iccid(21))
    download(card, pki, order)
    response = codec.decode("ImmediateEnableResponse", card.call(codec.encode("ImmediateEnableRequest",
                                                                              {"refreshFlag": True})))
    assert response == {"immediateEnableResult": 0}
    assert card.euicc.state.enabled_profile().iccid == order.iccid  # type: ignore[union-attr]


def test_ecos_add_list_update_delete_eims(card: Card, pki: RspPki) -> None:
    second_key = rspcrypto.generate_key()
    _, decoded = run(card, pki, 1, ("ecoList", [
        ("addEim", eim_configuration(pki, "eim2.example.com", counter=10, key=second_key)),
        ("listEim", {})]))
    assert results(decoded) == [("addEimResult", ("addEimResultCode", 0)), ("listEimResult", ("eimIdList", [
        {"eimId": EIM_ID, "eimIdType": 2}, {"eimId": "eim2.example.com", "eimIdType": 2}]))]
    response = card.call(eim_package(pki, card.euicc.eid, 11, ("ecoList", [("updateEim", {
        "eimId": "eim2.example.com", "eimFqdn": "new.example.com"})]), eim_id="eim2.example.com", key=second_key))
    assert results(codec.decode("EuiccPackageResult", response)) == [("updateEimResult", 0)]
    assert card.euicc.state.eim("eim2.example.com").eim_fqdn == "new.example.com"  # type: ignore[union-attr]
    _, decoded = run(card, pki, 2, ("ecoList", [("deleteEim", {"eimId": "eim2.example.com"}),
                                                ("deleteEim", {"eimId": "eim2.example.com"})]))
    assert results(decoded) == [("deleteEimResult", 0), ("deleteEimResult", 1)]


def test_package_results_are_kept_until_removed(card: Card, pki: RspPki) -> None:
    first, _ = run(card, pki, 1, ("psmoList", [("getRAT", {})]))
    second, _ = run(card, pki, 2, ("psmoList", [("getRAT", {})]))
    listed = card.call(codec.encode("RetrieveNotificationsListRequest", {"searchCriteria": ("euiccPackageResults", None)}))
    assert listed == bytes.fromhex("BF2B") + _len(len(first) + len(second) + _hl(len(first) + len(second))) \
        + bytes.fromhex("A2") + _len(len(first) + len(second)) + first + second
    seq = codec.decode("EuiccPackageResult", first)[1]["euiccPackageResultDataSigned"]["seqNumber"]
    assert card.es10("NotificationSentRequest", {"seqNumber": seq}, "NotificationSentResponse") == {
        "deleteNotificationStatus": 0}
    kind, remaining = codec.decode("RetrieveNotificationsListResponse", card.call(codec.encode(
        "RetrieveNotificationsListRequest", {"searchCriteria": ("euiccPackageResults", None)})))
    assert kind == "euiccPackageResultList" and len(remaining) == 1


def _len(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else (bytes([0x81, n]) if n < 0x100 else bytes([0x82, n >> 8, n & 0xFF]))


def _hl(n: int) -> int:
    return 1 + len(_len(n))


def test_get_certs_returns_the_euicc_and_eum_certificates(card: Card, pki: RspPki) -> None:
    kind, certs = card.es10("GetCertsRequest", {}, "GetCertsResponse")
    assert kind == "certs"
    assert x509.load_der_x509_certificate(certs["euiccCertificate"]) == pki.euicc.cert
    assert certs["eumCertificate"] == pki.eum.cert_der
    assert card.es10("GetCertsRequest", {"euiccCiPKId": bytes(20)}, "GetCertsResponse") == ("getCertsError", 1)


def test_ipa_euicc_data_gathers_what_the_euicc_holds(card: Card, pki: RspPki) -> None:
    run(card, pki, 1, ("psmoList", [("setDefaultDpAddress", {"defaultDpAddress": "dp.example"})]))
    response = card.call(codec.encode("IpaEuiccDataRequest", {
        "tagList": bytes.fromhex("A081A2BF20BF2283A5A687"), "eimTransactionId": b"\x09"}))
    kind, data = codec.decode("IpaEuiccDataResponse", response)
    assert kind == "ipaEuiccData"
    assert data["defaultSmdpAddress"] == "dp.example" and data["eimTransactionId"] == b"\x09"
    assert data["euiccCertificate"] == pki.euicc.cert_der and len(data["euiccPackageResultList"]) == 1
    assert data["euiccInfo1"]["euiccCiPKIdListForSigning"] == [pki.ci_pkid]
    assert oracle_decode("IpaEuiccDataResponse", response)[0] == "ipaEuiccData"
    bad = codec.decode("IpaEuiccDataResponse", card.call(codec.encode("IpaEuiccDataRequest", {
        "tagList": bytes.fromhex("9F99")})))
    assert bad == ("ipaEuiccDataResponseError", {"ipaEuiccDataErrorCode": 1})


def test_signature_inputs_append_the_association_token_as_tlv_84() -> None:
    assert signed_data.eim_signature_input(b"\x30\x00", 5) == bytes.fromhex("3000840105")
    assert signed_data.eim_signature_input(b"\x30\x00", None) == b"\x30\x00"
    assert signed_data.association_token_tlv(128) == bytes.fromhex("84020080")


def test_package_encoded_and_signed_by_an_independent_encoder_is_accepted(card: Card, pki: RspPki) -> None:
    """pycrate (asn1play) encodes the EuiccPackageRequest; the eUICC verifies it as received."""
    S = oracle()["SGP32Definitions"]
    signed_type = S["EuiccPackageSigned"]
    signed_type.set_val({"eimId": EIM_ID, "eidValue": card.euicc.eid, "counterValue": 7,
                         "euiccPackage": ("psmoList", [("getRAT", {})])})
    signed = signed_type.to_der()
    signature = rspcrypto.sign_rs(pki.eim_sign.key, signed)
    request_type = S["EuiccPackageRequest"]
    request_type.set_val({"euiccPackageSigned": signed_type.get_val(), "eimSignature": signature})
    response = card.call(request_type.to_der())
    kind, value = codec.decode("EuiccPackageResult", response)
    assert kind == "euiccPackageResultSigned"
    assert value["euiccPackageResultDataSigned"]["counterValue"] == 7
    assert "eimTransactionId" not in value["euiccPackageResultDataSigned"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_altered_byte_of_a_package_is_refused(pki: RspPki, data: st.DataObject) -> None:
    card = Card(SoftEuicc(pki, pki.eid_bytes))
    card.es10("AddInitialEimRequest", {"eimConfigurationDataList": [eim_configuration(pki)]}, "AddInitialEimResponse")
    request = bytearray(eim_package(pki, card.euicc.eid, 3, ("psmoList", [
        ("setDefaultDpAddress", {"defaultDpAddress": "dp.example"})])))
    position = data.draw(st.integers(0, len(request) - 1))
    request[position] ^= data.draw(st.integers(1, 255))
    response, sw = card.call_sw(bytes(request))
    assert sw in (0x9000, 0x6A80, 0x6A88)
    if response:
        assert codec.decode("EuiccPackageResult", response)[0] != "euiccPackageResultSigned"
    assert card.euicc.state.eims[0].counter == 0 and card.euicc.state.default_dp_address is None
