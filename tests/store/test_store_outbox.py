from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.retry import BackoffPolicy, BreakerPolicy, BreakerState, CircuitBreaker, CircuitOpen
from gateway.core.actions import Waiting
from gateway.store import IdempotencyConflict, OutboxFull, OutboxLimits, Store, StoreOptions

EIM = "eim.example.com"
DP = "smdp.example.com"


def test_enqueue_same_key_twice_is_one_entry_also_after_ack(store: Store) -> None:
    a = store.outbox.enqueue(EIM, "eim1/tx1/result", "ProvideEimPackageResult", b"r1", now=1.0)
    b = store.outbox.enqueue(EIM, "eim1/tx1/result", "ProvideEimPackageResult", b"r1", now=2.0)
    assert a.new and not b.new and a.id == b.id
    store.outbox.ack([e.id for e in store.outbox.lease(EIM, now=3.0)], now=3.0)
    c = store.outbox.enqueue(EIM, "eim1/tx1/result", "ProvideEimPackageResult", b"r1", now=4.0)
    assert not c.new and store.outbox.is_acked(EIM, "eim1/tx1/result")
    assert store.outbox.lease(EIM, now=5.0) == []
    store.outbox.enqueue(EIM, "k2", "x", b"a", now=1.0)
    with pytest.raises(IdempotencyConflict):
        store.outbox.enqueue(EIM, "k2", "x", b"b", now=1.0)


def test_drains_oldest_first_per_server(store: Store) -> None:
    for i in range(10):
        store.outbox.enqueue(EIM if i % 2 else DP, f"k{i}", "n", bytes([i]), now=float(i))
    first = store.outbox.lease(EIM, now=100.0, limit=3)
    second = store.outbox.lease(EIM, now=100.0, limit=3)
    assert [e.key for e in first] == ["k1", "k3", "k5"]
    assert [e.key for e in second] == ["k7", "k9"]  # leased entries are not handed out twice
    assert [e.key for e in store.outbox.lease(DP, now=100.0)] == ["k0", "k2", "k4", "k6", "k8"]


def test_crash_between_send_and_ack_resends_after_lease_expiry(db_path: Path) -> None:
    with Store.open(db_path) as s:
        s.outbox.enqueue(EIM, "k", "n", b"payload", now=0.0)
        sent = s.outbox.lease(EIM, now=10.0, lease_s=30.0)
        assert [e.key for e in sent] == ["k"]
        # process dies here: the eIM got the message, the ack never reached the disk
    with Store.open(db_path) as s:
        assert s.outbox.lease(EIM, now=20.0) == []  # the lease still holds
        again = s.outbox.lease(EIM, now=40.0)
        assert [(e.key, e.payload) for e in again] == [("k", b"payload")]
        s.outbox.ack([again[0].id], now=41.0)
        assert s.outbox.usage().entries == 0


def test_release_leases_at_startup_makes_entries_due_at_once(db_path: Path) -> None:
    with Store.open(db_path) as s:
        s.outbox.enqueue(EIM, "k", "n", b"x", now=0.0)
        s.outbox.lease(EIM, now=1.0, lease_s=3600.0)
    with Store.open(db_path) as s:
        assert s.outbox.release_leases() == 1
        assert [e.key for e in s.outbox.lease(EIM, now=2.0)] == ["k"]


def test_nack_backs_off_with_full_jitter_and_counts_attempts(store: Store) -> None:
    policy = store.outbox.backoff
    entry = store.outbox.enqueue(EIM, "k", "n", b"x", now=0.0)
    now = 0.0
    for attempt in range(1, 8):
        leased = store.outbox.lease(EIM, now=now)
        assert [e.id for e in leased] == [entry.id] and leased[0].attempts == attempt - 1
        at = store.outbox.nack(entry.id, now=now, error="HTTP 503")
        assert at is not None
        ceiling = min(policy.cap_s, policy.base_s * 2 ** (attempt - 1))
        assert now <= at < now + ceiling  # full jitter: anywhere below the doubling ceiling
        assert store.outbox.lease(EIM, now=at - 0.001) == []
        assert store.outbox.next_due(EIM) == at
        now = at
    assert store.outbox.pending(EIM)[0].last_error == "HTTP 503"


