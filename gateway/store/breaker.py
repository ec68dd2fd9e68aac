"""Persistence of the per-server circuit breaker of `gateway.core.retry` (one row per server).

The policy (when a breaker opens, how long it waits, how a probe closes it) is the core's
`CircuitBreaker`; this module only turns its state into a `breakers` row and back, so a
restarted gateway does not hammer a server it already knew to be down. While a breaker is open
the outbox is not drained toward that server at all: entries keep their place and their attempt
counts, and nothing is lost.

A probe that was out when the process stopped never came back: a half-open breaker is restored
open, and probes again as soon as its wait is over.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.core.retry import BreakerState, CircuitBreaker

__all__ = ["from_row", "to_row"]

_COLUMN = {BreakerState.CLOSED: "closed", BreakerState.OPEN: "open", BreakerState.HALF_OPEN: "half_open"}
_STATE = {column: state for state, column in _COLUMN.items()}


def to_row(b: CircuitBreaker) -> tuple[str, int, float, float]:
    """(state, failures, opened_at, open_s) as the `breakers` table stores them."""
    return _COLUMN[b.state], b.consecutive_failures, b.opened_at, b.open_for_s


def from_row(fresh: CircuitBreaker, row: tuple[Any, ...] | None) -> CircuitBreaker:
    """`fresh` (a new breaker with the server's policy) carrying the stored state of `row`."""
    if row is None:
        return fresh
    state = _STATE[row[0]]
    return replace(fresh, state=BreakerState.OPEN if state is BreakerState.HALF_OPEN else state,
                   consecutive_failures=int(row[1]), opened_at=float(row[2] or 0.0), open_for_s=float(row[3]))
