"""Backoff math and circuit-breaker transitions (gateway.core.retry), with injected time."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.retry import BackoffPolicy, BreakerState, CircuitBreaker, CircuitOpen
from gateway.errors import DecodeError, FunctionFailed, NetworkError, TlsVerificationError, TransportTimeout

policies = st.builds(BackoffPolicy,
                     base_s=st.floats(min_value=1e-3, max_value=100.0),
                     cap_s=st.floats(min_value=100.0, max_value=1e6))
unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(policies, st.integers(min_value=0, max_value=10_000), unit)
def test_full_jitter_delay_stays_within_zero_and_capped_ceiling(p: BackoffPolicy, attempt: int, r: float) -> None:
    d = p.delay(attempt, lambda: r)
    assert 0.0 <= d <= p.ceiling(attempt) <= p.cap_s
    assert p.ceiling(attempt) == min(p.cap_s, p.base_s * 2.0 ** min(attempt, 900))


@given(policies, st.integers(min_value=0, max_value=5000))
def test_ceiling_is_monotone_and_reaches_the_cap(p: BackoffPolicy, attempt: int) -> None:
    assert p.ceiling(attempt) <= p.ceiling(attempt + 1)
    assert p.ceiling(attempt + 64) == pytest.approx(p.cap_s) or p.base_s * 2.0 ** (attempt + 64) < p.cap_s


def test_jitter_spreads_a_thousand_retries() -> None:
    p = BackoffPolicy(base_s=1, cap_s=600)
    rng = random.Random(7)
    delays = [p.delay(10, rng.random) for _ in range(1000)]
    assert 0 <= min(delays) < 30 and 570 < max(delays) < 600
    assert len({round(d) for d in delays}) > 300


def test_multiplier_sets_the_growth_of_the_ceiling_up_to_the_cap() -> None:
    assert [BackoffPolicy(1, 100, multiplier=3).ceiling(n) for n in range(6)] == [1, 3, 9, 27, 81, 100]
    assert [BackoffPolicy(5, 100, multiplier=1).ceiling(n) for n in (0, 1, 50, 10_000)] == [5, 5, 5, 5]
    assert BackoffPolicy(1, 1e6, multiplier=10).ceiling(10**9) == 1e6


@given(st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=1.0, max_value=10.0),
       st.integers(min_value=0, max_value=10_000), unit)
def test_jitter_ratio_draws_the_wait_from_its_fraction_below_the_ceiling(
        jitter: float, multiplier: float, attempt: int, r: float) -> None:
    p = BackoffPolicy(base_s=0.5, cap_s=900.0, multiplier=multiplier, jitter_ratio=jitter)
    w = p.ceiling(attempt)
    assert (1.0 - jitter) * w - 1e-9 <= p.delay(attempt, lambda: r) <= w


def test_no_jitter_waits_exactly_the_ceiling_and_full_jitter_is_the_default() -> None:
    exact = BackoffPolicy(base_s=3, cap_s=60, jitter_ratio=0.0)
    assert [exact.delay(n, lambda: 0.99) for n in range(6)] == [3, 6, 12, 24, 48, 60]
    assert BackoffPolicy(base_s=4, cap_s=60).delay(2, lambda: 0.25) == 4.0       # r * w


def test_next_attempt_only_for_retryable_errors_and_within_budget() -> None:
    p = BackoffPolicy(base_s=2, cap_s=60, max_attempts=3)
    half = lambda: 0.5  # noqa: E731
    assert p.next_attempt_at(NetworkError("x"), 0, 100.0, half) == 101.0
    assert p.next_attempt_at(TransportTimeout("x"), 2, 100.0, half) == 104.0
    assert p.next_attempt_at(NetworkError("x"), 3, 100.0, half) is None
    assert p.next_attempt_at(TlsVerificationError("x"), 0, 100.0, half) is None
    assert p.next_attempt_at(DecodeError("x"), 0, 100.0, half) is None
    assert p.next_attempt_at(FunctionFailed("x", reason_code="6.4"), 0, 100.0, half) is None
    assert p.next_attempt_at(FunctionFailed("x", reason_code="4.1", retryable=True), 0, 100.0, half) == 101.0
    assert p.next_attempt_at(ValueError("bug"), 0, 100.0, half) is None


def test_retry_after_is_a_floor_capped_by_the_policy() -> None:
    p = BackoffPolicy(base_s=1, cap_s=60)
    assert p.next_attempt_at(NetworkError("503"), 0, 0.0, lambda: 0.0, retry_after_s=30) == 30.0
    assert p.next_attempt_at(NetworkError("503"), 0, 0.0, lambda: 0.0, retry_after_s=9999) == 60.0


def test_circuit_open_retry_waits_for_the_probe_time() -> None:
    p = BackoffPolicy(base_s=1, cap_s=60)
    assert p.next_attempt_at(CircuitOpen("https://dp", retry_at=500.0), 0, 10.0, lambda: 0.1) == 500.0


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(base_s=0)
    with pytest.raises(ValueError):
        BackoffPolicy(base_s=10, cap_s=5)
    with pytest.raises(ValueError):
        BackoffPolicy().delay(0, lambda: 1.0)
    with pytest.raises(ValueError):
        BackoffPolicy().ceiling(-1)
    for bad in ({"multiplier": 0.5}, {"multiplier": float("inf")}, {"jitter_ratio": -0.1},
                {"jitter_ratio": 1.5}):
        with pytest.raises(ValueError):
            BackoffPolicy(**bad)


def test_breaker_opens_after_threshold_then_half_opens_and_closes_on_success() -> None:
    b = CircuitBreaker("https://dp", failure_threshold=3, reset_timeout_s=30)
    for t in range(3):
        b.before_call(t)
        b.after_call(t, NetworkError("down"))
    assert b.current_state(3) is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as info:
        b.before_call(10)
    assert info.value.retry_at == 32
    assert b.current_state(32) is BreakerState.HALF_OPEN
    b.before_call(32)                       # the single probe
    with pytest.raises(CircuitOpen):
        b.before_call(32.5)                 # others wait while the probe runs
    b.after_call(33, None)
    assert b.current_state(33) is BreakerState.CLOSED
    b.before_call(34)


def test_failed_probe_reopens_for_twice_as_long_up_to_the_cap() -> None:
    b = CircuitBreaker("https://dp", failure_threshold=1, reset_timeout_s=10, max_reset_timeout_s=30)
    b.before_call(0)
    b.after_call(0, TransportTimeout("t"))
    b.before_call(10)
    b.after_call(11, NetworkError("still down"))
    assert b.current_state(30) is BreakerState.OPEN
    assert b.current_state(31) is BreakerState.HALF_OPEN      # opened for 20 s
    b.before_call(31)
    b.after_call(31, NetworkError("still down"))
    assert b.retry_at == 61                                   # 40 s capped at 30 s
    b.before_call(61)
    b.after_call(61, None)
    assert b.current_state(61) is BreakerState.CLOSED and b.open_for_s == 0


def test_definitive_errors_prove_the_server_is_up() -> None:
    b = CircuitBreaker("https://dp", failure_threshold=2)
    b.before_call(0)
    b.after_call(0, NetworkError("blip"))
    b.before_call(1)
    b.after_call(1, FunctionFailed("refused", reason_code="3.8"))
    b.before_call(2)
    b.after_call(2, NetworkError("blip"))
    assert b.current_state(3) is BreakerState.CLOSED


def test_abandoned_probe_frees_the_half_open_slot() -> None:
    b = CircuitBreaker("https://dp", failure_threshold=1, reset_timeout_s=5)
    b.before_call(0)
    b.after_call(0, NetworkError("x"))
    b.before_call(5)
    with pytest.raises(CircuitOpen):  # the half-open slot is taken by the probe
        b.before_call(5)
    b.release()
    b.before_call(5)  # a new probe is admitted


@given(st.lists(st.tuples(st.floats(min_value=0, max_value=5), st.booleans()), max_size=60))
def test_breaker_never_admits_during_open_window(steps: list[tuple[float, bool]]) -> None:
    b = CircuitBreaker("https://dp", failure_threshold=2, reset_timeout_s=10)
    now = 0.0
    for dt, fail in steps:
        now += dt
        state = b.current_state(now)
        try:
            b.before_call(now)
        except CircuitOpen as exc:
            assert state is not BreakerState.CLOSED
            assert exc.retry_at >= now
            continue
        assert state is not BreakerState.OPEN
        b.after_call(now, NetworkError("x") if fail else None)
