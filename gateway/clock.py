"""The one clock of the runtime and the daemon: it tells the time and it schedules on it.

Theory of operation (DESIGN principle 5). Everything that needs "now" or "later" -- event
times, stored times, the engine's timers (StartTimer), the eIM report timers, the policy tick,
the webhook outbox drain loop, a serial modem's wake interval -- takes one `Clock`:

- `clock()` is the time: wall-clock seconds since the epoch (stored times are compared across
  restarts, which a monotonic clock cannot do). Code that only tells the time takes the clock
  as a plain ``Callable[[], float]`` (the HTTPS client's breakers, the policy gate).
- `clock.call_at(when, callback)` runs `callback` once the clock reads `when`; the returned
  `Timer` cancels it. `await clock.sleep(seconds)` waits that long on the clock.

`SystemClock` (the default) is time.time and the event loop. `SimulatedClock` runs like real
time and jumps forward when told (`advance`), firing the timers and waking the sleepers that
fall due on the way, in time order: a test compresses 24 hours into seconds through the clock
the gateway runs on, not around it. What bounds a real wait on a socket or a peer -- an HTTP or exchange timeout, the
shutdown grace, the systemd watchdog -- stays on the event loop's own time on purpose: those
are network and supervisor deadlines, not schedule.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class Timer(Protocol):
    def cancel(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    def __call__(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock time (or `time_fn`) and the running event loop's timers."""

    def __init__(self, time_fn: Callable[[], float] = time.time) -> None:
        self._time = time_fn

    def __call__(self) -> float:
        return self._time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, when - self._time()), callback)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def as_clock(clock: Clock | Callable[[], float]) -> Clock:
    """`clock` itself when it schedules; a bare time function gets the event loop's timers."""
    return clock if isinstance(clock, Clock) else SystemClock(clock)


@dataclass(order=True)
class _Due:
    when: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    handle: asyncio.TimerHandle | None = field(default=None, compare=False)
    done: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.done = True
        if self.handle is not None:
            self.handle.cancel()

    def fire(self) -> None:
        if not self.done:
            self.done = True
            self.callback()


class SimulatedClock:
    """Wall-clock time from `start` that runs at the speed of real time and jumps forward on
    `advance`; for tests. Not thread-safe (one event loop)."""

    def __init__(self, start: float | None = None) -> None:
        self._start = time.time() if start is None else start
        self._origin = time.monotonic()
        self._offset = 0.0
        self._due: list[_Due] = []
        self._seq = 0

    def __call__(self) -> float:
        return self._start + (time.monotonic() - self._origin) + self._offset

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        self._seq += 1
        due = _Due(when, self._seq, callback)
        due.handle = asyncio.get_running_loop().call_later(max(0.0, when - self()), due.fire)
        heapq.heappush(self._due, due)
        return due

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)
        timer = self.call_at(self() + seconds, wake)
        try:
            await woken
        finally:
            timer.cancel()

    def advance(self, seconds: float) -> int:
        """Jump `seconds` ahead, firing what falls due on the way, in time order. Returns how
        many callbacks ran; the tasks they start or wake run when the caller next yields."""
        self._offset += seconds
        now = self()
        fired = 0
        while self._due and self._due[0].when <= now:
            due = heapq.heappop(self._due)
            if not due.done:
                if due.handle is not None:
                    due.handle.cancel()
                due.fire()
                fired += 1
        return fired
