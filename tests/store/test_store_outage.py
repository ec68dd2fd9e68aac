"""A 24-hour eIM outage in simulated time: results pile up, the breaker keeps probing low,
and once the eIM is back every result arrives exactly once, oldest first."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from gateway.core.retry import BreakerPolicy
from gateway.errors import FunctionFailed, NetworkError
from gateway.store import AsyncStore, OutboxEntry
from gateway.store.drain import Outcome, OutboxDrainer

EIM = "eim.example.com"
HOUR = 3600.0


class FakeEim:
    """In-process stand-in for the eIM's ProvideEimPackageResult endpoint: no network needed
    for a test of timing and bookkeeping (the HTTP path is exercised by bench/queue.py)."""

    def __init__(self) -> None:
        self.up = False
        self.received: collections.Counter[str] = collections.Counter()
        self.order: list[str] = []
        self.calls_while_down = 0

    async def send(self, entry: OutboxEntry) -> Outcome:
        if not self.up:
            self.calls_while_down += 1
            raise NetworkError("connection refused")
        self.received[entry.key] += 1
        self.order.append(entry.key)
        return "delivered"


async def test_24_hour_outage_then_every_result_arrives_exactly_once(db_path: Path) -> None:
    eim = FakeEim()
    policy = BreakerPolicy(failure_threshold=3, reset_timeout_s=30.0, max_reset_timeout_s=1800.0)
    produced: list[str] = []
    async with await AsyncStore.open(db_path) as astore:
        drainer = OutboxDrainer(astore, EIM, eim.send, policy=policy, batch=50)
        now, wakeup = 0.0, 0.0
        n = 0
        while now < 26 * HOUR:
            if now < 24 * HOUR and now % 600 == 0:  # devices keep working: 3 results every 10 minutes
                for _ in range(3):
                    key = f"eim1/tx{n:05d}/result"
                    await astore.run(lambda s, k=key, t=now: s.outbox.enqueue(EIM, k, "ProvideEimPackageResult",
                                                                             k.encode(), now=t))
                    produced.append(key)
                    n += 1
                wakeup = min(wakeup, now)
            eim.up = now >= 24 * HOUR
            if now >= wakeup:
                result = await drainer.step(now)
                wakeup = result.next_wakeup if result.next_wakeup is not None else float("inf")
            now += 30.0
        usage = await astore.run(lambda s: s.outbox.usage())
    assert usage.entries == 0
    assert set(eim.received) == set(produced) and set(eim.received.values()) == {1}
    assert eim.order == produced  # oldest first
    # the breaker kept the dead server from being hammered: about one probe per 30 minutes
    assert eim.calls_while_down < 24 * 2 + 20, eim.calls_while_down


async def test_a_rejected_message_is_audited_and_not_retried(db_path: Path) -> None:
    async def send(entry: OutboxEntry) -> Outcome:
        if entry.key == "bad":
            raise FunctionFailed("eIM refused the result", subject_code="8.1", reason_code="3.8")
        return "delivered"

    async with await AsyncStore.open(db_path) as astore:
        for key in ("a", "bad", "c"):
            await astore.run(lambda s, k=key: s.outbox.enqueue(EIM, k, "ProvideEimPackageResult", b"x", now=0.0))
        result = await OutboxDrainer(astore, EIM, send).step(1.0)
        assert (result.delivered, result.rejected, result.retried, result.breaker) == (2, 1, 0, "closed")
        assert result.next_wakeup is None
        records = await astore.run(lambda s: s.audit.query(operation="ProvideEimPackageResult"))
        assert [r.result for r in records] == ["rejected-by-server"]
        assert records[0].detail["key"] == "bad" and "8.1/3.8" in records[0].detail["error"]


async def test_a_bug_in_the_sender_releases_the_leases(db_path: Path) -> None:
    async def send(entry: OutboxEntry) -> Outcome:
        raise KeyError("bug")

    async with await AsyncStore.open(db_path) as astore:
        await astore.run(lambda s: s.outbox.enqueue(EIM, "k", "r", b"x", now=0.0))
        with pytest.raises(KeyError):
            await OutboxDrainer(astore, EIM, send).step(1.0)
        leased = await astore.run(lambda s: s.outbox.lease(EIM, now=2.0))
        assert [e.key for e in leased] == ["k"]
