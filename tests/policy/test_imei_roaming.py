"""IMEI binding/quarantine and roaming exposure, with the clock advanced by hand (pure)."""

from __future__ import annotations

import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.policies import ImeiPolicy, PoliciesSection, RoamingCountry, RoamingPolicy
from gateway.errors import DecodeError
from gateway.links.protocol import DeviceStatus
from gateway.policy import (
    Alarm,
    AuditPolicy,
    BindImei,
    ClearAlarm,
    EmitEvent,
    Policies,
    RaiseAlarm,
    RunEs10,
    SavePolicyState,
    SetQuarantine,
)
from gateway.policy import imei, plmn
from gateway.policy.roaming import DeviceRoaming, Roaming
from gateway.spec import codec

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a UTC midnight
DAY = 86_400.0
EID = bytes.fromhex("89049032123451234512345678901235")
IMEI_A, IMEI_B = "353290611234567", "353290619999999"


def of(kind: type, decisions: object) -> list:  # type: ignore[type-arg]
    return [d for d in decisions if isinstance(d, kind)]  # type: ignore[attr-defined]


# -- IMEI -------------------------------------------------------------------------------------

def test_first_reported_imei_is_bound_and_allowed() -> None:
    v = imei.check_imei(ImeiPolicy(), EID, IMEI_A, bound=None, quarantined=False, now=T0)
    assert v.allowed
    assert of(BindImei, v.decisions) == [BindImei(EID, IMEI_A)]


def test_same_imei_again_is_allowed_silently() -> None:
    v = imei.check_imei(ImeiPolicy(), EID, IMEI_A, bound=IMEI_A, quarantined=False, now=T0)
    assert v.allowed and v.decisions == ()


def test_another_imei_quarantines_with_one_alarm_audit_and_event_and_blocks_eucc_work() -> None:
    p = Policies(PoliciesSection())
    status = DeviceStatus(eid=EID, imei=IMEI_B, attach_failures=5)
    v = p.on_status(EID, status, T0, group=None, wake=True, bound_imei=IMEI_A, quarantined=False)
    assert not v.allowed
    assert of(SetQuarantine, v.decisions) == [SetQuarantine(EID, True, f"IMEI {IMEI_B} reported, bound to {IMEI_A}")]
    [alarm] = of(RaiseAlarm, v.decisions)
    assert alarm.alarm.kind == "imei-mismatch" and alarm.alarm.eid == EID
    assert [(a.operation, a.result) for a in of(AuditPolicy, v.decisions)] == [("quarantine", "imei-mismatch")]
    assert [e.type for e in of(EmitEvent, v.decisions)] == ["device.quarantined"]
    assert of(RunEs10, v.decisions) == []           # no fallback evaluated for a quarantined device
    assert list(p.alarms.active) == [imei.alarm_key(EID)]
    # waking again while quarantined: still refused, nothing raised again
    again = p.on_status(EID, status, T0 + 60, group=None, wake=True, bound_imei=IMEI_A, quarantined=True)
    assert not again.allowed and again.decisions == ()


def test_only_an_operator_release_lets_the_device_work_and_can_rebind() -> None:
    p = Policies(PoliciesSection())
    decisions = imei.release(EID, rebind=IMEI_B, keep_binding=False, now=T0, operator="alice")
    assert of(SetQuarantine, decisions) == [SetQuarantine(EID, False, None)]
    assert of(BindImei, decisions) == [BindImei(EID, IMEI_B)]
    assert [e.type for e in of(EmitEvent, decisions)] == ["device.released"]
    p.record_alarms([RaiseAlarm(Alarm(imei.alarm_key(EID), "imei-mismatch", "major", "x"))], T0)
    p.record_alarms(decisions, T0)
    assert p.alarms.active == {}
    v = p.on_status(EID, DeviceStatus(eid=EID, imei=IMEI_B), T0 + 1, group=None, wake=True, bound_imei=IMEI_B,
                    quarantined=False)
    assert v.allowed


