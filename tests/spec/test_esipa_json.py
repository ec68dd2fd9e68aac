"""ESipa JSON binding: the type-driven mapping round-trips, keeps signed bytes, rejects junk."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import DecodeError
from gateway.spec import codec, esipa, esipa_json, signed, tlv
from tests.spec.conftest import normalize, values

SETTINGS = settings(max_examples=15, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EID = bytes.fromhex("89049032123451234512345678901235")


def _esipa_types() -> list[str]:
    names = []
    for f in esipa.FUNCTIONS.values():
        names.append(f.request_type)
        if f.response_type:
            names.append(f.response_type)
    return names


def _through_json(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


@pytest.mark.parametrize("type_name", _esipa_types())
@SETTINGS
@given(data=st.data())
def test_full_mapping_round_trips_every_esipa_message(type_name: str, data: Any) -> None:
    t = codec.schema(type_name)
    value = data.draw(values(t))
    obj = _through_json(esipa_json.to_json(type_name, value, opaque=frozenset()))
    assert normalize(t, esipa_json.from_json(type_name, obj, opaque=frozenset())) == normalize(t, value)


@pytest.mark.parametrize("type_name", _esipa_types())
@SETTINGS
@given(data=st.data())
def test_signed_parts_travel_as_their_der_and_come_back_as_those_bytes(type_name: str, data: Any) -> None:
    value = data.draw(values(codec.schema(type_name)))
    obj = _through_json(esipa_json.to_json(type_name, value))
    back = esipa_json.from_json(type_name, obj)
    assert esipa_json.to_json(type_name, back) == obj
    # the message DER is the same whichever way the signed parts are given
    assert codec.encode(type_name, _decode_opaque(codec.schema(type_name), back)) == \
        codec.encode(type_name, value)


def _decode_opaque(t: codec.AsnType, value: Any) -> Any:
    """Replace the opaque DER bytes left by from_json with their decoded values."""
    if t.name in esipa_json.SIGNED_TYPES and isinstance(value, bytes):
        return codec.decode(f"{t.module}.{t.name}", value)
    if t.kind in ("SEQUENCE", "SET"):
        members = {n: m for n, m, _ in t.members()}
        return {k: _decode_opaque(members[k], v) for k, v in value.items()}
    if t.kind == "CHOICE":
        members = {n: m for n, m, _ in t.members()}
        return (value[0], _decode_opaque(members[value[0]], value[1]))
    if t.kind in ("SEQUENCE OF", "SET OF"):
        return [_decode_opaque(t.element(), v) for v in value]
    return value


def test_get_eim_package_request_json_form() -> None:
    body = esipa_json.encode_request("GetEimPackage", {"eidValue": EID, "notifyStateChange": None,
                                                       "stateChangeCause": 3})
    assert json.loads(body) == {"eidValue": base64.b64encode(EID).decode(), "notifyStateChange": None,
                                "stateChangeCause": 3}
    assert esipa_json.decode_request("GetEimPackage", body)["eidValue"] == EID


def test_bit_strings_are_strings_of_bits() -> None:
    obj = esipa_json.to_json("IpaCapabilities", {"ipaFeatures": (b"\xa0", 3),
                                                 "ipaSupportedProtocols": (b"", 0)})
    assert obj == {"ipaFeatures": "101", "ipaSupportedProtocols": ""}
    assert esipa_json.from_json("IpaCapabilities", obj)["ipaFeatures"] == (b"\xa0", 3)


def test_a_pushed_package_keeps_the_exact_bytes_signed_by_the_eim() -> None:
    request = codec.encode("EuiccPackageRequest", {
        "euiccPackageSigned": {"eimId": "e", "eidValue": EID, "counterValue": 1,
                               "euiccPackage": ("ecoList", [("listEim", {})])},
        "eimSignature": bytes(64)})
    outer = tlv.read_single(request)
    inner = tlv.child(request, outer, 0x30)
    extended = signed.wrap(0xBF51, signed.wrap(0x30, inner.value_of(request), bytes.fromhex("9F1F0100")),
                           tlv.child(request, outer, 0x5F37).raw_of(request))
    body = json.dumps({"euiccPackageRequest": base64.b64encode(extended).decode()}).encode()
    value = esipa_json.decode_request("TransferEimPackage", body)
    assert value == ("euiccPackageRequest", extended)


def test_paths_of_the_json_binding() -> None:
    assert esipa_json.path("GetEimPackage") == "/gsma/rsp2/esipa/getEimPackage"
    assert esipa_json.function_of_path("/gsma/rsp2/esipa/provideEimPackageResult") == "ProvideEimPackageResult"
    with pytest.raises(DecodeError):
        esipa_json.function_of_path("/gsma/rsp2/es9plus/initiateAuthentication")


def test_unknown_keys_are_ignored() -> None:
    obj = {"eidValue": base64.b64encode(EID).decode(), "futureField": [1, 2]}
    assert esipa_json.from_json("GetEimPackageRequest", obj) == {"eidValue": EID}


@pytest.mark.parametrize(("type_name", "obj", "needle"), [
    ("GetEimPackageRequest", {}, "missing 'eidValue'"),
    ("GetEimPackageRequest", {"eidValue": "not base64!"}, "$.eidValue: bad base64"),
    ("GetEimPackageRequest", {"eidValue": 5}, "$.eidValue"),
    ("GetEimPackageRequest", [], "expected an object"),
    ("GetEimPackageRequest", {"eidValue": "AA==", "stateChangeCause": "3"}, "stateChangeCause"),
    ("GetEimPackageRequest", {"eidValue": "AA==", "notifyStateChange": 0}, "expected null"),
    ("GetEimPackageResponse", {"eimPackageError": 1, "x": 2}, "one key"),
    ("GetEimPackageResponse", {"noSuchAlternative": 1}, "noSuchAlternative"),
    ("GetEimPackageResponse", {"euiccPackageRequest": "vw=="}, "euiccPackageRequest"),
    ("IpaCapabilities", {"ipaFeatures": "102"}, "0 and 1"),
    ("ProvideEimPackageResultResponse", {"eimAcknowledgements": {}}, "array"),
    ("ConfigureImmediateProfileEnablingRequest", {"defaultSmdpOid": "1.x"}, "object identifier"),
    ("EimConfigurationData", {"eimId": "e", "indirectProfileDownload": 1}, "null"),
    ("EimConfigurationData", {"eimId": "e", "eimPublicKeyData": {"eimCertificate": "MAA="}}, "Certificate"),
])
def test_bad_json_values_are_decode_errors_naming_the_path(type_name: str, obj: Any, needle: str) -> None:
    with pytest.raises(DecodeError) as info:
        esipa_json.from_json(type_name, obj)
    assert needle.lower() in str(info.value).lower()


def test_a_body_that_is_not_json_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="not JSON"):
        esipa_json.decode_response("GetEimPackage", b"\xff{")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["eidValue", "eimPackageError", "euiccPackageRequest", "ipaEuiccDataRequest",
                         "tagList", "profileDownloadTriggerRequest", "eimAcknowledgements", "x"]),
        inner, max_size=3),
    max_leaves=8)


@settings(max_examples=200, deadline=None, database=None)
@given(type_name=st.sampled_from(_esipa_types()), obj=json_values)
def test_arbitrary_json_only_raises_decode_error(type_name: str, obj: Any) -> None:
    try:
        esipa_json.from_json(type_name, obj)
    except DecodeError:
        pass
