"""Group operations over a real SQLite registry, with progress reports.

The runtime side (`GroupBackend`) is a small stand-in here because the runtime is not wired
to the policies yet: `operator` records the engine operator actions it would feed, and
`apply_decisions` applies the store decisions exactly as gateway/policy/__init__.py tells the
runtime to (registry flags, IMEI binding, audit records).
"""

from __future__ import annotations

import io
import json
import types
from collections.abc import Iterable

import pytest

from gateway.config.policies import GroupSection
from gateway.errors import UnknownDevice
from gateway.policy import AuditPolicy, BindImei, PolicyDecision, SetQuarantine
from gateway.policy.alarms import QUEUE_ALARM_KEY, AlarmBook
from gateway.policy.bulk import GroupOperations, Progress
from gateway.store import AsyncStore, Store

GROUPS = types.MappingProxyType({
    "meters": GroupSection(tags=("water-meter",)),
    "plant": GroupSection(sites=("plant-3",)),
})


def eid(n: int) -> bytes:
    return bytes.fromhex(f"89049032{n:024d}")


class Backend:
    def __init__(self, astore: AsyncStore, missing: set[bytes] = frozenset()) -> None:  # type: ignore[assignment]
        self.astore = astore
        self.operator_calls: list[tuple[bytes, str]] = []
        self.missing = missing

    async def operator(self, eid: bytes, kind: str, args: Iterable[tuple[str, str]] = ()) -> None:
        if eid in self.missing:
            raise UnknownDevice(f"EID {eid.hex()} is not registered")
        self.operator_calls.append((eid, kind))

    async def apply_decisions(self, eid: bytes | None, decisions: list[PolicyDecision], now: float) -> None:
        def apply(s: Store) -> None:
            for d in decisions:
                if isinstance(d, SetQuarantine):
                    s.devices.set_quarantine(d.eid, d.quarantined, reason=d.reason, now=now)
                elif isinstance(d, BindImei):
                    s.devices.bind_imei(d.eid, d.imei, now=now)
                elif isinstance(d, AuditPolicy):
                    s.audit.append(time=now, eid=d.eid, operation=d.operation, result=d.result, detail=dict(d.detail))
        await self.astore.atomic(apply)


@pytest.fixture
async def fleet(astore: AsyncStore) -> AsyncStore:
    def register(s: Store) -> None:
        for i in range(6):
            tags = ["water-meter"] if i < 4 else ["pump", "site:plant-3"]
            s.devices.register(eid(i), "coap", f"dev-{i}", now=1.0, tags=tags)
            s.audit.append(time=10.0 + i, eid=eid(i), operation="EnableProfile", result="ok")
    await astore.atomic(register)
    return astore


async def test_retry_failed_and_reread_eim_reach_every_member_with_progress(fleet: AsyncStore) -> None:
    backend = Backend(fleet)
    ops = GroupOperations(backend, fleet, lambda: GROUPS, clock=lambda: 100.0, concurrency=2)
    seen: list[dict[str, object]] = []
    report = await ops.retry_failed("meters", lambda p: seen.append(p.to_json()))
    assert (report.total, report.done, report.failed) == (4, 4, 0)
    assert sorted(backend.operator_calls) == sorted((eid(i), "retry") for i in range(4))
    assert seen[0]["done"] == 0 and seen[-1]["finished"] is True and len(seen) == 5
    await ops.reread_eim("plant")
    assert sorted(c for c in backend.operator_calls if c[1] == "reread-eim") == [(eid(4), "reread-eim"),
                                                                                 (eid(5), "reread-eim")]


async def test_a_failing_device_is_reported_and_does_not_stop_the_others(fleet: AsyncStore) -> None:
    backend = Backend(fleet, missing={eid(1)})
    report = await GroupOperations(backend, fleet, lambda: GROUPS).retry_failed("meters")
    assert (report.done, report.failed) == (3, 1)
    assert report.errors[0][0] == eid(1).hex() and "UnknownDevice" in report.errors[0][1]


async def test_group_quarantine_and_release_change_the_registry_and_audit(fleet: AsyncStore) -> None:
    backend = Backend(fleet)
    ops = GroupOperations(backend, fleet, lambda: GROUPS, clock=lambda: 200.0)
    await ops.quarantine("plant", "site audit", operator="bob")
    rows = await fleet.run(lambda s: [s.devices.require(eid(i)) for i in range(6)])
    assert [r.quarantined for r in rows] == [False] * 4 + [True] * 2
    assert rows[4].quarantine_reason == "bob: site audit"
    report: Progress = await ops.release("plant")
    assert report.done == 2
    rows = await fleet.run(lambda s: [s.devices.require(eid(i)) for i in (4, 5)])
    assert not any(r.quarantined for r in rows)
    ops_audit = await fleet.run(lambda s: [r.operation for r in s.audit.query(eid=eid(4))])
    assert ops_audit == ["EnableProfile", "quarantine", "release"]


async def test_export_audit_writes_the_members_records_as_json_lines(fleet: AsyncStore) -> None:
    out = io.StringIO()
    report = await GroupOperations(Backend(fleet), fleet, lambda: GROUPS).export_audit("plant", out, since=0.0)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert report.done == 2 and [line["eid"] for line in lines] == [eid(4).hex(), eid(5).hex()]
    assert lines[0]["operation"] == "EnableProfile"


def test_queue_alarm_is_raised_once_per_level_and_cleared_once() -> None:
    book = AlarmBook()
    raised = book.queue_level("alarm", 900, 10, 1.0)
    for d in raised:
        book.apply(d, 1.0)
    assert QUEUE_ALARM_KEY in book.active and book.queue_level("alarm", 950, 10, 1.5) == []
    for d in book.queue_level("full", 1000, 10, 2.0):     # the same alarm, now critical
        book.apply(d, 2.0)
    assert book.active[QUEUE_ALARM_KEY].alarm.severity == "critical" and book.queue_level("full", 1001, 10, 2.5) == []
    cleared = book.queue_level("ok", 10, 10, 3.0)
    for d in cleared:
        book.apply(d, 3.0)
    assert book.active == {} and book.queue_level("ok", 0, 0, 4.0) == []
