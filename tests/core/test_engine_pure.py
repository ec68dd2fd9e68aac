"""Pure engine tests: events in, actions out, no eUICC, no peers, no I/O.

They check the engine's contract with the runtime (ordering of store and I/O actions, one
downlink per uplink, no device blocking another), retry timing, serialisation of what the
store keeps, and that malformed input of any kind is refused without an exception.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import actions as A
from gateway.core import events as E
from gateway.core import serial
from gateway.core.config import DeviceOverrides
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.core.session import DeviceSession
from gateway.errors import ConfigError, DecodeError
from gateway.links.protocol import Batch, BatchResult, DeviceStatus, Step, StepResult
from gateway.spec import esipa

EID = bytes.fromhex("89049032123451234512345678901235")
EIM = EimEndpoint("eim-1", "eim.example")
NO_PACKAGE = esipa.encode_from_eim("getEimPackageResponse", ("eimPackageError", 1))


def engine(**kw: Any) -> Engine:
    return Engine(EngineConfig(eims=(EIM,), seed=1, **kw))


def eid(n: int) -> bytes:
    return EID[:12] + n.to_bytes(4, "big")


def hello(e: bytes = EID, now: float = 0.0, plmn: str | None = "26201") -> E.DeviceHello:
    return E.DeviceHello(e, now, DeviceStatus(e, plmn=plmn))


def posts(actions: list[A.Action]) -> list[A.PostEsipa]:
    return [a for a in actions if isinstance(a, A.PostEsipa)]


def downlinks(actions: list[A.Action]) -> list[A.Action]:
    return [a for a in actions if isinstance(a, A.DOWNLINKS)]


def test_hello_polls_the_eim_and_holds_the_downlink_until_it_answers() -> None:
    eng = engine()
    out = eng.handle(hello())
    (poll,) = posts(out)
    assert poll.function == "GetEimPackage" and poll.eim_fqdn == "eim.example"
    kind, value = esipa.decode_from_ipa(poll.body)
    assert kind == "getEimPackageRequest" and value["eidValue"] == EID
    assert downlinks(out) == []
    out = eng.handle(E.BackhaulAnswered(EID, 0.1, poll.request_id, NO_PACKAGE))
    (batch,) = downlinks(out)
    assert isinstance(batch, A.SendBatch)       # first contact: notifications and eIM configuration
    assert [s.apdus[0][5:7] for s in batch.batch.steps] == [b"\xbf\x2b", b"\xbf\x55"]


def test_store_actions_come_first_and_every_list_saves_the_session() -> None:
    eng = engine()
    out = eng.handle(hello())
    out += eng.handle(E.BackhaulAnswered(EID, 0.1, posts(out)[0].request_id, NO_PACKAGE))
    for lst in (eng.handle(hello(now=5.0)),):
        kinds = [isinstance(a, A.STORE_ACTIONS) for a in lst]
        assert kinds == sorted(kinds, reverse=True)
        assert any(isinstance(a, A.SaveSession) for a in lst)


def test_a_device_waiting_on_the_backhaul_does_not_hold_up_another() -> None:
    eng = engine()
    eng.handle(hello(eid(1)))                           # its poll stays unanswered
    out = eng.handle(hello(eid(2)))
    out = eng.handle(E.BackhaulAnswered(eid(2), 0.1, posts(out)[0].request_id, NO_PACKAGE))
    assert [a.eid for a in downlinks(out)] == [eid(2)]
    assert eng.state_of(eid(1)) == "idle" and eng.state_of(eid(2)) == "batch"


def test_a_result_for_a_batch_not_in_flight_is_refused() -> None:
    eng = engine()
    out = eng.handle(E.DeviceResult(EID, 0.0, BatchResult(99, ())))
    (reply,) = downlinks(out)
    assert isinstance(reply, A.ReplyError) and reply.code == 6


def test_a_retryable_poll_failure_is_retried_within_the_backoff_ceiling() -> None:
    eng = engine()
    (poll,) = posts(eng.handle(hello()))
    out = eng.handle(E.BackhaulFailed(EID, 10.0, poll.request_id, "NetworkError", True, "refused"))
    (timer,) = [a for a in out if isinstance(a, A.StartTimer)]
    assert 10.0 <= timer.at <= 10.0 + EngineConfig().poll_backoff.ceiling(0)
    assert len(downlinks(out)) == 1                     # the device is not kept waiting for it
    out = eng.handle(E.TimerFired(EID, timer.at, timer.name))
    assert len(posts(out)) == 1


def test_a_definitive_poll_failure_is_not_retried() -> None:
    eng = engine()
    (poll,) = posts(eng.handle(hello()))
    out = eng.handle(E.BackhaulFailed(EID, 1.0, poll.request_id, "FunctionFailed", False, "8.1/3.8"))
    assert not [a for a in out if isinstance(a, A.StartTimer)]


def test_scheduled_polls_run_while_the_device_sleeps() -> None:
    eng = engine(poll_interval_s=600.0)
    (poll,) = posts(eng.handle(hello()))
    out = eng.handle(E.BackhaulAnswered(EID, 1.0, poll.request_id, NO_PACKAGE))
    (timer,) = [a for a in out if isinstance(a, A.StartTimer) and a.name == "poll"]
    assert timer.at == 601.0
    assert len(posts(eng.handle(E.TimerFired(EID, 601.0, "poll")))) == 1


def test_forget_drops_the_session() -> None:
    eng = engine()
    eng.handle(hello())
    eng.handle(E.OperatorAction(EID, 1.0, E.OPERATOR_FORGET))
    assert eng.state_of(EID) == "unknown"


def test_thousands_of_devices_are_served_in_constant_time_per_event() -> None:
    eng = engine()
    start = time.perf_counter()
    n = 3000
    pending = [posts(eng.handle(hello(eid(i))))[0] for i in range(n)]
    for i, poll in enumerate(pending):
        out = eng.handle(E.BackhaulAnswered(eid(i), 1.0, poll.request_id, NO_PACKAGE))
        assert len(downlinks(out)) == 1
    elapsed = time.perf_counter() - start
    assert len(eng.sessions) == n
    assert elapsed < 60.0                               # generous: a shared 2-core machine


def test_session_blob_round_trips_exactly() -> None:
    eng = engine()
    (poll,) = posts(eng.handle(hello()))
    out = eng.handle(E.BackhaulAnswered(EID, 0.1, poll.request_id, NO_PACKAGE))
    (saved,) = [a for a in out if isinstance(a, A.SaveSession)]
    again = DeviceSession.from_blob(EID, saved.blob)
    assert again.to_blob() == saved.blob
    assert again.state_name == saved.state_name == "batch"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_as_a_session_blob_are_refused_with_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        DeviceSession.from_blob(EID, data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_as_an_eim_package_are_refused_without_exception(data: bytes) -> None:
    eng = engine()
    eng.handle(E.EimPackageReceived(EID, 0.0, "eim-1", data, "push", "k"))
    eng.handle(E.EimPackageReceived(EID, 0.0, "eim-1", b"\xbf\x4e" + bytes([len(data) % 128]) + data[:127], "push", "k2"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_as_a_poll_answer_are_refused_without_exception(data: bytes) -> None:
    eng = engine()
    (poll,) = posts(eng.handle(hello()))
    out = eng.handle(E.BackhaulAnswered(EID, 0.1, poll.request_id, data))
    assert len(downlinks(out)) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=80), st.sampled_from([0x9000, 0x6A80, 0x6F00])), max_size=4),
       st.sampled_from([None, "unexpected-sw", "data", "card-error"]))
def test_any_device_result_is_handled_without_exception(results: list[tuple[bytes, int]], stopped: str | None) -> None:
    eng = engine()
    (poll,) = posts(eng.handle(hello()))
    out = eng.handle(E.BackhaulAnswered(EID, 0.1, poll.request_id, NO_PACKAGE))
    (send,) = [a for a in out if isinstance(a, A.SendBatch)]
    res = BatchResult(send.batch.batch_id, tuple(StepResult(d, sw) for d, sw in results), stopped)
    out = eng.handle(E.DeviceResult(EID, 1.0, res))
    assert len(downlinks(out)) <= 1


def test_events_and_actions_round_trip_through_cbor() -> None:
    status = DeviceStatus(EID, imei="353290611234567", plmn="26201", signal_dbm=-90, max_batch_bytes=4096)
    batch = Batch(3, (Step((b"\x80\xe2\x91\x00\x03\xbf\x2e\x00",), (0x9000,), True),), b"\xa0\x00", "uicc-reset")
    evs: list[E.Event] = [
        E.DeviceHello(EID, 1.5, status),
        E.DeviceResult(EID, 2.0, BatchResult(3, (StepResult(b"\x01", 0x9000),), "data"), status),
        E.EimPackageReceived(EID, 3.0, "eim", b"\xbf\x54\x00", "push", "key"),
        E.BackhaulAnswered(EID, 4.0, "7", b"{}"),
        E.BackhaulFailed(EID, 5.0, "8", "NetworkError", True, "x", None, "5.1", 30.0),
        E.TimerFired(EID, 6.0, "poll"),
        E.OperatorAction(EID, 7.0, "retry", (("a", "b"),)),
    ]
    for ev in evs:
        assert E.from_bytes(E.to_bytes(ev)) == ev
    acts: list[A.Action] = [
        A.SendBatch(EID, batch), A.ReplyIdle(EID, 60), A.ReplyError(EID, 6, "x"),
        A.PostEsipa(EID, "1", "eim", "eim.example", "GetEimPackage", b"\xbf\x4f\x00"),
        A.PostEs9(EID, "2", "smdp.example", "initiateAuthentication", b"{}"),
        A.SaveSession(EID, "idle", b"\x00"), A.MarkInbox(EID, "k", "done"),
        A.Audit(EID, None, "op", "engine", "ok"), A.StartTimer(EID, "t", 1.0), A.CancelTimer(EID, "t"),
    ]
    for act in acts:
        assert A.from_bytes(A.to_bytes(act)) == act


def test_serial_refuses_unknown_classes_and_garbage() -> None:
    import cbor2
    for bad in (b"", b"\xff", cbor2.dumps(cbor2.CBORTag(0xDC, ["Nope", {}])),
                cbor2.dumps(cbor2.CBORTag(0xDC, ["TimerFired", {"eid": b"", "bogus": 1}]))):
        try:
            serial.loads(bad)
        except DecodeError:
            continue
        raise AssertionError(f"accepted {bad!r}")
    try:
        E.from_bytes(A.to_bytes(A.ReplyIdle(EID, 1)))
    except DecodeError:
        return
    raise AssertionError("an action was read as an event")


def test_each_eim_poll_retries_on_its_own_timer_and_a_wake_polls_at_once() -> None:
    eng = Engine(EngineConfig(eims=(EIM, EimEndpoint("eim-2", "two.example")), seed=1))
    polls = posts(eng.handle(hello()))
    assert sorted(p.eim_id for p in polls) == ["eim-1", "eim-2"]
    timers: list[A.StartTimer] = []
    for p in polls:
        out = eng.handle(E.BackhaulFailed(EID, 1.0, p.request_id, "TransportTimeout", True, "slow"))
        timers += [a for a in out if isinstance(a, A.StartTimer)]
    assert len({t.name for t in timers}) == 2
    out = eng.handle(hello(now=1.5))                    # the device wakes before the retries
    assert sorted(p.eim_id for p in posts(out)) == ["eim-1", "eim-2"]
    assert len([a for a in out if isinstance(a, A.CancelTimer)]) == 2


def test_operator_poll_reports_a_state_change_cause() -> None:
    eng = engine()
    (poll,) = posts(eng.handle(hello()))
    eng.handle(E.BackhaulAnswered(EID, 0.1, poll.request_id, NO_PACKAGE))
    out = eng.handle(E.OperatorAction(EID, 1.0, E.OPERATOR_POLL, (("cause", "fallback"),)))
    (again,) = posts(out)
    _, value = esipa.decode_from_ipa(again.body)
    assert "notifyStateChange" in value and value["stateChangeCause"] == 1
    assert value["rPLMN"] == bytes.fromhex("62F210")


def test_engine_config_refuses_unusable_values() -> None:
    import pytest

    from gateway.errors import ConfigError
    for bad in ({"segment_size": 0}, {"max_batch_bytes": 10}, {"refresh": "reboot"}, {"idle_retry_s": 0},
                {"initial_eim": {"eimFqdn": "x"}}):
        with pytest.raises(ConfigError):
            EngineConfig(**bad)


def test_a_device_waits_at_most_uplink_wait_s_for_a_slow_backhaul() -> None:
    eng = engine(uplink_wait_s=15.0)
    out = eng.handle(hello())
    (poll,) = posts(out)
    (timer,) = [a for a in out if isinstance(a, A.StartTimer) and a.name == "uplink"]
    assert timer.at == 15.0 and downlinks(out) == []
    out = eng.handle(E.TimerFired(EID, 15.0, "uplink"))
    (reply,) = downlinks(out)                           # what was ready: the first-contact reads
    assert isinstance(reply, A.SendBatch)
    from gateway.spec import esipa as _esipa
    trigger = _esipa.encode_from_eim("getEimPackageResponse", ("profileDownloadTriggerRequest", {
        "profileDownloadData": ("activationCode", "1$smdp.example$M"), "eimTransactionId": b"\x01"}))
    out = eng.handle(E.BackhaulAnswered(EID, 40.0, poll.request_id, trigger))   # the eIM answers late
    assert downlinks(out) == [] and eng.state_of(EID) == "download:CHALLENGE"


def test_a_lost_batch_of_reads_is_sent_again_but_not_twice() -> None:
    from gateway.spec import esipa as _esipa
    eng = engine()
    (poll,) = posts(eng.handle(hello()))
    trigger = _esipa.encode_from_eim("getEimPackageResponse", ("profileDownloadTriggerRequest", {
        "profileDownloadData": ("activationCode", "1$smdp.example$M"), "eimTransactionId": b"\x01"}))
    (first,) = [a for a in eng.handle(E.BackhaulAnswered(EID, 0.1, poll.request_id, trigger))
                if isinstance(a, A.SendBatch)]
    out = eng.handle(hello(now=30.0))                    # the device never answered that batch
    out += eng.handle(E.BackhaulAnswered(EID, 30.1, posts(out)[0].request_id, NO_PACKAGE))
    (again,) = [a for a in out if isinstance(a, A.SendBatch)]
    challenge = [s.apdus for s in first.batch.steps if s.apdus[0][5:7] == b"\xbf\x2e"]
    assert challenge and challenge[0] in [s.apdus for s in again.batch.steps]
    assert eng.state_of(EID) == "download:CHALLENGE"
    out = eng.handle(hello(now=60.0))                    # lost again: the download gives up
    assert eng.state_of(EID) != "download:CHALLENGE"


def _poll_value(out: list[A.Action]) -> dict[str, Any]:
    (poll,) = [p for p in posts(out) if p.function == "GetEimPackage"]
    kind, value = esipa.decode_from_ipa(poll.body)
    assert kind == "getEimPackageRequest"
    return dict(value)


def test_a_plmn_change_the_policies_report_themselves_is_not_reported_again_by_the_engine() -> None:
    eng = engine()
    out = eng.handle(hello(now=0.0, plmn="26201"))
    eng.handle(E.BackhaulAnswered(EID, 0.1, posts(out)[0].request_id, NO_PACKAGE))
    eng.handle(E.StateReportPending(EID, 1.0, True))            # a fallback decided: its report is owed
    eng.restore(EID, eng.sessions[EID].to_blob())               # and survives a restart
    out = eng.handle(hello(now=10.0, plmn="310410"))            # the device is back on the fallback network
    assert "notifyStateChange" not in _poll_value(out)
    eng.handle(E.BackhaulAnswered(EID, 10.1, posts(out)[0].request_id, NO_PACKAGE))
    eng.handle(E.StateReportPending(EID, 20.0, False))          # the policy's report reached the eIM
    out = eng.handle(hello(now=30.0, plmn="310410"))
    assert "notifyStateChange" not in _poll_value(out)          # nothing changed since
    eng.handle(E.BackhaulAnswered(EID, 30.1, posts(out)[0].request_id, NO_PACKAGE))
    out = eng.handle(hello(now=40.0, plmn="26202"))             # a change of its own: the engine reports it
    value = _poll_value(out)
    assert "notifyStateChange" in value and value["rPLMN"] == bytes.fromhex("62F220")


def test_an_eim_answer_before_the_device_wakes_on_its_new_network_still_gives_one_report_per_switch() -> None:
    eng = engine()
    out = eng.handle(hello(now=0.0, plmn="26201"))
    eng.handle(E.BackhaulAnswered(EID, 0.1, posts(out)[0].request_id, NO_PACKAGE))
    eng.handle(E.StateReportPending(EID, 1.0, True))                    # a fallback decided
    out = eng.handle(E.DeviceHello(EID, 1.5, DeviceStatus(EID, plmn=None)))   # same wake: network unknown
    assert "notifyStateChange" not in _poll_value(out)
    eng.handle(E.BackhaulAnswered(EID, 1.6, posts(out)[0].request_id, NO_PACKAGE))
    eng.handle(E.StateReportPending(EID, 2.0, False, answered=True))    # the eIM has the policy's report
    assert eng.sessions[EID].policy_report_pending                      # held until the device names its PLMN
    eng.restore(EID, eng.sessions[EID].to_blob())                       # also across a restart
    out = eng.handle(hello(now=10.0, plmn="310410"))                    # awake on the fallback network
    assert "notifyStateChange" not in _poll_value(out)
    assert not eng.sessions[EID].policy_report_pending
    eng.handle(E.BackhaulAnswered(EID, 10.1, posts(out)[0].request_id, NO_PACKAGE))
    out = eng.handle(hello(now=20.0, plmn="310410"))
    assert "notifyStateChange" not in _poll_value(out)                  # 310410 counts as reported
    eng.handle(E.BackhaulAnswered(EID, 20.1, posts(out)[0].request_id, NO_PACKAGE))
    out = eng.handle(hello(now=30.0, plmn="26202"))                     # a change of its own: reported
    assert _poll_value(out)["rPLMN"] == bytes.fromhex("62F220")


def test_a_state_report_given_up_ends_the_hold_at_once() -> None:
    eng = engine()
    out = eng.handle(hello(now=0.0, plmn="26201"))
    eng.handle(E.BackhaulAnswered(EID, 0.1, posts(out)[0].request_id, NO_PACKAGE))
    eng.handle(E.StateReportPending(EID, 1.0, True))
    eng.handle(E.StateReportPending(EID, 2.0, False))                   # refused: the eIM was not told
    assert not eng.sessions[EID].policy_report_pending
    out = eng.handle(hello(now=10.0, plmn="310410"))
    assert "notifyStateChange" in _poll_value(out)


def test_state_report_pending_round_trips_as_an_event() -> None:
    event = E.StateReportPending(EID, 5.0, True)
    assert E.from_bytes(E.to_bytes(event)) == event


def test_an_audit_written_before_its_structured_fields_existed_reads_back_with_them_empty() -> None:
    import cbor2
    old = cbor2.dumps(cbor2.CBORTag(0xDC, ["Audit", {"eid": EID, "iccid": None, "operation": "removeNotification",
                                                     "origin": "engine", "result": "ok", "detail": "seq 3 (enable)"}]))
    audit = A.from_bytes(old)
    assert isinstance(audit, A.Audit) and (audit.event, audit.seq) == (None, None)
    new = A.Audit(EID, None, "removeNotification", "engine", "ok", "seq 3 (enable)", "enable", 3)
    assert A.from_bytes(A.to_bytes(new)) == new


def test_a_package_whose_result_the_eim_refused_is_audited_once_however_often_it_is_polled_again() -> None:
    eng = engine(poll_interval_s=60.0)
    package = esipa.encode_from_eim("getEimPackageResponse", ("ipaEuiccDataRequest", {
        "tagList": b"\xa9", "eimTransactionId": b"\x00\x01"}))          # deviceInfo: the IPA answers it
    refused = esipa.encode_from_eim("provideEimPackageResultResponse", ("provideEimPackageResultError", 127))
    out = eng.handle(hello())
    out = eng.handle(E.BackhaulAnswered(EID, 0.1, posts(out)[0].request_id, package))
    (result,) = [p for p in posts(out) if p.function == "ProvideEimPackageResult"]
    out = eng.handle(E.BackhaulAnswered(EID, 0.2, result.request_id, refused))
    assert [(a.operation, a.result) for a in out if isinstance(a, A.Audit)] == [
        ("provideEimPackageResult", "refused")]
    everything: list[A.Action] = []
    for n in range(1, 6):                      # the eIM hands the same package out on every poll
        now = 60.0 * n + 1
        (poll,) = posts(eng.handle(E.TimerFired(EID, now, "poll")))
        assert poll.function == "GetEimPackage"
        everything += eng.handle(E.BackhaulAnswered(EID, now + 0.1, poll.request_id, package))
    audits = [(a.operation, a.result, a.detail) for a in everything if isinstance(a, A.Audit)]
    assert audits == [("eimPackage", "duplicate", "eim:eim-1/tx:0001")]
    assert [a for a in everything if isinstance(a, A.MarkInbox)] == []   # a re-poll has no entry of its own
    assert posts(everything) == []             # no second run, no second result
    assert eng.sessions[EID].proc is None and eng.sessions[EID].queue == []
    saved = [a for a in everything if isinstance(a, A.SaveSession)][-1]
    eng.restore(EID, saved.blob)               # noted in the blob: a restart does not audit it again
    (poll,) = posts(eng.handle(E.TimerFired(EID, 400.0, "poll")))
    out = eng.handle(E.BackhaulAnswered(EID, 400.1, poll.request_id, package))
    assert [a for a in out if isinstance(a, A.Audit)] == [] and posts(out) == []


def test_a_pushed_copy_of_a_package_already_run_marks_its_own_inbox_entry_once_and_audits_once() -> None:
    eng = engine()
    package = esipa.encode_from_eim("getEimPackageResponse", ("ipaEuiccDataRequest", {
        "tagList": b"\xa9", "eimTransactionId": b"\x00\x02"}))
    out = eng.handle(hello())
    eng.handle(E.BackhaulAnswered(EID, 0.1, posts(out)[0].request_id, package))
    out = eng.handle(E.EimPackageReceived(EID, 1.0, "eim-1", package, "push", "pushed-key"))
    assert [(m.key, m.state) for m in out if isinstance(m, A.MarkInbox)] == [("pushed-key", "duplicate")]
    assert [a.result for a in out if isinstance(a, A.Audit)] == ["duplicate"]
    out = eng.handle(E.EimPackageReceived(EID, 2.0, "eim-1", package, "push", "pushed-key-2"))
    assert [(m.key, m.state) for m in out if isinstance(m, A.MarkInbox)] == [("pushed-key-2", "duplicate")]
    assert [a for a in out if isinstance(a, A.Audit)] == []


def test_an_answer_to_a_request_never_sent_is_a_quiet_stale_answer_not_an_audit() -> None:
    eng = engine()
    eng.handle(hello())
    for event in (E.BackhaulAnswered(EID, 1.0, "999", NO_PACKAGE),
                  E.BackhaulFailed(EID, 1.0, "998", "NetworkError", True, "reset")):
        out = eng.handle(event)
        (stale,) = [a for a in out if isinstance(a, A.StaleAnswer)]
        assert (stale.request_id, stale.reason) == (event.request_id, A.STALE_UNKNOWN)
        assert [a for a in out if isinstance(a, A.Audit)] == [] and posts(out) == []


def test_answers_for_a_forgotten_device_are_stale_and_its_new_session_never_reuses_their_ids() -> None:
    eng = engine()
    (poll,) = posts(eng.handle(hello()))
    eng.handle(E.OperatorAction(EID, 1.0, E.OPERATOR_FORGET))
    out = eng.handle(E.BackhaulAnswered(EID, 2.0, poll.request_id, NO_PACKAGE))   # the old poll's answer
    (stale,) = [a for a in out if isinstance(a, A.StaleAnswer)]
    assert stale.reason == A.STALE_FORGOTTEN and downlinks(out) == []
    (new_poll,) = posts(eng.handle(hello(now=3.0)))
    assert int(new_poll.request_id) > int(poll.request_id)


def test_let_go_requests_survive_a_restart_in_the_blob() -> None:
    s = DeviceSession(EID)
    s.let_go = {"7": A.STALE_ACKNOWLEDGED}
    assert DeviceSession.from_blob(EID, s.to_blob()).let_go == {"7": A.STALE_ACKNOWLEDGED}


def test_a_bad_per_device_override_is_refused_naming_the_key_and_the_device() -> None:
    for bad, key in ((DeviceOverrides(segment_size=0), "segment_size"),
                     (DeviceOverrides(max_batch_bytes=100), "max_batch_bytes"),
                     (DeviceOverrides(idle_retry_s=0), "idle_retry_s")):
        with pytest.raises(ConfigError, match=EID.hex()) as info:
            EngineConfig(devices={EID: bad})
        assert info.value.key == key
    config = EngineConfig(segment_size=200, devices={EID: DeviceOverrides(max_batch_bytes=512)})
    assert (config.segment_size_of(EID), config.max_batch_bytes_of(EID), config.max_batch_bytes_of(eid(1))) == \
        (200, 512, None)


def test_a_state_report_goes_to_each_eim_of_the_euicc_else_to_the_configured_ones() -> None:
    eng = engine()
    assert [(p.request_id, p.eim_id, p.eim_fqdn) for p in eng.state_report_posts(EID, "policy-1", b"body")] == \
        [("policy-1:eim-1", "eim-1", "eim.example")]
    eng.handle(hello())
    eng.sessions[EID].eims = [{"eimId": "a", "eimFqdn": "a.example", "tlsTrust": ("certificate", b"\x30\x00")},
                              {"eimId": "b", "eimFqdn": "b.example"}, {"eimId": "c"}]    # c: no address
    posts = eng.state_report_posts(EID, "policy-1", b"body")
    assert [(p.request_id, p.eim_id, p.eim_fqdn, p.tls_trust, p.body) for p in posts] == [
        ("policy-1:a", "a", "a.example", ("certificate", b"\x30\x00"), b"body"),
        ("policy-1:b", "b", "b.example", None, b"body")]
