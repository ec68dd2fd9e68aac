"""Message recognition by outer tag (gateway.spec.messages)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import DecodeError
from gateway.spec import codec, es10b, esipa, messages
from tests.spec.conftest import values


def _recognisable() -> list[str]:
    names = [n for f in es10b.FUNCTIONS.values() for n in (f.request, f.response)]
    names += [n for f in esipa.FUNCTIONS.values() for n in (f.request_type, f.response_type) if n]
    return sorted(set(names))


@pytest.mark.parametrize("type_name", _recognisable())
@settings(max_examples=8, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_message_is_recognised_as_a_type_that_reproduces_it(type_name: str, data: Any) -> None:
    der = codec.encode(type_name, data.draw(values(codec.schema(type_name))))
    assert type_name in messages.candidates(int.from_bytes(der[:2], "big"))
    name, value = messages.identify(der)
    assert codec.encode(name, value) == der


@pytest.mark.parametrize(("hex_data", "expected"), [
    ("BF2E00", "GetEuiccChallengeRequest"),
    ("BF2E128010" + "00" * 16, "GetEuiccChallengeResponse"),
    ("BF4F03020101", "GetEimPackageResponse"),
    ("BF4F125A10" + "89" * 16, "GetEimPackageRequest"),
    ("BF5303800105", "EimAcknowledgements"),
    ("BF410B800101A106BF4103810105", "CancelSessionRequestEsipa"),
])
def test_shared_tags_are_told_apart_by_content(hex_data: str, expected: str) -> None:
    assert messages.identify(bytes.fromhex(hex_data))[0].split(".")[-1] == expected


def test_bpp_and_installation_result_tags_are_known() -> None:
    assert messages.candidates(0xBF36) == ["BoundProfilePackage"]
    assert messages.candidates(0xBF37) == ["ProfileInstallationResult"]


def test_unknown_tag_and_undecodable_content_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="not a known RSP message"):
        messages.identify(bytes.fromhex("DF0100"))
    with pytest.raises(DecodeError, match="no candidate"):
        messages.identify(bytes.fromhex("BF4F03800100"))
