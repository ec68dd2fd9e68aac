"""ES10b table: tags agree with the ASN.1 modules, both sides of every function round-trip."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import DecodeError, LocalProtocolError
from gateway.spec import codec, es10b, tlv
from tests.spec.conftest import values

FACTS_TAGS = {  # SGP32-FACTS.md, "ES10b function tags"
    "GetEUICCInfo1": 0xBF20, "GetEUICCInfo2": 0xBF22, "PrepareDownload": 0xBF21,
    "LoadBoundProfilePackage": 0xBF36, "GetEuiccChallenge": 0xBF2E, "AuthenticateServer": 0xBF38,
    "CancelSession": 0xBF41, "ListNotification": 0xBF28, "RetrieveNotificationsList": 0xBF2B,
    "RemoveNotificationFromList": 0xBF30, "GetProfilesInfo": 0xBF2D, "GetRAT": 0xBF43,
    "IpaeActivation": 0xBF42, "LoadEuiccPackage": 0xBF51, "IpaEuiccData": 0xBF52,
    "GetEimConfigurationData": 0xBF55, "GetCerts": 0xBF56, "AddInitialEim": 0xBF57,
    "ProfileRollback": 0xBF58, "ConfigureImmediateProfileEnabling": 0xBF59,
    "ImmediateEnable": 0xBF5A, "EnableEmergencyProfile": 0xBF5B, "DisableEmergencyProfile": 0xBF5C,
    "ExecuteFallbackMechanism": 0xBF5D, "ReturnFromFallback": 0xBF5E,
    "GetConnectivityParameters": 0xBF5F, "EuiccMemoryReset": 0xBF64, "SetDefaultDpAddress": 0xBF65,
}
SETTINGS = settings(max_examples=5, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_every_function_of_the_facts_table_is_there_with_its_tag() -> None:
    for name, tag in FACTS_TAGS.items():
        assert es10b.function(name).tag == tag
    assert es10b.function("LoadBoundProfilePackage").response_tag == 0xBF37


@pytest.mark.parametrize("name", sorted(es10b.FUNCTIONS))
@SETTINGS
@given(data=st.data())
def test_request_and_response_carry_the_tags_of_the_table(name: str, data: Any) -> None:
    f = es10b.FUNCTIONS[name]
    request = data.draw(values(codec.schema(f.request)))
    response = data.draw(values(codec.schema(f.response)))

    command = es10b.encode_request(name, request)
    assert tlv.outer_tag(command) == f.tag
    decoded_function, decoded_request = es10b.decode_request(command)
    assert decoded_function is f
    assert decoded_request == codec.decode(f.request, command)

    answer = es10b.encode_response(name, response)
    assert tlv.outer_tag(answer) == f.response_tag
    assert es10b.decode_response(name, answer) == codec.decode(f.response, answer)


def test_a_response_of_another_function_is_refused() -> None:
    challenge = es10b.encode_response("GetEuiccChallenge", {"euiccChallenge": bytes(16)})
    with pytest.raises(DecodeError, match="BF2E where BF22"):
        es10b.decode_response("GetEUICCInfo2", challenge)
    with pytest.raises(DecodeError):
        es10b.decode_response("GetEUICCInfo2", b"")


def test_v1_0_names_are_accepted() -> None:
    assert es10b.function("EnableUsingDD") is es10b.FUNCTIONS["ImmediateEnable"]
    assert es10b.function("ConfigureAutoProfileEnabling").tag == 0xBF59
    with pytest.raises(LocalProtocolError):
        es10b.function("EnableProfile")


def test_get_euicc_challenge_command_is_the_well_known_bf2e00() -> None:
    assert es10b.encode_request("GetEuiccChallenge", {}) == bytes.fromhex("BF2E00")
    assert es10b.encode_request("GetEUICCInfo1", {}) == bytes.fromhex("BF2000")


def test_an_unknown_command_tag_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="BF99"):
        es10b.decode_request(bytes.fromhex("BF9900"))
