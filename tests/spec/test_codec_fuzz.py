"""Malformed input: whatever the bytes, decoding returns a value or raises DecodeError."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import DecodeError
from gateway.spec import codec, es10b, esipa, messages
from tests.spec.conftest import values

FUZZED_TYPES = [
    "EsipaMessageFromEimToIpa", "EsipaMessageFromIpaToEim", "EuiccPackageRequest",
    "EuiccPackageResult", "AuthenticateServerResponse", "PrepareDownloadResponse",
    "RetrieveNotificationsListResponse", "BoundProfilePackage", "EUICCInfo2",
    "IpaEuiccDataResponse", "ProfileInfoListResponse", "GetCertsResponse",
]
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _decode_only_raises_decode_error(type_name: str, data: bytes) -> None:
    try:
        codec.decode(type_name, data)
    except DecodeError:
        pass


@FUZZ
@given(type_name=st.sampled_from(FUZZED_TYPES), data=st.binary(max_size=64))
def test_random_bytes_only_raise_decode_error(type_name: str, data: bytes) -> None:
    _decode_only_raises_decode_error(type_name, data)


@FUZZ
@given(type_name=st.sampled_from(FUZZED_TYPES), prefix=st.sampled_from(
    [b"\xbf\x4f", b"\xbf\x51", b"\xbf\x38", b"\xbf\x36", b"\xbf\x22", b"\x30", b"\xa0"]),
    rest=st.binary(max_size=64))
def test_plausible_headers_with_garbage_only_raise_decode_error(type_name: str, prefix: bytes,
                                                                rest: bytes) -> None:
    _decode_only_raises_decode_error(type_name, prefix + rest)


@st.composite
def mutated(draw: Any) -> tuple[str, bytes]:
    type_name = draw(st.sampled_from(FUZZED_TYPES))
    der = bytearray(codec.encode(type_name, draw(values(codec.schema(type_name)))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        i = draw(st.integers(0, max(0, len(der) - 1)))
        if op == "flip" and der:
            der[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del der[i:]
        elif op == "insert":
            der[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif der:
            del der[i]
    return type_name, bytes(der)


@FUZZ
@given(case=mutated())
def test_mutated_valid_messages_only_raise_decode_error(case: tuple[str, bytes]) -> None:
    _decode_only_raises_decode_error(*case)


@FUZZ
@given(data=st.binary(max_size=48))
def test_message_recognition_only_raises_decode_error(data: bytes) -> None:
    for candidate in (data, b"\xbf\x4f" + data, b"\xbf\x2e" + data):
        try:
            messages.identify(candidate)
        except DecodeError:
            pass


@FUZZ
@given(fn=st.sampled_from(sorted(es10b.FUNCTIONS)), data=st.binary(max_size=40))
def test_es10b_responses_and_esipa_bodies_only_raise_decode_error(fn: str, data: bytes) -> None:
    for call in (lambda: es10b.decode_response(fn, data), lambda: esipa.decode_from_eim(data),
                 lambda: es10b.decode_request(data)):
        try:
            call()
        except DecodeError:
            pass


def test_wrong_element_tag_in_a_sequence_of_is_an_error_not_an_endless_loop() -> None:
    # asn1tools' DER decoder loops forever on these; the codec decodes with its BER decoder
    for type_name, data in (("EimAcknowledgements", "BF5303810100"),
                            ("GetEimConfigurationDataResponse", "BF5504A0028100"),
                            ("ProfileInfoListResponse", "BF2D04A0028100")):
        try:
            codec.decode(type_name, bytes.fromhex(data))
        except DecodeError as exc:
            assert exc.type_name == type_name
        else:
            raise AssertionError(f"{type_name} accepted a wrong element tag")


def test_unknown_choice_alternative_is_a_decode_error_not_a_none_value() -> None:
    try:
        codec.decode("RetrieveNotificationsListResponse", bytes.fromhex("BF2B05A003810100"))
    except DecodeError as exc:
        assert "notificationList[0]" in str(exc)
    else:
        raise AssertionError("a (None, None) CHOICE value escaped")
