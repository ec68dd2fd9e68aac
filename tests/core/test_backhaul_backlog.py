"""What waits for the backhaul: the engine names it (BackhaulWaiting) for the store's one
outbox accounting, and takes no new work while that backlog is at its bound
(Engine.hold_new_work). Pure: the engine alone, events in, actions out."""

from __future__ import annotations

from gateway.core import actions as A
from gateway.core import events as E
from gateway.core.engine import Engine, EngineConfig
from gateway.links.protocol import DeviceStatus
from tests.core.test_delivery_rearm import ACCEPTED, EID, EIM, NO_PACKAGE, POLL_EVERY, next_poll, outage, package, posts, results


def waiting_of(actions: list[A.Action]) -> list[A.BackhaulWaiting]:
    return [a for a in actions if isinstance(a, A.BackhaulWaiting)]


def test_every_change_of_the_waiting_deliveries_is_named_with_the_session_that_records_it() -> None:
    fresh = Engine(EngineConfig(eims=(EIM,), seed=3))
    out = fresh.handle(E.DeviceHello(EID, 0.0, DeviceStatus(EID, plmn="26201")))
    assert waiting_of(out) == [A.BackhaulWaiting(EID, ())]    # a new session names its (empty) set once
    out = fresh.handle(E.TimerFired(EID, 1.0, "no-such-timer"))
    assert waiting_of(out) == []
    eng, now = outage(3)
    session = eng.sessions[EID]
    # nothing changed in the deliveries (a stray timer): no BackhaulWaiting
    out = eng.handle(E.TimerFired(EID, now + 1, "no-such-timer"))
    assert waiting_of(out) == []
    poll = next_poll(eng, now + 40)
    out = eng.handle(E.BackhaulAnswered(EID, now + 40.1, poll.request_id, NO_PACKAGE))   # re-arms two
    (changed,) = waiting_of(out)
    store = [a for a in out if isinstance(a, A.STORE_ACTIONS)]
    assert store.index(changed) < store.index(next(a for a in store if isinstance(a, A.SaveSession)))
    assert sorted(w.state for w in changed.waiting) == ["SENDING", "SENDING", "WAITING"]
    assert all(w.kind == "result" and w.server == EIM.eim_id and w.size > 0 for w in changed.waiting)
    timers = {w.key: w.next_at for w in changed.waiting}
    assert {k for k, at in timers.items() if at is not None} == {
        name.split(":", 2)[2] for name in session.retries}   # the one still on its backoff timer
    sent = results(out)
    before = changed.waiting
    out = eng.handle(E.BackhaulAnswered(EID, now + 40.2, sent[0].request_id, ACCEPTED))
    (changed,) = waiting_of(out)
    assert len(changed.waiting) == 2           # acknowledged: it waits no more
    assert changed.previous == before          # what the store holds, so it writes only the change
    # a restart names the whole set again (a database upgraded under waiting deliveries, too)
    blob = [a for a in out if isinstance(a, A.SaveSession)][-1].blob
    restarted = Engine(EngineConfig(eims=(EIM,), seed=3, poll_interval_s=POLL_EVERY))
    restarted.restore(EID, blob)
    (again,) = waiting_of(restarted.resume(now + 41))
    assert again == A.BackhaulWaiting(EID, changed.waiting, previous=None)   # cannot know what the store holds
    # the operator forgets the device: nothing of it waits any more
    out = restarted.handle(E.OperatorAction(EID, now + 42, E.OPERATOR_FORGET))
    assert waiting_of(out) == [A.BackhaulWaiting(EID, ())]


def test_held_the_engine_polls_no_eim_starts_no_package_and_reads_no_notifications_but_delivers() -> None:
    eng, now = outage(2)
    eng.hold_new_work = True
    # a device wake: no GetEimPackage, no RetrieveNotificationsList in its batch (the daily
    # check is due), so nothing new is added to the backlog
    out = eng.handle(E.DeviceHello(EID, now + 86400, DeviceStatus(EID, plmn="26201")))
    assert [p.function for p in posts(out)] == []
    session = eng.sessions[EID]
    assert session.in_flight is not None and [item[0] for item in session.in_flight["notif"]] == ["discover"]
    assert session.want_retrieve         # kept for when the hold ends
    # the poll timer polls nothing either
    assert posts(eng.handle(E.TimerFired(EID, now + 86400 + POLL_EVERY, "poll"))) == []
    # deliveries still go out on their own timers: the backlog drains
    timer = next(iter(eng.sessions[EID].retries))
    (sent,) = results(eng.handle(E.TimerFired(EID, now + 90000, timer)))
    out = eng.handle(E.BackhaulAnswered(EID, now + 90000.1, sent.request_id, ACCEPTED))
    assert len(eng.sessions[EID].deliveries) == 1
    assert [p.function for p in posts(out)] == ["ProvideEimPackageResult"]   # the next re-armed; no poll
    (rearmed,) = results(out)
    # the hold ends: the next wake polls and reads the notifications again
    eng.hold_new_work = False
    out = eng.handle(E.DeviceHello(EID, now + 90001, DeviceStatus(EID, plmn="26201")))
    assert [p.function for p in posts(out)] == ["GetEimPackage"]
    asked = posts(out) + [rearmed]
    while asked and session.in_flight is None:      # the eIM answers whatever is asked
        post = asked.pop(0)
        asked += posts(eng.handle(E.BackhaulAnswered(EID, now + 90002, post.request_id,
                                                     NO_PACKAGE if post.function == "GetEimPackage" else ACCEPTED)))
    assert session.in_flight is not None and "retrieve" in [item[0] for item in session.in_flight["notif"]]


def test_held_a_package_already_received_waits_in_the_queue_and_runs_once_the_hold_ends() -> None:
    eng = Engine(EngineConfig(eims=(EIM,), seed=3))
    (poll,) = posts(eng.handle(E.DeviceHello(EID, 0.0, DeviceStatus(EID, plmn="26201"))))
    eng.hold_new_work = True
    out = eng.handle(E.BackhaulAnswered(EID, 0.1, poll.request_id, package(1)))
    session = eng.sessions[EID]
    assert session.proc is None and [q["kind"] for q in session.queue] == ["eim_data"]
    assert results(out) == [] and waiting_of(out) == []
    eng.hold_new_work = False
    out = eng.handle(E.TimerFired(EID, 1.0, "no-such-timer"))     # any event of the device
    assert session.queue == [] and session.proc is None            # run (deviceInfo needs no eUICC call)
    (changed,) = waiting_of(out)
    assert [w.kind for w in changed.waiting] == ["result"] and len(results(out)) == 1