def test_nack_delay_is_the_core_backoff_drawn_from_the_store_rng(db_path: Path) -> None:
    p = BackoffPolicy(base_s=1.0, cap_s=60.0)
    expected, rng = [], random.Random(3)
    for attempt in range(1, 101):
        expected.append(p.delay(attempt - 1, rng.random))
    delays = []
    with Store.open(db_path, StoreOptions(backoff=p), rng=random.Random(3)) as s:
        entry = s.outbox.enqueue(EIM, "k", "n", b"x", now=0.0)
        now = 0.0
        for _ in range(100):
            s.outbox.lease(EIM, now=now)
            at = s.outbox.nack(entry.id, now=now, error="HTTP 503")
            assert at is not None
            delays.append(at - now)
            now = at
    assert delays == pytest.approx(expected)  # same seed, same retry schedule: a replayable outage
    assert max(delays) < 60.0 and max(delays[10:]) > 30.0  # capped, and the cap is reached
    assert StoreOptions().backoff == BackoffPolicy(base_s=2.0, cap_s=900.0)


def test_bound_alarms_before_full_and_full_loses_nothing(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    limits = OutboxLimits(max_entries=10, max_bytes=10_000, alarm_ratio=0.8)
    with Store.open(db_path, StoreOptions(outbox_limits=limits)) as s:
        levels = [s.outbox.enqueue(EIM, f"k{i}", "n", b"x" * 10, now=float(i)).level for i in range(10)]
        assert levels == ["ok"] * 7 + ["alarm", "alarm", "full"]
        assert "outbox above its alarm level: 8 entries" in caplog.text and "alarm at 80%" in caplog.text
        assert "outbox FULL, new work refused: 10 entries" in caplog.text
        with pytest.raises(OutboxFull) as info:
            s.outbox.enqueue(EIM, "k10", "n", b"x", now=11.0)
        assert info.value.retryable and info.value.entries == 10
        # a duplicate of something already stored is still recognised while full
        assert not s.outbox.enqueue(EIM, "k3", "n", b"x" * 10, now=12.0).new
        s.outbox.ack([e.id for e in s.outbox.lease(EIM, now=20.0, limit=1)], now=20.0)
        assert s.outbox.enqueue(EIM, "k10", "n", b"x", now=21.0).new
    with Store.open(db_path, StoreOptions(outbox_limits=limits)) as s:
        assert [e.key for e in s.outbox.pending()] == [f"k{i}" for i in range(1, 11)]


def test_byte_bound_counts_payload_sizes(db_path: Path) -> None:
    limits = OutboxLimits(max_entries=1000, max_bytes=100)
    with Store.open(db_path, StoreOptions(outbox_limits=limits)) as s:
        s.outbox.enqueue(EIM, "a", "n", b"x" * 60, now=0.0)
        with pytest.raises(OutboxFull):
            s.outbox.enqueue(EIM, "b", "n", b"x" * 41, now=0.0)
        s.outbox.enqueue(EIM, "b", "n", b"x" * 40, now=0.0)
        assert (s.outbox.usage().entries, s.outbox.usage().payload_bytes, s.outbox.usage().level) == (2, 100, "full")


def test_purge_acked_forgets_tombstones_only(store: Store) -> None:
    store.outbox.enqueue(EIM, "a", "n", b"1", now=0.0)
    store.outbox.enqueue(EIM, "b", "n", b"2", now=0.0)
    store.outbox.ack([store.outbox.lease(EIM, now=1.0, limit=1)[0].id], now=1.0)
    assert store.outbox.purge_acked(older_than=2.0) == 1
    assert [e.key for e in store.outbox.pending()] == ["b"]
    assert store.outbox.enqueue(EIM, "a", "n", b"1", now=3.0).new


def test_breaker_keeps_its_schedule_across_save_and_load(db_path: Path) -> None:
    policy = BreakerPolicy(failure_threshold=3, reset_timeout_s=10.0, max_reset_timeout_s=35.0)
    with Store.open(db_path) as s:
        def reload(b: CircuitBreaker, now: float) -> CircuitBreaker:
            s.outbox.save_breaker(b, now=now)
            return s.outbox.load_breaker(EIM, policy)

        b = s.outbox.load_breaker(EIM, policy)
        for t in range(3):
            b.before_call(float(t))
            b.record(float(t), failed=True)
            b = reload(b, float(t))
        assert b.state is BreakerState.OPEN and b.retry_at == 12.0
        with pytest.raises(CircuitOpen):
            b.before_call(11.9)
        b.before_call(12.0)
        assert b.state is BreakerState.HALF_OPEN
        with pytest.raises(CircuitOpen):
            b.before_call(12.5)  # one probe at a time
        b.record(13.0, failed=True)
        b = reload(b, 13.0)
        assert (b.state, b.open_for_s) == (BreakerState.OPEN, 20.0)
        b.before_call(33.0)
        b.record(33.0, failed=True)
        b = reload(b, 33.0)
        assert b.open_for_s == 35.0  # capped
        b.before_call(68.0)
        b.record(68.0, failed=False)
        b = reload(b, 68.0)
        assert (b.state, b.consecutive_failures, b.open_for_s) == (BreakerState.CLOSED, 0, 0.0)


def test_breaker_state_survives_restart_and_a_lost_probe_reopens(db_path: Path) -> None:
    policy = BreakerPolicy(failure_threshold=5, reset_timeout_s=30.0)
    with Store.open(db_path) as s:
        for server in (EIM, DP):
            b = policy.breaker(server)
            for _ in range(5):
                b.record(100.0, failed=True)
            if server == EIM:
                b.before_call(130.0)  # a probe goes out, and the process stops before it returns
                assert b.state is BreakerState.HALF_OPEN
            s.outbox.save_breaker(b, now=130.0)
    with Store.open(db_path) as s:
        b = s.outbox.load_breaker(EIM, policy)
        assert (b.state, b.consecutive_failures, b.opened_at, b.open_for_s) == (BreakerState.OPEN, 5, 100.0, 30.0)
        b.before_call(130.0)  # its wait is over: it probes again at once
        assert s.outbox.load_breaker(DP).state == "open"
        assert s.outbox.load_breaker("other", policy) == policy.breaker("other")


def test_the_engines_waiting_deliveries_count_in_the_same_bound_as_outbox_entries(db_path: Path) -> None:
    """One accounting: a delivery the engine holds (BackhaulWaiting) takes room in the outbox
    bound like an entry of its own, and leaves it when acknowledged; a row keeps its age."""
    limits = OutboxLimits(max_entries=4, max_bytes=10_000, alarm_ratio=0.5)
    eid = bytes.fromhex("89049032123451234512345678901235")
    result = Waiting("rk1", "result", "eim1", "ProvideEimPackageResult", 300, "WAITING", 2, 500.0)
    note = Waiting("n7", "notification", "smdp.example", "handleNotification", 200, "SENDING", 0, None)
    with Store.open(db_path, StoreOptions(outbox_limits=limits)) as s:
        s.outbox.enqueue("webhook x", "e1", "webhook:alarm", b"x" * 10, now=1.0)
        with s.transaction():
            s.deliveries.replace(eid, [result, note], now=2.0)
        usage = s.outbox.usage()
        assert (usage.entries, usage.payload_bytes, usage.level) == (3, 510, "alarm")
        s.deliveries.replace(eid, [result, note], now=3.0)
        assert s.outbox.usage().entries == 3       # the same set again changes nothing
        s.outbox.enqueue("webhook x", "e2", "webhook:alarm", b"x", now=4.0)
        with pytest.raises(OutboxFull):
            s.outbox.enqueue("webhook x", "e3", "webhook:alarm", b"x", now=5.0)
        s.deliveries.replace(eid, [dataclasses.replace(result, size=100, attempts=3)], now=6.0)   # n7 acked
        assert (s.outbox.usage().entries, s.outbox.usage().payload_bytes) == (3, 111)
        waiting = s.deliveries.list()
        assert [(d.idempotency_key, d.attempts, d.created_at) for d in waiting] == [(f"{eid.hex()}/rk1", 3, 2.0)]
    with Store.open(db_path, StoreOptions(outbox_limits=limits)) as s:
        s.deliveries.replace(eid, [], now=7.0)
        assert (s.outbox.usage().entries, s.outbox.usage().payload_bytes) == (2, 11)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 3)), max_size=6), min_size=1, max_size=6))
def test_writing_only_the_change_from_the_previous_set_leaves_what_a_full_replace_leaves(
        tmp_path_factory: pytest.TempPathFactory, steps: list[list[tuple[str, int]]]) -> None:
    eid = bytes.fromhex("89049032123451234512345678901235")
    folder = tmp_path_factory.mktemp("delta")

    def as_set(step: list[tuple[str, int]]) -> list[Waiting]:
        unique = dict(step)
        return [Waiting(k, "result", "eim1", "ProvideEimPackageResult", 100 + n, "SENDING", n, None)
                for k, n in unique.items()]

    with Store.open(folder / "delta.db") as delta, Store.open(folder / "full.db") as full:
        previous: list[Waiting] = []
        for now, step in enumerate(steps, start=1):
            waiting = as_set(step)
            delta.deliveries.replace(eid, waiting, now=float(now), previous=previous)
            full.deliveries.replace(eid, waiting, now=float(now))
            previous = waiting
            assert delta.deliveries.list() == full.deliveries.list()
            assert delta.outbox.usage() == full.outbox.usage()
