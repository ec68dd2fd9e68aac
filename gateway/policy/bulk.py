"""Group operations: one operator action applied to every device of a group, with progress.

Theory of operation. The management API and the CLI name a group of `[policies.groups]`;
`GroupOperations` resolves its members from the registry (gateway.policy.groups) and runs
the action device by device, at most `concurrency` at a time, reporting a `Progress` after
each device (the API streams these as JSON lines, the CLI draws them). A device that fails
does not stop the others; its error is in the final report. The actions:

- retry_failed:  the engine's "retry" operator action (failed deliveries sent again);
- reread_eim:    the engine's "reread-eim" (GetEimConfigurationData at the next wake-up);
- quarantine / release: the IMEI policy's operator decisions (gateway.policy.imei), applied
  by the runtime like any other decisions (store, alarms, audit, webhooks);
- export_audit:  the audit records of the group's devices as JSON lines, oldest first per device.

Whatever acts on the engine or the store goes through the `GroupBackend` the runtime
implements, so this module holds no engine or store logic of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from gateway.config.policies import GroupSection
from gateway.errors import GatewayError
from gateway.policy import imei
from gateway.policy.decisions import PolicyDecision
from gateway.policy.groups import DeviceFacts, members
from gateway.store import AsyncStore, AuditRecord, Store

OPERATOR_RETRY = "retry"            # gateway.core.events.OPERATOR_RETRY
OPERATOR_REREAD_EIM = "reread-eim"  # gateway.core.events.OPERATOR_REREAD_EIM


class GroupBackend(Protocol):
    async def operator(self, eid: bytes, kind: str, args: Iterable[tuple[str, str]] = ()) -> None: ...

    async def apply_decisions(self, eid: bytes | None, decisions: list[PolicyDecision], now: float) -> None: ...


@dataclass(slots=True)
class Progress:
    operation: str
    group: str
    total: int
    done: int = 0
    failed: int = 0
    current: str | None = None
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.done + self.failed == self.total

    def to_json(self) -> dict[str, object]:
        return {"operation": self.operation, "group": self.group, "total": self.total, "done": self.done,
                "failed": self.failed, "current": self.current, "finished": self.finished,
                "errors": [{"eid": e, "error": m} for e, m in self.errors]}


ProgressFn = Callable[[Progress], None]


def facts_from_store(store: Store) -> list[DeviceFacts]:
    """Every registered device with its tags (site:/model: tags give site and model)."""
    return [DeviceFacts.from_tags(d.eid, d.tags) for d in store.devices.list()]


class GroupOperations:
    def __init__(self, backend: GroupBackend, astore: AsyncStore, groups: Callable[[], Mapping[str, GroupSection]],
                 *, clock: Callable[[], float] = time.time, concurrency: int = 8) -> None:
        self._backend = backend
        self._astore = astore
        self._groups = groups
        self._clock = clock
        self._concurrency = concurrency

    async def members(self, group: str) -> list[bytes]:
        facts = await self._astore.run(facts_from_store)
        return members(self._groups(), group, facts)

    async def retry_failed(self, group: str, progress: ProgressFn | None = None) -> Progress:
        return await self._each(group, "retry-failed", progress,
                                lambda eid: self._backend.operator(eid, OPERATOR_RETRY, (("origin", f"group:{group}"),)))

    async def reread_eim(self, group: str, progress: ProgressFn | None = None) -> Progress:
        return await self._each(group, "reread-eim", progress,
                                lambda eid: self._backend.operator(eid, OPERATOR_REREAD_EIM,
                                                                   (("origin", f"group:{group}"),)))

    async def quarantine(self, group: str, reason: str, progress: ProgressFn | None = None,
                         operator: str = "operator") -> Progress:
        async def one(eid: bytes) -> None:
            now = self._clock()
            await self._backend.apply_decisions(
                eid, imei.quarantine(eid, reason=reason, now=now, operator=operator), now)
        return await self._each(group, "quarantine", progress, one)

    async def release(self, group: str, progress: ProgressFn | None = None, *, keep_binding: bool = True,
                      operator: str = "operator") -> Progress:
        async def one(eid: bytes) -> None:
            now = self._clock()
            decisions = imei.release(eid, rebind=None, keep_binding=keep_binding, now=now, operator=operator)
            await self._backend.apply_decisions(eid, decisions, now)
        return await self._each(group, "release", progress, one)

    async def export_audit(self, group: str, out: TextIO, progress: ProgressFn | None = None, *,
                           since: float | None = None, until: float | None = None) -> Progress:
        async def one(eid: bytes) -> None:
            records: list[AuditRecord] = await self._astore.run(
                lambda s: s.audit.query(eid=eid, since=since, until=until))
            for record in records:
                out.write(json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")) + "\n")
        return await self._each(group, "export-audit", progress, one, concurrency=1)

    async def _each(self, group: str, operation: str, progress: ProgressFn | None,
                    action: Callable[[bytes], Awaitable[None]], *, concurrency: int | None = None) -> Progress:
        eids = await self.members(group)
        report = Progress(operation, group, len(eids))
        if progress is not None:
            progress(report)
        semaphore = asyncio.Semaphore(concurrency or self._concurrency)

        async def run(eid: bytes) -> None:
            async with semaphore:
                report.current = eid.hex()
                try:
                    await action(eid)
                    report.done += 1
                except GatewayError as exc:
                    report.failed += 1
                    report.errors.append((eid.hex(), f"{type(exc).__name__}: {exc}"))
                if progress is not None:
                    progress(report)

        if concurrency == 1:
            for eid in eids:
                await run(eid)
        else:
            await asyncio.gather(*(run(eid) for eid in eids))
        report.current = None
        return report
