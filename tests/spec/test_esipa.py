"""ESipa ASN.1 binding and the exact-bytes helpers: pairing, constants, signed pass-through."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from gateway.spec import codec, esipa, signed, tlv
from tests.spec.conftest import CERTIFICATES, Oracle, values

EID = bytes.fromhex("89049032123451234512345678901235")
ICCID = bytes.fromhex("98001032547698103214")
SETTINGS = settings(max_examples=10, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

FACTS_TAGS = {"InitiateAuthentication": 0xBF39, "GetBoundProfilePackage": 0xBF3A,
              "AuthenticateClient": 0xBF3B, "HandleNotification": 0xBF3D, "CancelSession": 0xBF41,
              "TransferEimPackage": 0xBF4E, "GetEimPackage": 0xBF4F, "ProvideEimPackageResult": 0xBF50}


def _package_request() -> bytes:
    return codec.encode("EuiccPackageRequest", {
        "euiccPackageSigned": {"eimId": "eim-1", "eidValue": EID, "counterValue": 7,
                               "eimTransactionId": b"\x42",
                               "euiccPackage": ("psmoList", [("disable", {"iccid": ICCID})])},
        "eimSignature": bytes(range(64))})


def _package_result() -> bytes:
    return codec.encode("EuiccPackageResult", ("euiccPackageResultSigned", {
        "euiccPackageResultDataSigned": {"eimId": "eim-1", "counterValue": 7, "seqNumber": 3,
                                         "euiccResult": [("disableResult", 0)]},
        "euiccSignEPR": bytes(64)}))


def _notification() -> bytes:
    return codec.encode("PendingNotification", ("otherSignedNotification", {
        "tbsOtherNotification": {"seqNumber": 4, "profileManagementOperation": (b"\x20", 3),
                                 "notificationAddress": "smdp.example", "iccid": ICCID},
        "euiccNotificationSignature": bytes(64),
        "euiccCertificate": CERTIFICATES[1], "eumCertificate": CERTIFICATES[0]}))


@pytest.mark.parametrize(("function", "tag"), sorted(FACTS_TAGS.items()))
@SETTINGS
@given(data=st.data())
def test_wrapper_alternatives_carry_the_function_tags(function: str, tag: int, data: Any) -> None:
    f = esipa.FUNCTIONS[function]
    request = data.draw(values(codec.schema(f.request_type)))
    if f.from_ipa:
        body = esipa.encode_from_ipa(f.request, request)
        assert esipa.decode_from_ipa(body) == (f.request, codec.decode(f.request_type, body))
    else:
        body = esipa.encode_from_eim(f.request, request)
        assert esipa.decode_from_eim(body)[0] == f.request
    assert tlv.outer_tag(body) == tag
    # the body of a wrapper message is the message itself
    assert codec.encode(f.request_type, request) == body


def test_the_eim_answer_must_be_the_paired_message() -> None:
    answer = esipa.encode_from_eim("getEimPackageResponse", ("eimPackageError", 1))
    assert esipa.decode_response("GetEimPackage", answer) == ("eimPackageError", 1)
    with pytest.raises(RemoteProtocolError, match="getEimPackageResponse"):
        esipa.decode_response("ProvideEimPackageResult", answer)
    with pytest.raises(RemoteProtocolError):
        esipa.decode_response("HandleNotification", answer)
    with pytest.raises(DecodeError):
        esipa.decode_response("GetEimPackage", bytes.fromhex("BF2E00"))


def test_functions_are_found_from_either_side_of_the_pair() -> None:
    assert esipa.function_of_ipa_message("transferEimPackageResponse").name == "TransferEimPackage"
    assert esipa.function_of_eim_message("getEimPackageResponse").name == "GetEimPackage"


@pytest.mark.parametrize(("value", "ok"), [
    ("gsma/rsp/v1.0.0", True), ("gsma/rsp/v2.1.0", True), (" gsma/rsp/v2.5.1 ", True),
    ("gsma/rsp/v2", False), ("gsma/esim/v1.0.0", False), ("", False), (None, False)])
def test_admin_protocol_header_values(value: str | None, ok: bool) -> None:
    assert esipa.admin_protocol_ok(value) is ok


def test_content_type_of_the_asn1_binding() -> None:
    assert esipa.is_asn1_content_type("application/x-gsma-rsp-asn1")
    assert esipa.is_asn1_content_type("Application/X-GSMA-RSP-ASN1; charset=binary")
    assert not esipa.is_asn1_content_type("application/json")
    assert esipa.ASN1_PATH == "/gsma/rsp2/asn1"


def test_a_field_added_by_a_newer_eim_survives_the_relay_of_the_package() -> None:
    request = _package_request()
    outer = tlv.read_single(request)
    signed_part = tlv.child(request, outer, 0x30)
    # a future field [31] inside euiccPackageSigned, under the eIM's signature
    extended_signed = signed.wrap(0x30, signed_part.value_of(request), bytes.fromhex("9F1F0101"))
    extended = signed.wrap(0xBF51, extended_signed, tlv.child(request, outer, 0x5F37).raw_of(request))
    response = signed.wrap(0xBF4F, extended)

    assert signed.euicc_package_request(response) == extended
    assert signed.euicc_package_signed(extended) == extended_signed
    assert signed.eim_package(response) == extended
    # decoding skips the unknown field, so re-encoding would have broken the signature
    value = esipa.decode_response("GetEimPackage", response)
    assert codec.encode("EuiccPackageRequest", value[1]) != extended


def test_eim_package_refuses_an_error_answer() -> None:
    with pytest.raises(DecodeError):
        signed.eim_package(bytes.fromhex("BF4F03020101"))
    with pytest.raises(DecodeError):
        signed.euicc_package_request(bytes.fromhex("BF2E00"))


def test_signed_elements_are_slices_of_the_received_bytes() -> None:
    euicc_info2 = codec.decode("EUICCInfo2", codec.encode("EUICCInfo2", {
        "profileVersion": b"\x02\x03\x00", "svn": b"\x02\x03\x00", "euiccFirmwareVer": b"\x01\x00\x00",
        "extCardResource": b"", "uiccCapability": (b"\x00", 1), "rspCapability": (b"\x00", 1),
        "euiccCiPKIdListForVerification": [bytes(20)], "euiccCiPKIdListForSigning": [bytes(20)],
        "ppVersion": b"\x01\x00\x00", "sasAcreditationNumber": "SAS"}))
    euicc_signed1 = {"transactionId": b"\x01\x02", "serverAddress": "smdp.example",
                     "serverChallenge": bytes(16), "euiccInfo2": euicc_info2,
                     "ctxParams1": ("ctxParamsForCommonAuthentication", {
                         "deviceInfo": {"tac": b"\x35\x29\x06\x11", "deviceCapabilities": {}}})}
    response = codec.encode("AuthenticateServerResponse", ("authenticateResponseOk", {
        "euiccSigned1": euicc_signed1, "euiccSignature1": bytes(64),
        "euiccCertificate": CERTIFICATES[1], "eumCertificate": CERTIFICATES[0]}))
    assert signed.euicc_signed1(response) == codec.encode("EuiccSigned1", euicc_signed1)
    assert signed.euicc_signed1(response) in response

    notifications = [_notification(), _notification()]
    listing = codec.encode("RetrieveNotificationsListResponse", (
        "notificationList", [codec.decode("PendingNotification", n) for n in notifications]))
    assert signed.pending_notifications(listing) == notifications
    assert signed.euicc_package_results(listing) == []
    results = codec.encode("RetrieveNotificationsListResponse", (
        "euiccPackageResultList", [codec.decode("EuiccPackageResult", _package_result())]))
    assert signed.euicc_package_results(results) == [_package_result()]


def test_received_keeps_bytes_and_value() -> None:
    r = signed.Received.decode("EuiccPackageRequest", _package_request())
    assert r.raw == _package_request()
    assert r.value["euiccPackageSigned"]["counterValue"] == 7


def test_built_messages_equal_the_codec_encoding_and_the_oracle(oracle: Oracle) -> None:
    result, notification = _package_result(), _notification()
    cases = [
        (signed.provide_eim_package_result(EID, result), "ProvideEimPackageResult",
         {"eidValue": EID, "eimPackageResult": ("euiccPackageResult",
                                                codec.decode("EuiccPackageResult", result))}),
        (signed.provide_epr_and_notifications(None, result, [notification]), "ProvideEimPackageResult",
         {"eimPackageResult": ("ePRAndNotifications", {
             "euiccPackageResult": codec.decode("EuiccPackageResult", result),
             "notificationList": [codec.decode("PendingNotification", notification)]})}),
        (signed.handle_notification(notification), "HandleNotificationEsipa",
         ("pendingNotification", codec.decode("PendingNotification", notification))),
        (signed.transfer_eim_package_response(result), "TransferEimPackageResponse",
         ("euiccPackageResult", codec.decode("EuiccPackageResult", result))),
        (signed.cancel_session_request(b"\x07", bytes.fromhex("BF4103810105")),
         "CancelSessionRequestEsipa",
         {"transactionId": b"\x07", "cancelSessionResponse": ("cancelSessionResponseError", 5)}),
        (signed.get_bound_profile_package_request(b"\x07", bytes.fromhex("BF2108A106800107020105")),
         "GetBoundProfilePackageRequestEsipa",
         {"transactionId": b"\x07", "prepareDownloadResponse": ("downloadResponseError", {
             "transactionId": b"\x07", "downloadErrorCode": 5})}),
        (signed.authenticate_client_request(b"\x07", bytes.fromhex("BF3808A106800107020106")),
         "AuthenticateClientRequestEsipa",
         {"transactionId": b"\x07", "authenticateServerResponse": ("authenticateResponseError", {
             "transactionId": b"\x07", "authenticateErrorCode": 6})}),
    ]
    for built, type_name, value in cases:
        assert built == codec.encode(type_name, value)
        module, name = codec.resolve(type_name)
        o = oracle.obj(module, name)
        o.from_der(built)
        assert o.to_der() == built


def test_ipa_euicc_data_response_splices_and_orders_its_parts() -> None:
    notification = _notification()
    built = signed.ipa_euicc_data_response(
        notifications=[notification], eum_certificate=CERTIFICATES[0],
        default_smdp_address="smdp.example", eim_transaction_id=b"\x09",
        rest={"associationToken": 12, "ipaCapabilities": {"ipaFeatures": (b"\x40", 2)}})
    value = codec.decode("IpaEuiccDataResponse", built)
    assert value == ("ipaEuiccData", {
        "notificationsList": [codec.decode("PendingNotification", notification)],
        "defaultSmdpAddress": "smdp.example", "associationToken": 12,
        "eumCertificate": CERTIFICATES[0], "eimTransactionId": b"\x09",
        "ipaCapabilities": {"ipaFeatures": (b"\x40", 2)}})
    assert built == codec.encode("IpaEuiccDataResponse", value)


def test_builders_refuse_elements_of_the_wrong_kind() -> None:
    with pytest.raises(LocalProtocolError, match="EuiccPackageResult"):
        signed.provide_eim_package_result(EID, _package_request()[:-1])
    with pytest.raises(LocalProtocolError, match="EID"):
        signed.provide_eim_package_result(b"\x89", _package_result())
    with pytest.raises(LocalProtocolError, match="AuthenticateServerResponse"):
        signed.authenticate_client_request(b"\x01", bytes.fromhex("BF2100"))
    with pytest.raises(LocalProtocolError, match="transactionId"):
        signed.authenticate_client_request(b"", bytes.fromhex("BF3800"))
    with pytest.raises(LocalProtocolError, match="PendingNotification"):
        signed.handle_notification(bytes.fromhex("BF2E00"))
    # well-tagged but not a valid EuiccPackageResult: the built message is checked
    with pytest.raises(LocalProtocolError, match="invalid"):
        signed.transfer_eim_package_response(bytes.fromhex("BF5100"))
