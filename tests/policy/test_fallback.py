"""Automatic fallback and return, with the clock advanced by hand (pure policy, no I/O)."""

from __future__ import annotations

import random
import types
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.policies import FallbackPolicy, FallbackWaveSection, GroupSection, PoliciesSection
from gateway.errors import DecodeError
from gateway.links.protocol import DeviceStatus
from gateway.policy import (
    EXECUTE_FALLBACK,
    RETURN_FROM_FALLBACK,
    AuditPolicy,
    ClearAlarm,
    EmitEvent,
    Policies,
    PolicyDecision,
    RaiseAlarm,
    ReportStateChange,
    RunEs10,
    SavePolicyState,
)
from gateway.policy.fallback import DeviceFallback, Fallbacks, Wave
from gateway.spec import codec

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def eid(n: int) -> bytes:
    return bytes.fromhex(f"89049032{n:024d}")


def ok_response(function: str, result: int = 0) -> bytes:
    if function == EXECUTE_FALLBACK:
        return codec.encode("ExecuteFallbackMechanismResponse", {"executeFallbackMechanismResult": result})
    return codec.encode("ReturnFromFallbackResponse", {"returnFromFallbackResult": result})


def config(**fallback: object) -> PoliciesSection:
    base = {"enabled": True, "attach_failures": 0, "failed_wakeups": 3, "return_after_s": 3600.0}
    base.update(fallback)
    return PoliciesSection(fallback=FallbackPolicy(**base))  # type: ignore[arg-type]


def failing(device: bytes, failures: int = 1, signal: int | None = -90, plmn: str | None = None) -> DeviceStatus:
    return DeviceStatus(eid=device, imei="353290611234567", plmn=plmn, signal_dbm=signal, attach_failures=failures)


def healthy(device: bytes, plmn: str = "20801") -> DeviceStatus:
    return DeviceStatus(eid=device, imei="353290611234567", plmn=plmn, signal_dbm=-80, attach_failures=0)


def of(kind: type, decisions: list[PolicyDecision] | tuple[PolicyDecision, ...]) -> list:  # type: ignore[type-arg]
    return [d for d in decisions if isinstance(d, kind)]


def wake(p: Policies, device: bytes, status: DeviceStatus, now: float) -> list[PolicyDecision]:
    verdict = p.on_status(device, status, now, group=None, wake=True, bound_imei=status.imei, quarantined=False)
    return list(verdict.decisions)


def test_three_failed_wakeups_run_execute_fallback_with_refresh_then_report_once() -> None:
    p = Policies(config(), rand=random.Random(1).random)
    d = eid(1)
    assert of(RunEs10, wake(p, d, failing(d), T0)) == []
    assert of(RunEs10, wake(p, d, failing(d), T0 + 600)) == []
    out = wake(p, d, failing(d), T0 + 1200)
    [run] = of(RunEs10, out)
    assert run.function == EXECUTE_FALLBACK and run.refresh == "uicc-reset"
    assert codec.decode("ExecuteFallbackMechanismRequest", run.request) == {"refreshFlag": False}
    assert [a.operation for a in of(AuditPolicy, out)] == ["fallbackTriggered", EXECUTE_FALLBACK]
    done = p.on_es10_result(d, run.token, ok_response(EXECUTE_FALLBACK), T0 + 1201)
    [report] = of(ReportStateChange, done)
    assert report.cause == 1 and T0 + 1201 <= report.at <= T0 + 1201 + 600 + 1
    assert [e.type for e in of(EmitEvent, done)] == ["fallback.executed"]
    assert p.fallbacks.state_of(d) == "fallback"
    # still failing on the fallback profile's network: nothing more happens
    assert of(RunEs10, wake(p, d, failing(d), T0 + 1800)) == []


def test_a_healthy_wakeup_resets_the_failed_wakeup_count() -> None:
    p = Policies(config(), rand=random.Random(1).random)
    d = eid(2)
    wake(p, d, failing(d), T0)
    wake(p, d, failing(d), T0 + 60)
    wake(p, d, healthy(d), T0 + 120)
    assert of(RunEs10, wake(p, d, failing(d), T0 + 180)) == []
    assert of(RunEs10, wake(p, d, failing(d), T0 + 240)) == []
    assert len(of(RunEs10, wake(p, d, failing(d), T0 + 300))) == 1


