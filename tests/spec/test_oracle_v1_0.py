"""SGP.32 v1.0 eIMs: the messages the IPA exchanges with them, checked with the v1.0 oracle."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from gateway.spec import codec, esipa, signed
from tests.spec.conftest import CERTIFICATES

V1_0 = "asn1_play.generated_code.asn1.GSMA.SGP_32.v1_0.python_gen.sgp32.sgp32"
EID = bytes.fromhex("89049032123451234512345678901235")
ICCID = bytes.fromhex("98001032547698103214")


@pytest.fixture(scope="module")
def v1_0() -> Any:
    # the module's own classes: pycrate's GLOBAL.MOD registry is shared between versions
    return _Types(importlib.import_module(V1_0).SGP32Definitions)


class _Types:
    def __init__(self, module_class: Any) -> None:
        self.module_class = module_class

    def __getitem__(self, name: str) -> Any:
        return getattr(self.module_class, name)


def _result() -> bytes:
    return codec.encode("EuiccPackageResult", ("euiccPackageResultSigned", {
        "euiccPackageResultDataSigned": {"eimId": "eim", "counterValue": 2, "seqNumber": 9,
                                         "euiccResult": [("enableResult", 0)]},
        "euiccSignEPR": bytes(64)}))


def _notification() -> bytes:
    return codec.encode("PendingNotification", ("otherSignedNotification", {
        "tbsOtherNotification": {"seqNumber": 9, "profileManagementOperation": (b"\x40", 2),
                                 "notificationAddress": "smdp.example", "iccid": ICCID},
        "euiccNotificationSignature": bytes(64),
        "euiccCertificate": CERTIFICATES[1], "eumCertificate": CERTIFICATES[0]}))


def test_get_eim_package_request_with_eid_only_is_a_v1_0_request(v1_0: Any) -> None:
    der = codec.encode("GetEimPackageRequest", {"eidValue": EID, "notifyStateChange": None})
    v1_0["GetEimPackageRequest"].from_der(der)
    assert v1_0["GetEimPackageRequest"].get_val() == {"eidValue": EID, "notifyStateChange": 0}


def test_v1_0_packages_and_errors_decode_as_v1_2(v1_0: Any) -> None:
    response = v1_0["GetEimPackageResponse"]
    response.set_val(("euiccPackageRequest", {
        "euiccPackageSigned": {"eimId": "eim", "eidValue": EID, "counterValue": 3, "transactionId": b"\x01",
                               "euiccPackage": ("psmoList", [("enable", {"iccid": ICCID})])},
        "eimSignature": bytes(64)}))
    value = esipa.decode_response("GetEimPackage", response.to_der())
    assert value[1]["euiccPackageSigned"]["eimTransactionId"] == b"\x01"
    response.set_val(("eimPackageError", 1))
    assert esipa.decode_response("GetEimPackage", response.to_der()) == ("eimPackageError", 1)


def test_provide_eim_package_result_without_eid_is_the_v1_0_form(v1_0: Any) -> None:
    built = signed.provide_eim_package_result(None, _result())
    v1_0["ProvideEimPackageResult"].from_der(built)
    assert v1_0["ProvideEimPackageResult"].get_val()[0] == "euiccPackageResult"
    assert v1_0["ProvideEimPackageResult"].to_der() == built


def test_v1_0_epr_and_notifications(v1_0: Any) -> None:
    built = signed.provide_epr_and_notifications(None, _result(), [_notification()], v1_0=True)
    t = v1_0["ProvideEimPackageResult"]
    t.from_der(built)
    alternative, value = t.get_val()
    assert alternative == "ePRAndNotifications"
    assert value["notificationList"][0] == "notificationList"
    assert t.to_der() == built


def test_v1_0_provide_result_responses(v1_0: Any) -> None:
    t = v1_0["ProvideEimPackageResultResponse"]
    t.set_val({})
    assert esipa.decode_response("ProvideEimPackageResult", t.to_der()) == ("emptyResponse", {})
    t.set_val({"eimAcknowledgements": [9]})
    assert esipa.decode_response("ProvideEimPackageResult", t.to_der()) == ("eimAcknowledgements", [9])
