"""Hypothesis drives the outbox and inbox through random operations, restarts included, and
checks them against a plain-Python model: no entry lost or duplicated, oldest due first,
usage totals exact, backoff within its bounds."""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gateway.store import Store, StoreOptions

SERVERS = ("eim-a", "eim-b")
EIDS = (b"\x89" + b"\x01" * 15, b"\x89" + b"\x02" * 15)
LEASE_S = 30.0


class OutboxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-prop-"))
        self.path = self.dir / "gateway.db"
        self.store = Store.open(self.path, rng=random.Random(0))
        self.now = 1000.0
        self.order: list[tuple[str, str]] = []          # (server, key) in enqueue order, pending or acked
        self.acked: set[tuple[str, str]] = set()
        self.due: dict[tuple[str, str], float] = {}
        self.leased: dict[tuple[str, str], float] = {}   # -> lease_until
        self.attempts: dict[tuple[str, str], int] = {}
        self.ids: dict[int, tuple[str, str]] = {}
        self.inbox: dict[tuple[bytes, str], str] = {}    # -> state

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir)

    def _pending(self, server: str | None = None) -> list[tuple[str, str]]:
        return [k for k in self.order if k not in self.acked and (server is None or k[0] == server)]

    @rule(server=st.sampled_from(SERVERS), n=st.integers(0, 12))
    def enqueue(self, server: str, n: int) -> None:
        key = (server, f"k{n}")
        result = self.store.outbox.enqueue(server, key[1], "r", key[1].encode(), now=self.now)
        assert result.new == (key not in self.order)
        if result.new:
            self.order.append(key)
            self.ids[result.id] = key
            self.due[key] = self.now
            self.attempts[key] = 0

    @rule(server=st.sampled_from(SERVERS), limit=st.integers(1, 5))
    def lease(self, server: str, limit: int) -> None:
        got = self.store.outbox.lease(server, now=self.now, limit=limit, lease_s=LEASE_S)
        expected = [k for k in self._pending(server)
                    if self.due[k] <= self.now and self.leased.get(k, -1.0) <= self.now][:limit]
        assert [(e.server, e.key) for e in got] == expected
        for e in got:
            assert e.attempts == self.attempts[(e.server, e.key)] and e.payload == e.key.encode()
            self.leased[(e.server, e.key)] = self.now + LEASE_S

    def _live_leases(self) -> list[int]:
        return [i for i, k in self.ids.items() if k not in self.acked and self.leased.get(k, -1.0) > self.now]

    @precondition(lambda self: bool(self._live_leases()))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(self._live_leases()), min_size=1, unique=True))
        assert self.store.outbox.ack(ids, now=self.now) == len(ids)
        self.acked.update(self.ids[i] for i in ids)

    @precondition(lambda self: bool(self._live_leases()))
    @rule(data=st.data())
    def nack(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self._live_leases()))
        key = self.ids[i]
        at = self.store.outbox.nack(i, now=self.now, error="503")
        self.attempts[key] += 1
        policy = self.store.outbox.backoff
        ceiling = min(policy.cap_s, policy.base_s * 2 ** (self.attempts[key] - 1))
        assert at is not None and self.now <= at < self.now + ceiling
        self.due[key] = at
        self.leased.pop(key, None)

    @rule(dt=st.floats(0.0, 120.0))
    def advance_clock(self, dt: float) -> None:
        self.now += dt

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = Store.open(self.path, StoreOptions(), rng=random.Random(1))

    @rule()
    def restart_after_crash(self) -> None:
        self.store.close()
        self.store = Store.open(self.path, StoreOptions(), rng=random.Random(2))
        self.store.outbox.release_leases()
        self.leased.clear()

    @rule(eid=st.sampled_from(EIDS), n=st.integers(0, 6))
    def inbox_enqueue(self, eid: bytes, n: int) -> None:
        r = self.store.inbox.enqueue(eid, f"p{n}", "pkg", bytes([n]), origin=None, now=self.now)
        assert r.new == ((eid, f"p{n}") not in self.inbox)
        self.inbox.setdefault((eid, f"p{n}"), "queued")

    @rule(eid=st.sampled_from(EIDS), finish=st.booleans())
    def inbox_work(self, eid: bytes, finish: bool) -> None:
        entry = self.store.inbox.next_for(eid)
        open_keys = [k for (e, k), s in self.inbox.items() if e == eid and s != "done"]
        if entry is None:
            assert open_keys == []
            return
        in_progress = [k for (e, k), s in self.inbox.items() if e == eid and s == "in_progress"]
        assert entry.key in (in_progress or open_keys)
        if finish:
            self.store.inbox.finish(entry.id, now=self.now)
            self.inbox[(eid, entry.key)] = "done"
        else:
            self.store.inbox.start(entry.id, now=self.now)
            self.inbox[(eid, entry.key)] = "in_progress"

    @invariant()
    def nothing_lost_nothing_duplicated(self) -> None:
        pending = [(e.server, e.key) for e in self.store.outbox.pending()]
        assert pending == self._pending()
        usage = self.store.outbox.usage()
        assert (usage.entries, usage.payload_bytes) == (len(pending), sum(len(k[1]) for k in pending))
        for eid in EIDS:
            stored = {e.key: e.state for e in self.store.inbox.pending(eid)}
            assert stored == {k: s for (e, k), s in self.inbox.items() if e == eid and s != "done"}


OutboxMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
TestOutboxAndInboxAgainstModel = OutboxMachine.TestCase