def test_attach_failures_reported_by_the_device_trigger_at_the_configured_count() -> None:
    p = Policies(config(attach_failures=5, failed_wakeups=0), rand=random.Random(1).random)
    d = eid(3)
    assert of(RunEs10, wake(p, d, failing(d, failures=4), T0)) == []
    assert len(of(RunEs10, wake(p, d, failing(d, failures=5), T0 + 1))) == 1


def test_failing_for_a_configured_time_triggers_even_with_few_wakeups() -> None:
    p = Policies(config(failed_wakeups=0, failing_for_s=7200.0), rand=random.Random(1).random)
    d = eid(4)
    assert of(RunEs10, wake(p, d, failing(d), T0)) == []
    assert of(RunEs10, wake(p, d, failing(d), T0 + 7199)) == []
    assert len(of(RunEs10, wake(p, d, failing(d), T0 + 7200))) == 1


def test_signal_under_the_threshold_counts_as_a_failed_wakeup() -> None:
    p = Policies(config(failed_wakeups=2, min_signal_dbm=-110), rand=random.Random(1).random)
    d = eid(5)
    assert of(RunEs10, wake(p, d, failing(d, failures=0, signal=-109), T0)) == []
    assert of(RunEs10, wake(p, d, failing(d, failures=0, signal=-120), T0 + 1)) == []
    assert len(of(RunEs10, wake(p, d, failing(d, failures=0, signal=-121), T0 + 2))) == 1


def test_statuses_inside_one_wakeup_do_not_count_as_wakeups() -> None:
    p = Policies(config(), rand=random.Random(1).random)
    d = eid(6)
    for i in range(5):
        p.on_status(d, failing(d), T0 + i, group=None, wake=False, bound_imei=None, quarantined=False)
    assert p.fallbacks.devices[d].failed_wakeups == 0


def test_return_from_fallback_runs_at_the_first_wakeup_after_return_after_s_and_is_reported() -> None:
    p = Policies(config(), rand=random.Random(2).random)
    d = eid(7)
    for i in range(3):
        out = wake(p, d, failing(d), T0 + i)
    run = of(RunEs10, out)[0]
    p.on_es10_result(d, run.token, ok_response(EXECUTE_FALLBACK), T0 + 3)
    assert of(RunEs10, wake(p, d, healthy(d, "20810"), T0 + 3 + 3599)) == []
    out = wake(p, d, healthy(d, "20810"), T0 + 3 + 3600)
    [back] = of(RunEs10, out)
    assert back.function == RETURN_FROM_FALLBACK
    assert codec.decode("ReturnFromFallbackRequest", back.request) == {"refreshFlag": False}
    done = p.on_es10_result(d, back.token, ok_response(RETURN_FROM_FALLBACK), T0 + 3605)
    assert len(of(ReportStateChange, done)) == 1
    assert [e.type for e in of(EmitEvent, done)] == ["fallback.returned"]
    assert p.fallbacks.state_of(d) == "normal"


def test_falling_back_again_soon_after_a_return_doubles_the_wait_before_the_next_return() -> None:
    p = Policies(config(return_after_s=3600.0, return_after_max_s=10_000.0), rand=random.Random(3).random)
    d = eid(8)
    now = T0

    def fall() -> None:
        nonlocal now
        for _ in range(3):
            now += 60
            out = wake(p, d, failing(d), now)
        p.on_es10_result(d, of(RunEs10, out)[0].token, ok_response(EXECUTE_FALLBACK), now)

    def back() -> None:
        nonlocal now
        now = p.fallbacks.devices[d].return_at or now
        out = wake(p, d, healthy(d), now)
        p.on_es10_result(d, of(RunEs10, out)[0].token, ok_response(RETURN_FROM_FALLBACK), now)

    fall()
    assert p.fallbacks.devices[d].return_wait_s == 3600.0
    back()
    fall()
    assert p.fallbacks.devices[d].return_wait_s == 7200.0
    back()
    fall()
    assert p.fallbacks.devices[d].return_wait_s == 10_000.0


