"""Deliveries waiting on backoff after an outage are re-armed when their server answers again
(gateway.core.backhaul_side: rearm). Pure: the engine alone, events in, actions out."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core import actions as A
from gateway.core import events as E
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.errors import ConfigError
from gateway.links.protocol import DeviceStatus
from gateway.spec import esipa

EID = bytes.fromhex("89049032123451234512345678901235")
EIM = EimEndpoint("eim-1", "eim.example")
NO_PACKAGE = esipa.encode_from_eim("getEimPackageResponse", ("eimPackageError", 1))
ACCEPTED = esipa.encode_from_eim("provideEimPackageResultResponse", ("eimAcknowledgements", []))
POLL_EVERY = 60.0


def posts(actions: list[A.Action]) -> list[A.PostEsipa]:
    return [a for a in actions if isinstance(a, A.PostEsipa)]


def results(actions: list[A.Action]) -> list[A.PostEsipa]:
    return [p for p in posts(actions) if p.function == "ProvideEimPackageResult"]


def package(n: int) -> bytes:
    """An eIM package the IPA answers by itself (deviceInfo): it makes one result delivery."""
    return esipa.encode_from_eim("getEimPackageResponse", ("ipaEuiccDataRequest", {
        "tagList": b"\xa9", "eimTransactionId": n.to_bytes(2, "big")}))


def tx_of(post: A.PostEsipa) -> int:
    kind, value = esipa.decode_from_ipa(post.body)
    assert kind == "provideEimPackageResult"
    found = _find(value, "eimTransactionId")
    assert isinstance(found, bytes)
    return int.from_bytes(found, "big")


def _find(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        if key in value:
            return value[key]
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            if (hit := _find(v, key)) is not None:
                return hit
    return None


def outage(count: int, **config: Any) -> tuple[Engine, float]:
    """`count` results made one per poll, every attempt to deliver one refused (connection
    refused): each waits on its backoff timer. Returns the engine and the time reached."""
    eng = Engine(EngineConfig(eims=(EIM,), seed=3, poll_interval_s=POLL_EVERY, **config))
    out = eng.handle(E.DeviceHello(EID, 0.0, DeviceStatus(EID, plmn="26201")))
    (poll,) = posts(out)
    now = 0.0
    for n in range(1, count + 1):
        now += 0.1
        out = eng.handle(E.BackhaulAnswered(EID, now, poll.request_id, package(n)))
        for result in results(out):     # the new result, and those this answer re-armed
            now += 0.1
            eng.handle(E.BackhaulFailed(EID, now, result.request_id, "NetworkError", True, "refused"))
        now = POLL_EVERY * n
        (poll,) = posts(eng.handle(E.TimerFired(EID, now, "poll")))
    session = eng.sessions[EID]
    assert [d["state"] for d in session.deliveries.values()] == ["WAITING"] * count
    assert len(session.retries) == count
    eng.handle(E.BackhaulFailed(EID, now + 0.1, poll.request_id, "NetworkError", True, "refused"))
    return eng, now + 0.1


def next_poll(eng: Engine, now: float) -> A.PostEsipa:
    (poll,) = posts(eng.handle(E.TimerFired(EID, now, "retry:poll:poll:eim-1")))
    return poll


def test_deliveries_waiting_on_backoff_are_sent_as_soon_as_a_poll_to_their_eim_succeeds() -> None:
    eng, now = outage(2)
    poll = next_poll(eng, now + 40)
    out = eng.handle(E.BackhaulAnswered(EID, now + 40.1, poll.request_id, NO_PACKAGE))
    sent = results(out)
    assert [tx_of(p) for p in sent] == [1, 2]
    cancelled = {a.name for a in out if isinstance(a, A.CancelTimer)}
    assert cancelled == {"retry:delivery:" + k for k in eng.sessions[EID].deliveries}
    assert eng.sessions[EID].retries == {}
    assert [d["state"] for d in eng.sessions[EID].deliveries.values()] == ["SENDING", "SENDING"]


def test_a_failed_poll_rearms_nothing() -> None:
    eng, now = outage(2)
    poll = next_poll(eng, now + 40)
    out = eng.handle(E.BackhaulFailed(EID, now + 40.1, poll.request_id, "NetworkError", True, "refused"))
    assert results(out) == []
    out = eng.handle(E.BackhaulFailed(EID, now + 40.1, "no-such-request", "TransportTimeout", True, "timeout"))
    assert results(out) == []
    assert [d["state"] for d in eng.sessions[EID].deliveries.values()] == ["WAITING", "WAITING"]
    assert len(eng.sessions[EID].retries) == 2


def test_a_definitive_refusal_of_the_poll_proves_the_eim_is_back() -> None:
    eng, now = outage(1)
    poll = next_poll(eng, now + 40)
    out = eng.handle(E.BackhaulFailed(EID, now + 40.1, poll.request_id, "FunctionFailed", False, "8.1/3.8"))
    assert [tx_of(p) for p in results(out)] == [1]


def test_rearmed_deliveries_go_oldest_first_within_the_bound_and_each_ack_sends_the_next() -> None:
    eng, now = outage(5, rearm_in_flight=2)
    poll = next_poll(eng, now + 40)
    now += 40.1
    out = eng.handle(E.BackhaulAnswered(EID, now, poll.request_id, NO_PACKAGE))
    in_flight = results(out)
    assert [tx_of(p) for p in in_flight] == [1, 2]
    order = [tx_of(p) for p in in_flight]
    while in_flight:
        now += 0.1
        first, *rest = in_flight
        out = eng.handle(E.BackhaulAnswered(EID, now, first.request_id, ACCEPTED))
        more = results(out)
        in_flight = rest + more
        assert len(in_flight) <= 2
        assert sum(1 for r in eng.sessions[EID].requests.values() if r["owner"] == "delivery") <= 2
        order += [tx_of(p) for p in more]
    assert order == [1, 2, 3, 4, 5]                          # each once, oldest first
    assert eng.sessions[EID].deliveries == {} and eng.sessions[EID].retries == {}


def test_a_rearmed_delivery_is_never_sent_twice_while_its_attempt_is_in_flight() -> None:
    eng, now = outage(1)
    timer = next(iter(eng.sessions[EID].retries))
    poll = next_poll(eng, now + 40)
    (sent,) = results(eng.handle(E.BackhaulAnswered(EID, now + 40.1, poll.request_id, NO_PACKAGE)))
    assert results(eng.handle(E.TimerFired(EID, now + 3600, timer))) == []  # fired before its cancel landed
    (poll,) = posts(eng.handle(E.TimerFired(EID, now + 3700, "poll")))
    out = eng.handle(E.BackhaulAnswered(EID, now + 3700.1, poll.request_id, NO_PACKAGE))
    assert results(out) == []                                # another answer: `sent` is still awaited
    out = eng.handle(E.BackhaulAnswered(EID, now + 3700.2, sent.request_id, ACCEPTED))
    assert [a.operation for a in out if isinstance(a, A.Audit)] == ["deliverResult"]
    assert eng.sessions[EID].deliveries == {}


def test_a_transient_refusal_of_a_delivery_does_not_rearm_it_at_once() -> None:
    eng, now = outage(2)
    poll = next_poll(eng, now + 40)
    sent = results(eng.handle(E.BackhaulAnswered(EID, now + 40.1, poll.request_id, NO_PACKAGE)))
    out = eng.handle(E.BackhaulFailed(EID, now + 40.2, sent[0].request_id, "FunctionFailed", True, "busy"))
    assert results(out) == []                                # it waits on its timer again


def test_rearm_in_flight_zero_leaves_deliveries_to_their_timers_and_negative_is_refused() -> None:
    eng, now = outage(2, rearm_in_flight=0)
    poll = next_poll(eng, now + 40)
    assert results(eng.handle(E.BackhaulAnswered(EID, now + 40.1, poll.request_id, NO_PACKAGE))) == []
    with pytest.raises(ConfigError):
        EngineConfig(rearm_in_flight=-1)


def test_oldest_first_holds_after_a_restart_whose_blob_sorts_the_deliveries_by_key() -> None:
    eng = Engine(EngineConfig(eims=(EIM,), seed=3, poll_interval_s=POLL_EVERY))
    (poll,) = posts(eng.handle(E.DeviceHello(EID, 0.0, DeviceStatus(EID, plmn="26201"))))
    now, saved = 0.0, b""
    for n in (0x0300, 0x0002, 0x0100):         # keys that sort in another order than their age
        now += 0.1
        out = eng.handle(E.BackhaulAnswered(EID, now, poll.request_id, package(n)))
        for result in results(out):
            now += 0.1
            out = eng.handle(E.BackhaulFailed(EID, now, result.request_id, "NetworkError", True, "refused"))
        now = now + POLL_EVERY
        out = eng.handle(E.TimerFired(EID, now, "poll"))
        (poll,) = posts(out)
        saved = [a for a in out if isinstance(a, A.SaveSession)][-1].blob
    restarted = Engine(EngineConfig(eims=(EIM,), seed=3, poll_interval_s=POLL_EVERY, rearm_in_flight=1))
    restarted.restore(EID, saved)
    (poll,) = posts(restarted.resume(now))
    order: list[int] = []
    out = restarted.handle(E.BackhaulAnswered(EID, now + 1, poll.request_id, NO_PACKAGE))
    while sent := results(out):
        (one,) = sent
        order.append(tx_of(one))
        out = restarted.handle(E.BackhaulAnswered(EID, now + 1 + len(order), one.request_id, ACCEPTED))
    assert order == [0x0300, 0x0002, 0x0100]
