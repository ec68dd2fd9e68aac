"""The software eUICC's other ES10b functions, its persistent state, fuzzing and the APDU shell."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.spec import apdu as A
from gateway.spec import codec
from hil.euicc import Faults, SoftEuicc
from hil.euicc.state import Profile
from hil.pki import RspPki
from test_euicc_support import Card, Order, download, iccid, oracle_decode

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def card(euicc: SoftEuicc) -> Card:
    return Card(euicc)


def add_profile(euicc: SoftEuicc, n: int, **kw: object) -> Profile:
    profile = Profile(iccid=iccid(n), isdp_aid=euicc.new_isdp_aid(), install_state="installed",
                      service_provider_name="Op", profile_name=f"P{n}",
                      notification_config=[(["enable", "disable", "delete"], "smdp.example.com")], **kw)  # type: ignore[arg-type]
    euicc.state.profiles.append(profile)
    return profile


def test_profile_info_list_search_criteria_and_tag_list(card: Card, euicc: SoftEuicc) -> None:
    a = add_profile(euicc, 1, profile_class="test")
    add_profile(euicc, 2, state="enabled", nickname="main")
    kind, infos = card.es10("ProfileInfoListRequest", {}, "ProfileInfoListResponse")
    assert kind == "profileInfoListOk" and [i["iccid"] for i in infos] == [iccid(1), iccid(2)]
    assert infos[1]["profileState"] == 1 and infos[1]["profileNickname"] == "main"
    by_class = card.es10("ProfileInfoListRequest", {"searchCriteria": ("profileClass", 0)}, "ProfileInfoListResponse")
    assert [i["iccid"] for i in by_class[1]] == [iccid(1)]
    by_aid = card.es10("ProfileInfoListRequest", {"searchCriteria": ("isdpAid", a.isdp_aid),
                                                  "tagList": bytes.fromhex("4F92")}, "ProfileInfoListResponse")
    assert by_aid == ("profileInfoListOk", [{"isdpAid": a.isdp_aid, "profileName": "P1", "fallbackAttribute": False}])
    response = card.call(codec.encode("ProfileInfoListRequest", {}))
    assert len(oracle_decode("ProfileInfoListResponse", response)[1]) == 2
    bad = card.es10("ProfileInfoListRequest", {"tagList": b"\x9f"}, "ProfileInfoListResponse")
    assert bad == ("profileInfoListError", 1)


def test_get_rat_decodes_in_the_oracle(card: Card) -> None:
    response = card.call(bytes.fromhex("BF4300"))
    assert len(oracle_decode("GetRatResponse", response, "RSPDefinitions")["rat"]) == 1


def test_list_and_retrieve_notifications_by_operation_and_sequence_number(card: Card, euicc: SoftEuicc,
                                                                          pki: RspPki) -> None:
    download(card, pki, Order(iccid(3)))
    profile = euicc.profiles[0]
    from hil.euicc import profiles
    assert profiles.enable(euicc, profile) == 0
    kind, listed = card.es10("ListNotificationRequest", {}, "ListNotificationResponse")
    assert [m["seqNumber"] for m in listed] == [1, 2]
    only_enable = card.es10("ListNotificationRequest", {"profileManagementOperation": (b"\x40", 2)},
                            "ListNotificationResponse")[1]
    assert [m["seqNumber"] for m in only_enable] == [2]
    kind, pending = card.es10("RetrieveNotificationsListRequest", {"searchCriteria": ("seqNumber", 2)},
                              "RetrieveNotificationsListResponse")
    assert kind == "notificationList" and pending[0][0] == "otherSignedNotification"
    raw = card.call(codec.encode("RetrieveNotificationsListRequest", {}))
    assert euicc.notifications[0].der in raw and euicc.notifications[1].der in raw
    assert card.es10("NotificationSentRequest", {"seqNumber": 1}, "NotificationSentResponse") == {
        "deleteNotificationStatus": 0}
    assert card.es10("NotificationSentRequest", {"seqNumber": 1}, "NotificationSentResponse") == {
        "deleteNotificationStatus": 1}
    assert [n.seq_number for n in euicc.notifications] == [2]


def test_euicc_memory_reset_deletes_by_class_and_resets_eim_configuration(card: Card, euicc: SoftEuicc) -> None:
    add_profile(euicc, 1, profile_class="test")
    add_profile(euicc, 2, state="enabled")
    euicc.state.default_dp_address = "dp.example"
    response = card.es10("EuiccMemoryResetRequest", {"resetOptions": (b"\xa4", 6)}, "EuiccMemoryResetResponse")
    assert response == {"resetResult": 0, "resetEimResult": 1}
    assert [p.iccid for p in euicc.profiles] == [iccid(1)] and euicc.state.default_dp_address is None
    nothing = card.es10("EuiccMemoryResetRequest", {"resetOptions": (b"\x80", 1)}, "EuiccMemoryResetResponse")
    assert nothing == {"resetResult": 1}


def test_set_default_dp_address_and_immediate_enable_configuration(card: Card, euicc: SoftEuicc) -> None:
    assert card.es10("SetDefaultDpAddressRequest", {"defaultDpAddress": "dp.example"},
                     "SetDefaultDpAddressResponse") == {"setDefaultDpAddressResult": 0}
    assert euicc.state.default_dp_address == "dp.example"
    assert card.es10("ImmediateEnableRequest", {"refreshFlag": False}, "ImmediateEnableResponse") == {
        "immediateEnableResult": 1}
    assert card.es10("ConfigureImmediateProfileEnablingRequest", {"immediateEnableFlag": None},
                     "ConfigureImmediateProfileEnablingResponse") == {"configImmediateEnableResult": 0}
    assert card.es10("ImmediateEnableRequest", {"refreshFlag": False}, "ImmediateEnableResponse") == {
        "immediateEnableResult": 4}
    euicc.state.eims.append(__import__("hil.euicc.state", fromlist=["EimConfig"]).EimConfig(eim_id="x"))
    assert card.es10("ConfigureImmediateProfileEnablingRequest", {}, "ConfigureImmediateProfileEnablingResponse") \
        == {"configImmediateEnableResult": 2}


def test_emergency_profile_enable_and_disable_restore_the_previous_profile(card: Card, euicc: SoftEuicc) -> None:
    assert card.es10("EnableEmergencyProfileRequest", {"refreshFlag": True}, "EnableEmergencyProfileResponse") == {
        "enableEmergencyProfileResult": 8}
    normal = add_profile(euicc, 1, state="enabled")
    emergency = add_profile(euicc, 2, emergency=True)
    assert card.es10("EnableEmergencyProfileRequest", {"refreshFlag": True}, "EnableEmergencyProfileResponse") == {
        "enableEmergencyProfileResult": 0}
    assert emergency.state == "enabled" and normal.state == "disabled"
    assert card.es10("EuiccMemoryResetRequest", {"resetOptions": (b"\x80", 1)}, "EuiccMemoryResetResponse") == {
        "resetResult": 104}
    assert card.es10("DisableEmergencyProfileRequest", {"refreshFlag": True}, "DisableEmergencyProfileResponse") \
        == {"disableEmergencyProfileResult": 0}
    assert normal.state == "enabled" and emergency.state == "disabled"
    assert card.es10("DisableEmergencyProfileRequest", {"refreshFlag": True}, "DisableEmergencyProfileResponse") \
        == {"disableEmergencyProfileResult": 2}


def test_connectivity_parameters_of_the_enabled_profile(card: Card, euicc: SoftEuicc) -> None:
    assert card.es10("GetConnectivityParametersRequest", {}, "GetConnectivityParametersResponse") == (
        "connectivityParametersError", 1)
    add_profile(euicc, 1, state="enabled", connectivity_parameters=b"\x01\x02")
    assert card.es10("GetConnectivityParametersRequest", {}, "GetConnectivityParametersResponse") == (
        "connectivityParameters", {"httpParams": b"\x01\x02"})


def test_unknown_es10_tag_and_malformed_request(card: Card) -> None:
    assert card.call_sw(bytes.fromhex("BF7F00"))[1] == 0x6A88
    assert card.call_sw(bytes.fromhex("BF2D03A00101"))[1] == 0x6A80
    assert card.call_sw(bytes.fromhex("BF2E0280"))[1] == 0x6A80
    assert card.call_sw(bytes.fromhex("A30100"))[1] == 0x6A88


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tag=st.sampled_from([0xBF2E, 0xBF20, 0xBF22, 0xBF38, 0xBF21, 0xBF36, 0xBF41, 0xBF28, 0xBF2B, 0xBF30,
                            0xBF2D, 0xBF43, 0xBF51, 0xBF52, 0xBF55, 0xBF56, 0xBF57, 0xBF58, 0xBF59, 0xBF5A,
                            0xBF5B, 0xBF5C, 0xBF5D, 0xBF5E, 0xBF5F, 0xBF64, 0xBF65, 0xA0, 0x86]),
       body=st.binary(max_size=80))
def test_any_es10_payload_gets_a_response_never_an_exception(pki: RspPki, tag: int, body: bytes) -> None:
    card = Card(SoftEuicc(pki, pki.eid_bytes))
    payload = tag.to_bytes(2 if tag > 0xFF else 1, "big") + bytes([len(body)]) + body
    data, sw = card.call_sw(payload)
    assert sw in (0x9000, 0x6A80, 0x6A88, 0x6985)


def test_state_survives_a_restart_and_is_written_atomically(pki: RspPki, tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    euicc = SoftEuicc(pki, pki.eid_bytes, path)
    card = Card(euicc)
    download(card, pki, Order(iccid(5)))
    card.es10("SetDefaultDpAddressRequest", {"defaultDpAddress": "dp.example"}, "SetDefaultDpAddressResponse")
    assert not list(tmp_path.glob(".*.tmp"))
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["state"]["default_dp_address"] == "dp.example"
    again = SoftEuicc(pki, pki.eid_bytes, path)
    assert [p.iccid for p in again.profiles] == [iccid(5)]
    assert again.notifications[0].der == euicc.notifications[0].der
    assert again.state.next_seq_number == euicc.state.next_seq_number


def test_delay_fault_slows_every_apdu(pki: RspPki) -> None:
    euicc = SoftEuicc(pki, pki.eid_bytes, faults=Faults(delay_s=0.02))
    start = time.monotonic()
    for _ in range(3):
        euicc.transmit(A.manage_channel_open())
    assert time.monotonic() - start >= 0.06


def test_apdu_shell_answers_each_line(pki: RspPki, tmp_path: Path) -> None:
    state = tmp_path / "shell.json"
    lines = ["00 70 00 00 01", "01A4040010A0000005591010FFFFFFFF890000010000", "81E2910003BF2E00",
             "01C0000015", "not hex", "81E2910006BF650380016100", ""]
    proc = subprocess.run([sys.executable, "-m", "hil.euicc", "--pki", str(pki.directory), "--eid", pki.eid,
                           "--state", str(state)], input="\n".join(lines) + "\n", capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "019000"
    assert out[1].endswith("9000")
    assert out[2] == "6115"
    assert out[3].startswith("BF2E128010") and out[3].endswith("9000")
    assert out[4] == "6700"
    assert out[5].startswith("BF6503") and out[5].endswith("9000")
    assert json.loads(state.read_text())["state"]["default_dp_address"] == "a"


def test_ipae_activation_is_not_supported_by_an_ipad_euicc(card: Card) -> None:
    assert card.es10("IpaeActivationRequest", {"ipaeOption": (b"\x80", 1)}, "IpaeActivationResponse") == {
        "ipaeActivationResult": 1}
    assert codec.decode("EUICCInfo2", card.call(bytes.fromhex("BF2200")))["ipaMode"] == 0


def test_internal_error_answers_6f00_instead_of_crashing(card: Card, monkeypatch: pytest.MonkeyPatch) -> None:
    from hil.euicc import rsp

    def broken(*_: object) -> dict[str, object]:
        raise RuntimeError("boom")

    monkeypatch.setattr(rsp, "euicc_info1", broken)
    assert card.call_sw(bytes.fromhex("BF2000"))[1] == 0x6F00
    assert card.call_sw(bytes.fromhex("BF2E00"))[1] == 0x9000


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 99, "state": {}}', b'{"version": 1}', b"[]"])
def test_a_corrupt_state_file_is_refused_with_its_name(pki: RspPki, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.json"):
        SoftEuicc(pki, pki.eid_bytes, path)


def test_get_eid_and_configured_addresses(card: Card, euicc: SoftEuicc, pki: RspPki) -> None:
    assert card.call(bytes.fromhex("BF3E035C015A")) == bytes.fromhex("BF3E125A10") + pki.eid_bytes
    assert card.call_sw(bytes.fromhex("BF3E035C014F"))[1] == 0x6A88
    assert card.es10("EuiccConfiguredAddressesRequest", {}, "EuiccConfiguredAddressesResponse") == {
        "rootDsAddress": euicc.state.root_ds_address}
    euicc.state.default_dp_address = "dp.example"
    assert card.es10("EuiccConfiguredAddressesRequest", {}, "EuiccConfiguredAddressesResponse")[
        "defaultDpAddress"] == "dp.example"