def test_a_refused_fallback_is_audited_and_waits_the_cooldown_before_trying_again() -> None:
    p = Policies(config(cooldown_s=1000.0), rand=random.Random(4).random)
    d = eid(9)
    for i in range(3):
        out = wake(p, d, failing(d), T0 + i)
    done = p.on_es10_result(d, of(RunEs10, out)[0].token, ok_response(EXECUTE_FALLBACK, 6), T0 + 3)
    assert [(a.operation, a.result) for a in of(AuditPolicy, done)] == [(EXECUTE_FALLBACK, "failed")]
    assert [e.type for e in of(EmitEvent, done)] == ["fallback.failed"]
    assert of(ReportStateChange, done) == []
    for i in range(5):
        assert of(RunEs10, wake(p, d, failing(d), T0 + 10 + i)) == []
    for i in range(3):
        out = wake(p, d, failing(d), T0 + 1010 + i)
    assert len(of(RunEs10, out)) == 1


def test_a_call_the_device_never_answers_frees_its_slot_after_call_timeout() -> None:
    cfg = PoliciesSection(fallback=FallbackPolicy(enabled=True, attach_failures=1, call_timeout_s=600.0),
                          fallback_wave=FallbackWaveSection(max_concurrent=1))
    p = Policies(cfg, rand=random.Random(5).random)
    a, b = eid(10), eid(11)
    assert len(of(RunEs10, wake(p, a, failing(a), T0))) == 1
    assert of(RunEs10, wake(p, b, failing(b), T0 + 1)) == []       # no slot
    assert of(RunEs10, wake(p, b, failing(b), T0 + 300)) == []
    tick = p.tick(T0 + 601)
    assert [a_.result for a_ in of(AuditPolicy, tick)] == ["timeout"]
    assert len(of(RunEs10, wake(p, b, failing(b), T0 + 602))) == 1
    assert p.fallbacks.state_of(a) == "waiting"


def test_a_stale_result_is_ignored() -> None:
    p = Policies(config(attach_failures=1, failed_wakeups=0), rand=random.Random(6).random)
    d = eid(12)
    wake(p, d, failing(d), T0)
    out = p.on_es10_result(d, "fb:nope:9", ok_response(EXECUTE_FALLBACK), T0 + 1)
    assert [a.result for a in of(AuditPolicy, out)] == ["ignored"]
    assert p.fallbacks.state_of(d) == "executing"


def test_group_policy_replaces_the_global_one_for_its_devices() -> None:
    groups = types.MappingProxyType({"trackers": GroupSection(
        tags=("tracker",), fallback=FallbackPolicy(enabled=True, attach_failures=1))})
    p = Policies(PoliciesSection(groups=groups), rand=random.Random(7).random)
    d = eid(13)
    assert of(RunEs10, p.on_status(d, failing(d), T0, group=None, wake=True, bound_imei=None,
                                   quarantined=False).decisions) == []
    assert len(of(RunEs10, p.on_status(d, failing(d), T0 + 1, group="trackers", wake=True, bound_imei=None,
                                       quarantined=False).decisions)) == 1


def test_carrier_outage_of_500_devices_is_one_alarm_bounded_waves_and_one_state_change_each() -> None:
    cfg = PoliciesSection(
        fallback=FallbackPolicy(enabled=True, attach_failures=0, failed_wakeups=2, return_after_s=6 * 3600.0),
        fallback_wave=FallbackWaveSection(max_concurrent=20, outage_devices=10, outage_window_s=900.0,
                                          report_spread_s=600.0, report_rate_per_s=2.0))
    p = Policies(cfg, rand=random.Random(42).random)
    rng = random.Random(99)
    devices = [eid(1000 + i) for i in range(500)]
    # every device wakes every 10 minutes (at its own phase); the carrier fails at T0
    phase = {d: rng.uniform(0, 600) for d in devices}
    alarms: list[RaiseAlarm] = []
    clears: list[ClearAlarm] = []
    reports: list[ReportStateChange] = []
    max_inflight = 0
    t = T0
    while t < T0 + 4 * 3600:
        wakers = [d for d in devices if (t - T0 - phase[d]) % 600 < 60 and t - T0 >= phase[d]]
        for d in wakers:
            out = wake(p, d, failing(d), t)
            max_inflight = max(max_inflight, len(p.fallbacks.wave.inflight))
            for run in of(RunEs10, out):
                out += p.on_es10_result(d, run.token, ok_response(run.function), t + 5)
            alarms += of(RaiseAlarm, out)
            reports += of(ReportStateChange, out)
        t += 60
    assert all(p.fallbacks.state_of(d) == "fallback" for d in devices)
    assert len(alarms) == 1 and alarms[0].alarm.kind == "carrier-outage"
    assert max_inflight <= 20
    per_device = Counter(r.eid for r in reports)
    assert set(per_device) == set(devices) and set(per_device.values()) == {1}
    # the eIM sees at most report_rate_per_s reports per second, spread over time
    per_second = Counter(int(r.at * 2) for r in reports)
    assert max(per_second.values()) == 1
    times = sorted(r.at for r in reports)
    assert times[-1] - times[0] > 600
    # the carrier comes back: every device returns; the alarm clears once, after the last
    t = T0 + 7 * 3600
    while t < T0 + 12 * 3600:
        for d in [d for d in devices if (t - T0 - phase[d]) % 600 < 60]:
            out = wake(p, d, healthy(d), t)
            for run in of(RunEs10, out):
                out += p.on_es10_result(d, run.token, ok_response(run.function), t + 5)
            clears += of(ClearAlarm, out)
        t += 60
    assert all(p.fallbacks.state_of(d) == "normal" for d in devices)
    assert len(clears) == 1
    assert p.alarms.active == {}