def test_release_without_rebind_binds_the_next_reported_imei() -> None:
    decisions = imei.release(EID, rebind=None, keep_binding=False, now=T0)
    assert of(BindImei, decisions) == [BindImei(EID, None)]
    assert of(BindImei, imei.release(EID, rebind=None, keep_binding=True, now=T0)) == []


def test_configured_binding_wins_over_the_first_report() -> None:
    policy = ImeiPolicy(mode="configured", bindings=types.MappingProxyType({EID.hex(): IMEI_A}))
    v = imei.check_imei(policy, EID, IMEI_B, bound=None, quarantined=False, now=T0)
    assert not v.allowed
    assert of(BindImei, v.decisions) == [BindImei(EID, IMEI_A)]
    other = bytes.fromhex("89049032123451234512345678901999")
    assert imei.check_imei(policy, other, IMEI_B, bound=None, quarantined=False, now=T0) == imei.ImeiVerdict(True)


def test_mode_off_checks_nothing_but_an_operator_quarantine_still_holds() -> None:
    policy = ImeiPolicy(mode="off")
    assert imei.check_imei(policy, EID, IMEI_B, bound=IMEI_A, quarantined=False, now=T0).allowed
    assert not imei.check_imei(policy, EID, IMEI_B, bound=IMEI_A, quarantined=True, now=T0).allowed
    assert of(SetQuarantine, imei.quarantine(EID, reason="stolen", now=T0)) == [
        SetQuarantine(EID, True, "operator: stolen")]


# -- roaming ----------------------------------------------------------------------------------

def brazil_policy(**kw: object) -> RoamingPolicy:
    base: dict[str, object] = {"enabled": True, "home_plmns": ("20801",), "fill_gap_days": 0,
                               "countries": types.MappingProxyType({"724": RoamingCountry(90, 120)})}
    base.update(kw)
    return RoamingPolicy(**base)  # type: ignore[arg-type]


def test_roaming_alarm_is_raised_on_day_90_of_120_not_before() -> None:
    r = Roaming(brazil_policy())
    for day in range(89):
        out = r.observe(EID, "72405", T0 + day * DAY + 3600)
        assert of(RaiseAlarm, out) == [], day
    out = r.observe(EID, "72405", T0 + 89 * DAY + 3600)
    [alarm] = of(RaiseAlarm, out)
    assert alarm.alarm.key == f"roaming-exposure:{EID.hex()}:724"
    assert dict(alarm.alarm.detail)["days"] == 90
    assert [e.type for e in of(EmitEvent, out)] == ["roaming.threshold"]
    # once: more days do not raise it again
    assert of(RaiseAlarm, r.observe(EID, "72405", T0 + 90 * DAY)) == []
    assert r.exposure(EID, T0 + 90 * DAY)["724"] == {"days": 91, "window_days": 120, "max_days": 90, "alarm": True}


def test_several_reports_in_one_day_count_one_day() -> None:
    r = Roaming(brazil_policy())
    for hour in range(24):
        r.observe(EID, "72405", T0 + hour * 3600)
    assert r.exposure(EID, T0)["724"]["days"] == 1


def test_the_window_slides_days_out_and_the_alarm_clears() -> None:
    r = Roaming(brazil_policy())
    for day in range(60):
        r.observe(EID, "72405", T0 + day * DAY)
    for day in range(60, 90):
        r.observe(EID, "20801", T0 + day * DAY)          # home
    raised = []
    for day in range(90, 120):
        raised += of(RaiseAlarm, r.observe(EID, "72411", T0 + day * DAY))
    assert len(raised) == 1                               # 60 + 30 = 90 days within 120
    cleared = of(ClearAlarm, r.observe(EID, "20801", T0 + 121 * DAY))   # days 0..1 left the window
    assert [c.key for c in cleared] == [f"roaming-exposure:{EID.hex()}:724"]


