"""Retry delays for the outbox: exponential backoff with jitter, from injected randomness.

`retry_delay(attempts, policy, jitter)` is pure: `jitter` is a number in [0, 1) supplied by
the caller (a seeded `random.Random` in tests), so a 24-hour outage replays identically. The
delay doubles per failed attempt up to `cap_s`; "equal jitter" keeps at least half of it, so
retries never collapse to zero, and spreads the rest so that gateways (or entries) that
failed together do not retry together.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    base_s: float = 2.0
    cap_s: float = 900.0


def retry_delay(attempts: int, policy: BackoffPolicy, jitter: float) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (attempts >= 1)."""
    if attempts < 1:
        raise ValueError("attempts counts failures and starts at 1")
    if not 0.0 <= jitter < 1.0:
        raise ValueError("jitter must be in [0, 1)")
    ceiling = min(policy.cap_s, policy.base_s * 2.0 ** min(attempts - 1, 62))
    return ceiling / 2.0 + jitter * ceiling / 2.0