def test_policy_state_round_trips_through_its_json_blobs() -> None:
    p = Policies(config(attach_failures=1, failed_wakeups=0), rand=random.Random(8).random)
    d = eid(14)
    out = wake(p, d, failing(d), T0)
    saved = {(s.eid, s.kind): s.blob for s in of(SavePolicyState, out)}
    q = Policies(config(attach_failures=1, failed_wakeups=0), rand=random.Random(8).random)
    for (e, kind), blob in saved.items():
        q.restore(e, kind, blob)
    run = of(RunEs10, out)[0]
    done = q.on_es10_result(d, run.token, ok_response(EXECUTE_FALLBACK), T0 + 1)
    assert len(of(ReportStateChange, done)) == 1
    assert DeviceFallback.from_json(q.fallbacks.devices[d].to_json()) == q.fallbacks.devices[d]


@pytest.mark.parametrize("blob", [b"", b"[]", b'{"v":2}', b'{"v":1,"state":"flying"}', b'{"v":1,"bogus":1}'])
def test_corrupt_fallback_state_is_a_decode_error(blob: bytes) -> None:
    with pytest.raises(DecodeError):
        DeviceFallback.from_json(blob)


@pytest.mark.parametrize("blob", [b"\xff", b'{"v":1}', b'{"v":1,"inflight":[],"report_slots":[],"outages":{}}'])
def test_corrupt_wave_state_is_a_decode_error(blob: bytes) -> None:
    with pytest.raises(DecodeError):
        Wave.from_json(blob)


def test_fallbacks_disabled_decide_nothing() -> None:
    f = Fallbacks(PoliciesSection(), random.Random(0).random)
    d = eid(15)
    for i in range(10):
        assert of(RunEs10, f.observe(d, failing(d, failures=10), T0 + i, group=None)) == []


def test_a_report_not_yet_sent_survives_a_restart_and_is_sent_once() -> None:
    p = Policies(config(attach_failures=1, failed_wakeups=0), rand=random.Random(9).random)
    d = eid(16)
    saved: dict[tuple[bytes, str], bytes] = {}

    def keep(decisions: list[PolicyDecision]) -> list[PolicyDecision]:
        saved.update({(s.eid, s.kind): s.blob for s in of(SavePolicyState, decisions)})
        return decisions

    run = of(RunEs10, keep(wake(p, d, failing(d), T0)))[0]
    [report] = of(ReportStateChange, keep(p.on_es10_result(d, run.token, ok_response(EXECUTE_FALLBACK), T0 + 1)))
    # the gateway restarts before the report's time: the report comes back, at its time
    q = Policies(config(attach_failures=1, failed_wakeups=0), rand=random.Random(9).random)
    for (e, kind), blob in saved.items():
        q.restore(e, kind, blob)
    [again] = of(ReportStateChange, keep(q.resume(T0 + 2)))
    assert (again.token, again.at) == (report.token, report.at)
    # restarted long after it: re-spread from now
    [late] = of(ReportStateChange, q.resume(report.at + 3600))
    assert late.token == report.token and late.at >= report.at + 3600
    # once sent, never again
    keep(q.report_sent(d, report.token, T0 + 700))
    assert q.report_sent(d, report.token, T0 + 701) == []
    r = Policies(config(attach_failures=1, failed_wakeups=0), rand=random.Random(9).random)
    for (e, kind), blob in saved.items():
        r.restore(e, kind, blob)
    assert of(ReportStateChange, r.resume(T0 + 800)) == []