def test_gap_fill_counts_the_days_a_sleeping_device_stayed() -> None:
    r = Roaming(brazil_policy(fill_gap_days=3))
    r.observe(EID, "72405", T0)
    r.observe(EID, "72405", T0 + 3 * DAY)
    assert r.exposure(EID, T0 + 3 * DAY)["724"]["days"] == 4
    r.observe(EID, "72405", T0 + 10 * DAY)               # gap too long: not filled
    assert r.exposure(EID, T0 + 10 * DAY)["724"]["days"] == 5


def test_home_from_the_enabled_profile_owner_wins_over_configured_home_plmns() -> None:
    r = Roaming(brazil_policy())
    r.set_home(EID, "72405", T0)                         # a Brazilian profile is enabled
    r.observe(EID, "72405", T0)
    assert r.exposure(EID, T0) == {}
    r.observe(EID, "20801", T0 + DAY)                    # France is visited now
    assert r.exposure(EID, T0 + DAY)["208"]["days"] == 1


def test_allowed_plmns_are_never_counted_and_unknown_home_counts_nothing() -> None:
    r = Roaming(brazil_policy(allowed_plmns=("72405",)))
    r.observe(EID, "72405", T0)
    assert r.exposure(EID, T0) == {}
    blind = Roaming(RoamingPolicy(enabled=True))
    assert blind.observe(EID, "72405", T0) == []


def test_roaming_state_round_trips_and_corrupt_state_is_a_decode_error() -> None:
    r = Roaming(brazil_policy())
    out = r.observe(EID, "72405", T0)
    [saved] = of(SavePolicyState, out)
    assert saved.kind == "roaming"
    again = Roaming(brazil_policy())
    again.restore(EID, saved.blob)
    assert again.devices[EID] == r.devices[EID]
    for bad in (b"", b"{}", b'{"v":1}', b'{"v":1,"home":null,"days":{"724":["x"]},"last":null,"alarmed":[]}'):
        with pytest.raises(DecodeError):
            DeviceRoaming.from_json(bad)


def test_policies_count_roaming_from_the_reported_status() -> None:
    p = Policies(PoliciesSection(roaming=brazil_policy(countries=types.MappingProxyType({"724": RoamingCountry(2, 120)}))))
    for day in range(2):
        v = p.on_status(EID, DeviceStatus(eid=EID, imei=IMEI_A, plmn="72405"), T0 + day * DAY, group=None, wake=True,
                        bound_imei=IMEI_A, quarantined=False)
    assert [a.alarm.kind for a in of(RaiseAlarm, v.decisions)] == ["roaming-exposure"]
    assert p.alarms.by_kind() == {"roaming-exposure": 1}


# -- PLMN helpers -----------------------------------------------------------------------------

@given(st.from_regex(r"[0-9]{5,6}", fullmatch=True))
def test_plmn_bytes_round_trip(digits: str) -> None:
    assert plmn.from_bytes(plmn.to_bytes(digits)) == digits


def test_plmn_bytes_follow_ts_24008() -> None:
    assert plmn.to_bytes("20801") == bytes.fromhex("02f810")
    assert plmn.to_bytes("310260") == bytes.fromhex("130062")
    with pytest.raises(DecodeError):
        plmn.from_bytes(b"\xff\xff\xff")


def test_home_plmn_of_the_enabled_profile_comes_from_its_profile_owner() -> None:
    data = codec.encode("ProfileInfoListResponse", ("profileInfoListOk", [
        {"iccid": bytes.fromhex("98001032547698103254"), "profileState": 0,
         "profileOwner": {"mccMnc": plmn.to_bytes("310260")}},
        {"iccid": bytes.fromhex("98001032547698103255"), "profileState": 1,
         "profileOwner": {"mccMnc": plmn.to_bytes("20801")}},
    ]))
    assert plmn.enabled_profile_home(data) == (bytes.fromhex("98001032547698103255"), "20801")
