"""Every ES10b, ESipa, ES9+ and BPP message type, checked against an independent ASN.1 stack.

For each type, hypothesis draws values covering every OPTIONAL member and every CHOICE
alternative; then, both ways:
- the project encodes -> pycrate (asn1play's GSMA modules) decodes to the same value;
- pycrate encodes the same value -> the very same DER bytes -> the project decodes it back.
Identical DER from two implementations pins down tags, tagging modes, optionality, member
order and DEFAULT handling of the project's own ASN.1 modules.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.spec import codec, es10b, esipa, messages
from tests.spec.conftest import Oracle, normalize, values


def _message_types() -> list[str]:
    names: list[str] = []

    def add(name: str) -> None:
        module, bare = codec.resolve(name)
        full = f"{module}.{bare}"
        if full not in names:
            names.append(full)

    for f in es10b.FUNCTIONS.values():
        add(f.request)
        add(f.response)
    for e in esipa.FUNCTIONS.values():
        add(e.request_type)
        if e.response_type:
            add(e.response_type)
    add(esipa.FROM_IPA)
    add(esipa.FROM_EIM)
    for tag in (0xBF23, 0xBF24, 0xBF25, 0xBF26, 0xBF27, 0xBF2F, 0xBF53, 0xBF54, 0xBF39, 0xBF3A,
                0xBF3B, 0xBF3D, 0xBF40, 0xBF41):
        for name in messages.candidates(tag):
            add(name)
    for name in ("EuiccPackageSigned", "EimConfigurationData", "PendingNotification",
                 "OtherSignedNotification", "RSPDefinitions.PendingNotification",
                 "CompactOtherSignedNotification", "CompactProfileInstallationResult",
                 "EuiccPackageResultDataSigned", "IpaEuiccData", "DeviceInfo", "CtxParams1",
                 "ServerSigned1", "SmdpSigned2", "EuiccSigned1", "RSPDefinitions.EUICCInfo2",
                 "RSPDefinitions.AuthenticateServerResponse", "RSPDefinitions.PrepareDownloadResponse",
                 "RSPDefinitions.ProfileInstallationResult", "RSPDefinitions.CancelSessionResponse",
                 "RSPDefinitions.RetrieveNotificationsListResponse", "RSPDefinitions.ProfileInfo",
                 "SubjectPublicKeyInfo", "Certificate"):
        add(name)
    return names


MESSAGE_TYPES = _message_types()


def test_the_cross_check_covers_every_es10b_and_esipa_type() -> None:
    assert len(MESSAGE_TYPES) > 90
    for f in es10b.FUNCTIONS.values():
        assert f"{codec.resolve(f.request)[0]}.{f.request}" in MESSAGE_TYPES


@pytest.mark.parametrize("type_name", MESSAGE_TYPES)
@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_project_and_oracle_agree_both_ways(type_name: str, oracle: Oracle, data: Any) -> None:
    t = codec.schema(type_name)
    value = data.draw(values(t), label=type_name)
    module, name = type_name.split(".")
    o = oracle.obj(module, name)

    ours = codec.encode(type_name, value)
    o.from_der(ours)
    assert normalize(t, oracle.from_oracle(t, o.get_val())) == normalize(t, value)

    o.set_val(oracle.to_oracle(t, value))
    theirs = o.to_der()
    assert theirs == ours
    assert normalize(t, codec.decode(type_name, theirs)) == normalize(t, value)


@pytest.mark.parametrize("type_name", codec.type_names())
@settings(max_examples=2, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_type_of_both_modules_encodes_as_the_oracle_does(type_name: str, oracle: Oracle,
                                                               data: Any) -> None:
    t = codec.schema(type_name)
    value = data.draw(values(t), label=type_name)
    o = oracle.obj(*type_name.split("."))
    o.set_val(oracle.to_oracle(t, value))
    assert o.to_der() == codec.encode(type_name, value)
