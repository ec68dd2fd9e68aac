"""ES9+ / ES11 JSON bodies (gateway.spec.es9p, gateway.spec.es11): pure, no sockets."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import DecodeError, FunctionFailed, is_retryable
from gateway.spec import es9p, es11

TID = bytes.fromhex("0123456789ABCDEF0123456789ABCDEF")
# Deliberately non-canonical DER (long-form length for a short value): must survive untouched.
SIGNED_NON_CANONICAL = bytes.fromhex("30 81 03 80 01 05".replace(" ", ""))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def success(**fields: object) -> bytes:
    return json.dumps({"header": {"functionExecutionStatus": {"status": "Executed-Success"}}, **fields}).encode()


def failed(subject: str, reason: str, status: str = "Failed", **extra: str) -> bytes:
    scd = {"subjectCode": subject, "reasonCode": reason, **extra}
    return json.dumps({"header": {"functionExecutionStatus": {"status": status, "statusCodeData": scd}}}).encode()


def test_initiate_authentication_request_uses_spec_field_names_and_base64() -> None:
    body = es9p.InitiateAuthenticationRequest(b"\x01" * 16, b"\xbf\x20\x00", "smdp.example.com").to_json()
    assert json.loads(body) == {"euiccChallenge": b64(b"\x01" * 16), "euiccInfo1": b64(b"\xbf\x20\x00"),
                                "smdpAddress": "smdp.example.com"}


def test_initiate_authentication_response_keeps_signed_bytes_exactly() -> None:
    body = success(transactionId=TID.hex().upper(), serverSigned1=b64(SIGNED_NON_CANONICAL),
                   serverSignature1=b64(b"\x5f\x37\x40" + b"s" * 64), euiccCiPKIdToBeUsed=b64(b"\x04\x14" + b"k" * 20),
                   serverCertificate=b64(b"\x30\x82cert"))
    r = es9p.InitiateAuthenticationResponse.from_json(body)
    assert r.transaction_id == TID
    assert r.server_signed1 == SIGNED_NON_CANONICAL
    assert r.header.status == es9p.EXECUTED_SUCCESS
    assert es9p.InitiateAuthenticationResponse.from_json(r.to_json()) == r


def test_every_request_round_trips_through_json() -> None:
    reqs = [
        es9p.AuthenticateClientRequest(TID, SIGNED_NON_CANONICAL),
        es9p.GetBoundProfilePackageRequest(TID, b"\xbf\x21\x01\x00"),
        es9p.HandleNotificationRequest(b"\xbf\x37\x00"),
        es9p.CancelSessionRequest(b"\x01", b"\xbf\x41\x00"),
        es9p.InitiateAuthenticationRequest(b"c" * 16, b"i", "dp"),
    ]
    for req in reqs:
        assert type(req).from_json(req.to_json()) == req  # type: ignore[attr-defined]
    assert json.loads(reqs[0].to_json()) == {"transactionId": TID.hex().upper(),
                                             "authenticateServerResponse": b64(SIGNED_NON_CANONICAL)}
    assert json.loads(reqs[3].to_json())["cancelSessionResponse"] == b64(b"\xbf\x41\x00")


def test_authenticate_client_and_bpp_responses_parse() -> None:
    ac = es9p.AuthenticateClientResponse.from_json(success(
        transactionId=TID.hex(), profileMetadata=b64(b"\xbf\x25\x00"), smdpSigned2=b64(SIGNED_NON_CANONICAL),
        smdpSignature2=b64(b"\x5f\x37\x00"), smdpCertificate=b64(b"\x30\x00")))
    assert ac.smdp_signed2 == SIGNED_NON_CANONICAL and ac.profile_metadata == b"\xbf\x25\x00"
    assert es9p.AuthenticateClientResponse.from_json(ac.to_json()) == ac
    bpp = es9p.GetBoundProfilePackageResponse.from_json(success(transactionId="AB", boundProfilePackage=b64(b"\xbf\x36" + bytes(300))))
    assert bpp.transaction_id == b"\xab" and len(bpp.bound_profile_package) == 302


def test_failed_status_raises_function_failed_with_codes_and_message() -> None:
    with pytest.raises(FunctionFailed) as info:
        es9p.AuthenticateClientResponse.from_json(failed("8.10.1", "3.9", subjectIdentifier="tid", message="unknown"))
    exc = info.value
    assert (exc.subject_code, exc.reason_code) == ("8.10.1", "3.9")
    assert not is_retryable(exc)
    assert "unknown" in str(exc) and "authenticateClient" in str(exc)


@pytest.mark.parametrize(("subject", "reason", "retryable"), [
    ("8.8.5", "6.4", False),    # maximum number of retries exceeded
    ("8.8.5", "4.10", False),   # download order expired
    ("8.1", "4.8", False),      # insufficient memory
    ("8.2.7", "2.2", False),    # confirmation code missing
    ("8.2", "1.2", False),      # profile not released
    ("8.1", "6.1", False),      # eUICC signature invalid
    ("8.1", "4.1", True),       # execution error
    ("8.8", "5.1", True),       # transport: inaccessible
    ("8.8", "5.3", True),       # transport: transaction timeout
    ("8.8", "9.9", False),      # unknown family: definitive
])
def test_reason_code_classification(subject: str, reason: str, retryable: bool) -> None:
    with pytest.raises(FunctionFailed) as info:
        es9p.GetBoundProfilePackageResponse.from_json(failed(subject, reason))
    assert is_retryable(info.value) is retryable


def test_expired_status_is_definitive_and_warning_is_success() -> None:
    with pytest.raises(FunctionFailed) as info:
        es9p.parse_header_only(failed("8.8.5", "4.10", status="Expired"), "cancelSession")
    assert not is_retryable(info.value)
    h = es9p.parse_header_only(failed("8.1", "4.2", status="Executed-WithWarning"), "cancelSession")
    assert h.status == es9p.EXECUTED_WITH_WARNING and h.status_code_data is not None
    assert h.status_code_data.reason_code == "4.2"


@pytest.mark.parametrize("body", [
    b"", b"\xff\xfe", b"not json", b"[]", b"null", b'{"header": 1}',
    b'{"header": {"functionExecutionStatus": {"status": "Maybe"}}}',
    b'{"header": {"functionExecutionStatus": {}}}',
    b'{"header": {"functionExecutionStatus": {"status": "Failed", "statusCodeData": {"subjectCode": 8}}}}',
    success(transactionId="XYZ", boundProfilePackage="AA=="),
    success(transactionId="ABC", boundProfilePackage="AA=="),         # odd hex length
    success(transactionId="AB" * 17, boundProfilePackage="AA=="),     # 17 bytes
    success(transactionId="AB", boundProfilePackage="not base64!"),
    success(transactionId="AB", boundProfilePackage=5),
    success(transactionId="AB"),
    b"[" * 100000,
])
def test_malformed_bodies_raise_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        es9p.GetBoundProfilePackageResponse.from_json(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(
        st.sampled_from(["header", "functionExecutionStatus", "status", "statusCodeData", "transactionId",
                         "boundProfilePackage", "eventEntries", "eventId", "rspServerAddress", "x"]), c, max_size=5),
    max_leaves=20).map(lambda v: json.dumps(v).encode()))
def test_fuzzed_bodies_only_raise_project_errors(body: bytes) -> None:
    for parse in (es9p.GetBoundProfilePackageResponse.from_json, es9p.InitiateAuthenticationResponse.from_json,
                  es11.AuthenticateClientResponse.from_json, es9p.AuthenticateClientRequest.from_json):
        try:
            parse(body)
        except (DecodeError, FunctionFailed):
            pass


def test_es11_event_retrieval_bodies() -> None:
    req = es11.InitiateAuthenticationRequest(b"c" * 16, b"\xbf\x20\x00", "smds.example.com")
    assert json.loads(req.to_json())["smdsAddress"] == "smds.example.com"
    assert es11.es11_path(es11.AUTHENTICATE_CLIENT) == "/gsma/rsp2/es11/authenticateClient"
    resp = es11.AuthenticateClientResponse.from_json(success(
        transactionId="01", eventEntries=[{"eventId": "EV1", "rspServerAddress": "dp1.example"},
                                          {"eventId": "EV2", "rspServerAddress": "dp2.example"}]))
    assert [e.event_id for e in resp.event_entries] == ["EV1", "EV2"]
    assert es11.AuthenticateClientResponse.from_json(resp.to_json()) == resp
    assert es11.AuthenticateClientResponse.from_json(success()).event_entries == ()
    with pytest.raises(DecodeError):
        es11.AuthenticateClientResponse.from_json(success(eventEntries=[{"eventId": "EV1"}]))
    with pytest.raises(FunctionFailed):
        es11.AuthenticateClientResponse.from_json(failed("8.1", "6.1"))


def test_constants_follow_sgp22() -> None:
    assert es9p.es9p_path(es9p.GET_BOUND_PROFILE_PACKAGE) == "/gsma/rsp2/es9plus/getBoundProfilePackage"
    assert es9p.JSON_CONTENT_TYPE == "application/json;charset=UTF-8"
    assert es9p.ADMIN_PROTOCOL.startswith("gsma/rsp/v2.")
    assert es9p.HANDLE_NOTIFICATION_STATUS == 204
