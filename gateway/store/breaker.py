"""Per-server circuit breaker, as pure functions over a frozen state and an injected time.

closed --(failure_threshold consecutive failures)--> open
open --(open_s elapsed: `allow()` lets ONE probe through)--> half_open
half_open --(probe succeeds)--> closed;  --(probe fails)--> open again, for twice as long
(up to max_open_s), so a server down for a day is probed a few dozen times, not thousands.

While open the outbox is not drained toward that server at all: entries keep their place and
their attempt counts, and nothing is lost. The state is persisted by `Outbox.save_breaker()` so
a restarted gateway does not hammer a server it already knew to be down.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

BreakerStateName = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    open_s: float = 30.0
    max_open_s: float = 1800.0


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: BreakerStateName = "closed"
    failures: int = 0
    opened_at: float | None = None
    open_s: float = 0.0


def allow(b: BreakerState, now: float) -> tuple[bool, BreakerState]:
    """May a request go to the server now? Moves open -> half_open when the wait is over."""
    if b.state == "closed":
        return True, b
    if b.state == "open":
        assert b.opened_at is not None
        if now >= b.opened_at + b.open_s:
            return True, replace(b, state="half_open")
        return False, b
    return False, b  # half_open: the one probe is still out


def retry_at(b: BreakerState) -> float | None:
    """When an open breaker lets the next probe through (None when not open)."""
    if b.state != "open":
        return None
    assert b.opened_at is not None
    return b.opened_at + b.open_s


def record_success(b: BreakerState) -> BreakerState:
    return BreakerState()


def record_failure(b: BreakerState, now: float, policy: BreakerPolicy) -> BreakerState:
    if b.state == "half_open":
        return BreakerState("open", b.failures + 1, now, min(policy.max_open_s, max(b.open_s, policy.open_s) * 2))
    failures = b.failures + 1
    if b.state == "closed" and failures >= policy.failure_threshold:
        return BreakerState("open", failures, now, policy.open_s)
    return replace(b, failures=failures)
