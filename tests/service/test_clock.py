"""The one injected clock (gateway.clock): it tells the time and schedules on it, and the
runtime arms the engine's timers with it, so a simulated clock moves them with it."""

from __future__ import annotations

import asyncio

from runtime_support import EID, RecordingBackhaul, ScriptedEngine

from gateway.clock import SimulatedClock, SystemClock, as_clock
from gateway.core.actions import Action, ReplyIdle, StartTimer
from gateway.core.events import DeviceHello, Event, TimerFired
from gateway.links.protocol import DeviceStatus, Hello, Idle
from gateway.service.runtime import Runtime
from gateway.store import AsyncStore

DAY = 86400.0


async def test_a_simulated_clock_fires_its_timers_in_time_order_when_it_jumps_and_never_a_cancelled_one() -> None:
    clock = SimulatedClock(start=1000.0)
    fired: list[str] = []
    clock.call_at(1000.0 + 2 * DAY, lambda: fired.append("two days"))
    clock.call_at(1000.0 + DAY, lambda: fired.append("one day"))
    clock.call_at(1000.0 + DAY + 1, lambda: fired.append("cancelled")).cancel()
    assert clock.advance(DAY + 10) == 1 and fired == ["one day"]
    assert clock() >= 1000.0 + DAY + 10
    assert clock.advance(DAY) == 1 and fired == ["one day", "two days"]
    assert clock.advance(DAY) == 0


async def test_a_simulated_clock_also_runs_with_real_time_and_wakes_a_sleeper_when_it_jumps() -> None:
    clock = SimulatedClock()
    soon = asyncio.Event()
    clock.call_at(clock() + 0.01, soon.set)
    await asyncio.wait_for(soon.wait(), 5)              # no jump needed for what is due now
    sleeper = asyncio.ensure_future(clock.sleep(3600))
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.advance(3600)
    await asyncio.wait_for(sleeper, 5)


def test_a_bare_time_function_is_a_clock_on_the_event_loops_timers() -> None:
    clock = as_clock(lambda: 42.0)
    assert isinstance(clock, SystemClock) and clock() == 42.0
    simulated = SimulatedClock()
    assert as_clock(simulated) is simulated


async def test_the_runtime_arms_the_engines_timers_on_its_clock(astore: AsyncStore) -> None:
    """An engine timer a day ahead fires when the injected clock says a day has passed, with
    that time in its event: the runtime schedules through the clock, not around it."""
    clock = SimulatedClock(start=5000.0)
    fired: list[TimerFired] = []

    def script(event: Event) -> list[Action]:
        if isinstance(event, DeviceHello):
            return [StartTimer(EID, "poll", at=event.now + DAY), ReplyIdle(EID, 60)]
        assert isinstance(event, TimerFired)
        fired.append(event)
        return []

    runtime = Runtime(ScriptedEngine(script), astore, RecordingBackhaul(), clock=clock)
    assert await runtime.exchange(EID, Hello(DeviceStatus(eid=EID))) == Idle(60)
    await asyncio.sleep(0.05)
    assert fired == [] and runtime.timers == 1
    clock.advance(DAY)
    for _ in range(100):
        if fired:
            break
        await asyncio.sleep(0.01)
    assert [e.name for e in fired] == ["poll"] and fired[0].now >= 5000.0 + DAY
    await runtime.close()
