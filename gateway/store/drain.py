"""Outbox drainer: lease -> send -> ack/nack, behind a per-server circuit breaker.

One `OutboxDrainer` per server. `step(now)` does one round and says when the next one is
worth doing (`next_wakeup`); the service's loop sleeps until then or until something is
enqueued. The sending itself is injected (`send(entry) -> Outcome`), so this module knows
nothing of HTTP and a test can run a 24-hour outage through it with a simulated clock.

- The breaker (`gateway.core.retry.CircuitBreaker`, its state persisted in the store) decides
  whether to send at all: closed -> a full batch; open -> nothing until its wait is over;
  half-open -> exactly one entry as a probe.
- Outcomes: "delivered" -> ack; "retry" (or a retryable GatewayError) -> nack with backoff and a
  breaker failure; "rejected" (the server answered and refused it for good) -> ack plus an
  audit record, so a poison message is neither lost silently nor retried forever. Any other
  exception from `send` is a bug in the sender and propagates, after the batch's leases are
  released.
- Acks, nacks, audit records and the breaker state of one round commit in one transaction.
  A crash before that commit leaves the batch leased; the leases expire (or
  `release_leases()` at start-up) and the batch is sent again: at-least-once, and the server
  deduplicates by the idempotency key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from gateway.core.retry import BreakerPolicy, BreakerState, CircuitBreaker, CircuitOpen
from gateway.errors import GatewayError, is_retryable
from gateway.store.aio import AsyncStore
from gateway.store.outbox import OutboxEntry
from gateway.store.store import Store

Outcome = Literal["delivered", "retry", "rejected"]
SendFn = Callable[[OutboxEntry], Awaitable[Outcome]]


@dataclass(frozen=True, slots=True)
class DrainResult:
    delivered: int
    retried: int
    rejected: int
    breaker: BreakerState
    next_wakeup: float | None  # None: the outbox for this server is empty


class OutboxDrainer:
    def __init__(self, astore: AsyncStore, server: str, send: SendFn, *,
                 policy: BreakerPolicy = BreakerPolicy(), batch: int = 100,
                 concurrency: int = 16, lease_s: float = 60.0) -> None:
        self._astore = astore
        self.server = server
        self._send = send
        self._policy = policy
        self._batch = batch
        self._lease_s = lease_s
        self._semaphore = asyncio.Semaphore(concurrency)
        self._breaker: CircuitBreaker | None = None

    async def step(self, now: float) -> DrainResult:
        if self._breaker is None:
            self._breaker = await self._astore.run(lambda s: s.outbox.load_breaker(self.server, self._policy))
        b = self._breaker
        try:
            b.before_call(now)
        except CircuitOpen as exc:
            return DrainResult(0, 0, 0, b.state, exc.retry_at)
        probing = b.state is BreakerState.HALF_OPEN
        limit = 1 if probing else self._batch
        batch = await self._astore.run(
            lambda s: s.outbox.lease(self.server, now=now, limit=limit, lease_s=self._lease_s))
        if not batch:
            b.release()  # nothing to probe with: stay ready to probe
            return DrainResult(0, 0, 0, b.state, await self._next_due())
        try:
            outcomes = await asyncio.gather(*(self._attempt(e) for e in batch))
        except BaseException:
            b.release()
            await self._astore.run(lambda s: s.outbox.release([e.id for e in batch]))
            raise
        for outcome, _ in outcomes:
            # delivered or rejected: either way the server is up and answering
            b.record(now, failed=outcome == "retry")
        await self._astore.atomic(lambda s: self._settle(s, batch, outcomes, b, now))
        delivered = sum(o == "delivered" for o, _ in outcomes)
        rejected = sum(o == "rejected" for o, _ in outcomes)
        wakeup = now if b.state is BreakerState.CLOSED and len(batch) == limit else None
        if wakeup is None:
            wakeup = b.retry_at if b.state is BreakerState.OPEN else await self._next_due()
        return DrainResult(delivered, len(batch) - delivered - rejected, rejected, b.state, wakeup)

    async def _attempt(self, entry: OutboxEntry) -> tuple[Outcome, str | None]:
        """The outcome and, when `send` raised, the error text."""
        async with self._semaphore:
            try:
                return await self._send(entry), None
            except GatewayError as exc:
                return ("retry" if is_retryable(exc) else "rejected"), f"{type(exc).__name__}: {exc}"

    def _settle(self, s: Store, batch: list[OutboxEntry], outcomes: list[tuple[Outcome, str | None]],
                b: CircuitBreaker, now: float) -> None:
        s.outbox.ack([e.id for e, (o, _) in zip(batch, outcomes) if o != "retry"], now=now)
        for entry, (outcome, error) in zip(batch, outcomes):
            if outcome == "retry":
                s.outbox.nack(entry.id, now=now, error=error or "server asked to retry")
            elif outcome == "rejected":
                s.audit.append(time=now, eid=entry.eid, operation=entry.kind, result="rejected-by-server",
                               detail={"server": entry.server, "key": entry.key, "attempts": entry.attempts + 1,
                                       "error": error})
        s.outbox.save_breaker(b, now=now)

    async def _next_due(self) -> float | None:
        return await self._astore.run(lambda s: s.outbox.next_due(self.server))