def test_an_operator_return_runs_at_the_next_wakeup_before_return_after_s() -> None:
    p = Policies(config(attach_failures=1, failed_wakeups=0, return_after_s=86_400.0), rand=random.Random(10).random)
    d = eid(17)
    run = of(RunEs10, wake(p, d, failing(d), T0))[0]
    p.on_es10_result(d, run.token, ok_response(EXECUTE_FALLBACK), T0 + 1)
    assert of(RunEs10, wake(p, d, healthy(d), T0 + 60)) == []
    assert p.request_return(eid(99), T0 + 61) == []
    assert [a.result for a in of(AuditPolicy, p.request_return(d, T0 + 61))] == ["requested"]
    [back] = of(RunEs10, wake(p, d, healthy(d), T0 + 120))
    assert back.function == RETURN_FROM_FALLBACK


def test_fallback_not_available_after_an_unanswered_call_means_the_first_call_ran() -> None:
    p = Policies(config(attach_failures=1, failed_wakeups=0), rand=random.Random(12).random)
    d = eid(18)
    first = of(RunEs10, wake(p, d, failing(d), T0))[0]
    lost = p.on_es10_result(d, first.token, None, T0 + 1)
    assert [a.result for a in of(AuditPolicy, lost)] == ["not-run"] and p.fallbacks.state_of(d) == "waiting"
    second = of(RunEs10, wake(p, d, failing(d), T0 + 600))[0]
    assert second.token != first.token
    done = p.on_es10_result(d, second.token, ok_response(EXECUTE_FALLBACK, 6), T0 + 601)
    assert "already-in-fallback" in [a.result for a in of(AuditPolicy, done)]
    assert p.fallbacks.state_of(d) == "fallback" and len(of(ReportStateChange, done)) == 1


def test_a_waiting_device_goes_back_to_normal_when_the_policy_is_switched_off() -> None:
    cfg = PoliciesSection(fallback=FallbackPolicy(enabled=True, attach_failures=1),
                          fallback_wave=FallbackWaveSection(max_concurrent=1))
    p = Policies(cfg, rand=random.Random(13).random)
    a, b = eid(19), eid(20)
    wake(p, a, failing(a), T0)
    wake(p, b, failing(b), T0 + 1)
    assert p.fallbacks.state_of(b) == "waiting"
    p.reload(PoliciesSection())
    assert of(RunEs10, wake(p, b, failing(b), T0 + 2)) == [] and p.fallbacks.state_of(b) == "normal"


@given(st.lists(st.tuples(st.integers(0, 29), st.booleans(), st.integers(1, 900)), min_size=1, max_size=300),
       st.integers(1, 5))
@settings(max_examples=60, deadline=None)
def test_wave_invariants_hold_for_any_order_of_wakeups_and_answers(
        script: list[tuple[int, bool, int]], max_concurrent: int) -> None:
    """Whatever the order: never more than max_concurrent calls out, one report per switch,
    at most one outage alarm raised at a time per group, and every report at its own slot."""
    cfg = PoliciesSection(fallback=FallbackPolicy(enabled=True, attach_failures=1, return_after_s=3600.0),
                          fallback_wave=FallbackWaveSection(max_concurrent=max_concurrent, outage_devices=3))
    p = Policies(cfg, rand=random.Random(0).random)
    now = T0
    switches = reports = 0
    raised = 0
    slots: set[float] = set()
    outstanding: dict[bytes, str] = {}
    for n, answer, dt in script:
        now += dt
        d = eid(500 + n)
        if d in outstanding and answer:
            token = outstanding.pop(d)
            function = EXECUTE_FALLBACK if p.fallbacks.state_of(d) == "executing" else RETURN_FROM_FALLBACK
            out = p.on_es10_result(d, token, ok_response(function), now)
        else:
            out = wake(p, d, failing(d) if n % 2 else healthy(d), now)
            outstanding.update({r.eid: r.token for r in of(RunEs10, out)})
        assert len(p.fallbacks.wave.inflight) <= max_concurrent
        switches += sum(1 for a in of(AuditPolicy, out) if a.result == "ok"
                        and a.operation in (EXECUTE_FALLBACK, RETURN_FROM_FALLBACK))
        for r in of(ReportStateChange, out):
            assert r.at not in slots
            slots.add(r.at)
            reports += 1
        raised += len(of(RaiseAlarm, out)) - len(of(ClearAlarm, out))
        assert raised in (0, 1)
    assert reports == switches
