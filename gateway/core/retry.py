"""Retry timing and per-server circuit breaking, computed from injected time (no I/O).

Theory of operation. *Whether* a failed operation may be retried is decided only by
`gateway.errors.is_retryable`; this module decides *when*.

- `BackoffPolicy` computes capped exponential backoff with jitter: the n-th retry (n from
  0) has the ceiling ``w = min(cap, base * multiplier**n)`` and waits a uniformly random time
  in ``[(1 - jitter_ratio) * w, w)``; jitter_ratio 1 (the default) is full jitter,
  ``[0, w)``, 0 is no jitter. The random source is injected (a callable returning a float in
  [0, 1)), so tests are deterministic and many devices retrying after one outage spread
  their retries instead of synchronising. A server's Retry-After, when it gave one, is a
  floor on the wait (itself capped). The daemon builds its policies from
  ``[northbound.retry]`` (gateway.core.config.northbound_backoffs).
- `CircuitBreaker` tracks one server's reachability: after `failure_threshold`
  consecutive retryable failures it opens and every call is refused at once
  (`CircuitOpen`, itself retryable) until `reset_timeout_s` has passed; then it lets
  `half_open_max_calls` probes through (half-open). A probe that succeeds closes the
  circuit; one that fails opens it again for twice as long (up to `max_reset_timeout_s`),
  so a server down for a day is probed a few dozen times, not thousands. Definitive errors (a refusal the server made
  on purpose) prove the server is reachable and count as success. `BreakerPolicy` holds the
  settings of one breaker per server; the outbox (gateway.store) persists a breaker's state
  so a restarted gateway does not hammer a server it already knew to be down.

Time is a float of seconds from any monotonic origin, passed in by the caller (principle 5
of DESIGN.md), so a 24-hour outage is simulated by passing larger numbers.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import TransportError, is_retryable


class CircuitOpen(TransportError):
    """The server's circuit is open: the call was not attempted. Retry after `retry_at`."""

    def __init__(self, server: str, retry_at: float) -> None:
        self.server = server
        self.retry_at = retry_at
        super().__init__(f"circuit open for {server}; next probe at t={retry_at:.3f}")


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    base_s: float = 1.0
    cap_s: float = 3600.0
    max_attempts: int | None = None  # retries allowed; None = retry for ever (notifications)
    multiplier: float = 2.0
    jitter_ratio: float = 1.0        # 1: full jitter, [0, w); 0: exactly w

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and math.isfinite(self.base_s)):
            raise ValueError("base_s must be a positive finite number")
        if not (self.cap_s >= self.base_s and math.isfinite(self.cap_s)):
            raise ValueError("cap_s must be finite and >= base_s")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError("max_attempts must be >= 0")
        if not (self.multiplier >= 1.0 and math.isfinite(self.multiplier)):
            raise ValueError("multiplier must be a finite number >= 1")
        if not 0.0 <= self.jitter_ratio <= 1.0:
            raise ValueError("jitter_ratio must be in [0, 1]")

    def ceiling(self, attempt: int) -> float:
        """Upper bound of the wait before retry number `attempt` (0-based): min(cap, base*m^n)."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        if self.multiplier == 1.0:
            return self.base_s
        # base * m**n reaches the cap once n >= log_m(cap/base); beyond that m**n could overflow.
        if attempt >= math.log(self.cap_s / self.base_s, self.multiplier):
            return self.cap_s
        return min(self.cap_s, self.base_s * self.multiplier ** attempt)

    def delay(self, attempt: int, rand: Callable[[], float]) -> float:
        """Uniform in [(1 - jitter_ratio) * w, w), w = ceiling(attempt). `rand()` returns a float
        in [0, 1)."""
        r = rand()
        if not 0.0 <= r < 1.0:
            raise ValueError(f"random source returned {r!r}, outside [0, 1)")
        return self.ceiling(attempt) * (1.0 - self.jitter_ratio + self.jitter_ratio * r)

    def wait(self, attempt: int, rand: Callable[[], float], retry_after_s: float | None = None) -> float:
        """The wait before retry number `attempt`: `delay`, with the server's Retry-After as a
        floor (itself capped)."""
        wait = self.delay(attempt, rand)
        if retry_after_s is not None and retry_after_s > wait:
            wait = min(retry_after_s, self.cap_s)
        return wait

    def next_attempt_at(self, exc: BaseException, attempt: int, now: float,
                        rand: Callable[[], float], retry_after_s: float | None = None) -> float | None:
        """When to retry after `exc` on retry number `attempt`, or None to give up."""
        if not is_retryable(exc):
            return None
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return None
        wait = self.wait(attempt, rand, retry_after_s)
        if isinstance(exc, CircuitOpen):
            return max(now + wait, exc.retry_at)
        return now + wait


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """The settings of a `CircuitBreaker`, for code that keeps one breaker per server."""

    failure_threshold: int = 5
    reset_timeout_s: float = 30.0
    max_reset_timeout_s: float = 1800.0
    half_open_max_calls: int = 1

    def __post_init__(self) -> None:
        self.breaker("")  # the breaker's own checks, at configuration time

    def breaker(self, server: str) -> CircuitBreaker:
        return CircuitBreaker(server, self.failure_threshold, self.reset_timeout_s,
                              self.max_reset_timeout_s, self.half_open_max_calls)


@dataclass(slots=True)
class CircuitBreaker:
    """One server's breaker. Mutable; every method takes the current time."""

    server: str
    failure_threshold: int = 5
    reset_timeout_s: float = 30.0
    max_reset_timeout_s: float = 1800.0
    half_open_max_calls: int = 1
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    open_for_s: float = 0.0
    probes_in_flight: int = field(default=0)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.half_open_max_calls < 1 or self.reset_timeout_s < 0:
            raise ValueError("failure_threshold and half_open_max_calls >= 1, reset_timeout_s >= 0")
        if self.max_reset_timeout_s < self.reset_timeout_s:
            raise ValueError("max_reset_timeout_s must be >= reset_timeout_s")

    @property
    def retry_at(self) -> float:
        """When an open circuit admits its next probe."""
        return self.opened_at + self.open_for_s

    def _advance(self, now: float) -> None:
        if self.state is BreakerState.OPEN and now >= self.retry_at:
            self.state = BreakerState.HALF_OPEN
            self.probes_in_flight = 0

    def current_state(self, now: float) -> BreakerState:
        self._advance(now)
        return self.state

    def before_call(self, now: float) -> None:
        """Admit a call or raise CircuitOpen. Every admitted call must end in `after_call`."""
        self._advance(now)
        if self.state is BreakerState.OPEN:
            raise CircuitOpen(self.server, self.retry_at)
        if self.state is BreakerState.HALF_OPEN:
            if self.probes_in_flight >= self.half_open_max_calls:
                raise CircuitOpen(self.server, now + self.reset_timeout_s)
            self.probes_in_flight += 1

    def after_call(self, now: float, exc: BaseException | None) -> None:
        """Record how an admitted call ended: `exc` None for success."""
        self.record(now, failed=exc is not None and is_retryable(exc))

    def record(self, now: float, *, failed: bool) -> None:
        """Record an admitted call that ended in a retryable failure (`failed`) or an answer."""
        if self.state is BreakerState.HALF_OPEN:
            self.probes_in_flight = max(0, self.probes_in_flight - 1)
            if failed:
                self._open(now, min(self.max_reset_timeout_s, max(self.open_for_s, self.reset_timeout_s) * 2))
            else:
                self._close()
            return
        if failed:
            self.consecutive_failures += 1
            if self.state is BreakerState.CLOSED and self.consecutive_failures >= self.failure_threshold:
                self._open(now, self.reset_timeout_s)
        elif self.state is BreakerState.CLOSED:
            self.consecutive_failures = 0

    def release(self) -> None:
        """An admitted call was abandoned (cancelled) without an outcome."""
        if self.state is BreakerState.HALF_OPEN:
            self.probes_in_flight = max(0, self.probes_in_flight - 1)

    def _open(self, now: float, open_for_s: float) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.open_for_s = open_for_s
        self.probes_in_flight = 0

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.probes_in_flight = 0
        self.open_for_s = 0.0
