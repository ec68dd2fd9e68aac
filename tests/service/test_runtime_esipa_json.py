"""The runtime's ESipa JSON binding: the engine's DER goes out as the JSON body, the JSON answer
comes back as DER, and signed structures cross both ways as the exact bytes (also when they
hold fields this gateway's ASN.1 does not know). The end-to-end run over HTTPS against the
eIM peer is tests/core/test_e2e_eim.py::test_download_enable_and_data_request_work_over_the_
esipa_json_binding."""

from __future__ import annotations

import base64
import datetime
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, LocalProtocolError, RemoteProtocolError
from gateway.service.esipa_binding import answer_to_der, request_to_json
from gateway.spec import codec, esipa, esipa_json, signed, tlv

EID = bytes.fromhex("89049032123451234512345678901235")
UNKNOWN_FIELD = bytes.fromhex("9F1F0100")      # a field of a newer spec version, inside the signed part


def _euicc_package_result(*, extended: bool) -> bytes:
    raw = codec.encode("EuiccPackageResult", ("euiccPackageResultSigned", {
        "euiccPackageResultDataSigned": {"eimId": "eim-1", "counterValue": 7, "seqNumber": 3,
                                         "euiccResult": [("listEimResult", ("eimIdList", []))]},
        "euiccSignEPR": bytes(range(64))}))
    if not extended:
        return raw
    outer = tlv.read_single(raw)                                   # BF51 { A0 { 30 {...} 5F37 } }
    signed_seq = tlv.children(raw, outer)[0]
    data, signature = tlv.children(raw, signed_seq)
    return signed.wrap(0xBF51, signed.wrap(0xA0, signed.wrap(0x30, data.value_of(raw), UNKNOWN_FIELD),
                                           signature.raw_of(raw)))


def _euicc_package_request(*, extended: bool) -> bytes:
    raw = codec.encode("EuiccPackageRequest", {
        "euiccPackageSigned": {"eimId": "eim-1", "eidValue": EID, "counterValue": 2,
                               "euiccPackage": ("ecoList", [("listEim", {})])},
        "eimSignature": bytes(64)})
    if not extended:
        return raw
    outer = tlv.read_single(raw)
    inner, signature = tlv.children(raw, outer)
    return signed.wrap(0xBF51, signed.wrap(0x30, inner.value_of(raw), UNKNOWN_FIELD), signature.raw_of(raw))


@pytest.mark.parametrize("extended", [False, True], ids=["known-fields", "newer-fields"])
def test_a_provided_result_goes_out_as_json_with_the_euiccs_exact_bytes(extended: bool) -> None:
    result = _euicc_package_result(extended=extended)
    der = signed.provide_eim_package_result(EID, result)
    function, body = request_to_json("ProvideEimPackageResult", der)
    assert function == "provideEimPackageResult"
    obj = json.loads(body)
    assert base64.b64decode(obj["eidValue"]) == EID
    assert base64.b64decode(obj["eimPackageResult"]["euiccPackageResult"]) == result
    assert esipa_json.decode_request("ProvideEimPackageResult", body)["eimPackageResult"] == \
        ("euiccPackageResult", result)


def test_notifications_and_result_keep_their_exact_bytes_in_an_epr_and_notifications() -> None:
    result = _euicc_package_result(extended=True)
    notification = codec.encode("PendingNotification", ("otherSignedNotification", {
        "tbsOtherNotification": {"seqNumber": 4, "profileManagementOperation": (b"\x10", 4),
                                 "notificationAddress": "smdp.example"},
        "euiccNotificationSignature": bytes(64),
        "euiccCertificate": _certificate(), "eumCertificate": _certificate()}))
    der = signed.provide_epr_and_notifications(EID, result, [notification])
    _, body = request_to_json("ProvideEimPackageResult", der)
    value = esipa_json.decode_request("ProvideEimPackageResult", body)
    kind, epr = value["eimPackageResult"]
    assert kind == "ePRAndNotifications"
    assert epr["euiccPackageResult"] == result and epr["notificationList"] == [notification]


def test_a_get_eim_package_request_is_mapped_field_by_field() -> None:
    der = esipa.encode_from_ipa("getEimPackageRequest", {"eidValue": EID, "notifyStateChange": None,
                                                         "stateChangeCause": 2})
    function, body = request_to_json("GetEimPackage", der)
    assert function == "getEimPackage"
    assert json.loads(body) == {"eidValue": base64.b64encode(EID).decode(), "notifyStateChange": None,
                                "stateChangeCause": 2}


def test_a_body_of_another_function_than_named_is_refused() -> None:
    der = esipa.encode_from_ipa("getEimPackageRequest", {"eidValue": EID})
    with pytest.raises(LocalProtocolError, match="GetEimPackageRequest|getEimPackageRequest"):
        request_to_json("ProvideEimPackageResult", der)


def test_a_json_package_comes_back_as_der_holding_the_eims_exact_signed_bytes() -> None:
    request = _euicc_package_request(extended=False)
    body = json.dumps({"euiccPackageRequest": base64.b64encode(request).decode()}).encode()
    der = answer_to_der("GetEimPackage", body)
    assert request in der
    assert esipa.decode_response("GetEimPackage", der)[0] == "euiccPackageRequest"


def test_a_signed_package_our_asn1_cannot_reencode_unchanged_is_refused_not_altered() -> None:
    request = _euicc_package_request(extended=True)
    body = json.dumps({"euiccPackageRequest": base64.b64encode(request).decode()}).encode()
    with pytest.raises(RemoteProtocolError, match="would change"):
        answer_to_der("GetEimPackage", body)


def test_plain_answers_and_empty_answers() -> None:
    assert esipa.decode_response("GetEimPackage", answer_to_der("GetEimPackage", b'{"eimPackageError":1}')) == \
        ("eimPackageError", 1)
    assert answer_to_der("HandleNotification", b"") == b""
    assert answer_to_der("GetEimPackage", b"") == b""


ANSWERING = [f.name for f in esipa.FUNCTIONS.values() if f.from_ipa and f.response is not None]


@settings(max_examples=150, deadline=None, database=None)
@given(function=st.sampled_from(ANSWERING),
       body=st.one_of(st.binary(max_size=40),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                                   lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                                       st.sampled_from(["eimPackageError", "euiccPackageRequest",
                                                        "transactionId", "eimAcknowledgements", "x"]),
                                       inner, max_size=2), max_leaves=6).map(lambda o: json.dumps(o).encode())))
def test_any_json_answer_gives_der_or_a_gateway_error(function: str, body: bytes) -> None:
    try:
        der = answer_to_der(function, body)
    except GatewayError:
        return
    if der:
        esipa.decode_response(function, der)


def _certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "test eUICC")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)
