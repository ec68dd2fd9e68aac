"""Issue 7: the outbox bound covers everything waiting for the backhaul, and at the bound the
gateway refuses new work without losing or duplicating anything.

The gateway's runtime runs on a simulated clock (reliability_runtime) with an outbox of 6
messages and its alarm at half of it. The eIM pushes four packages per device while the
devices sleep, then its ESipa endpoint goes away. The devices wake and run the packages;
their results (the engine's deliveries, counted in the outbox usage) pile up: the alarm comes
at 3 (log, metric, the queue alarm of the AlarmBook as the daemon raises it), then the bound
at 6, where the gateway stops starting packages, stops polling the eIM and refuses a new push
with 503 (the eIM keeps it). The eIM comes back: the backlog drains, each package gets
exactly one result (the refused one included, fetched by poll once the hold ends), and the
alarm clears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.alarms import QUEUE_ALARM_KEY, AlarmBook
from gateway.store import OutboxLimits, OutboxUsage, StoreOptions
from hil.pki import generate_pki
from reliability_fleet import check_ledger
from reliability_runtime import STEP_S, Scenario, peers

DEVICES = 3
PACKAGES_EACH = 4
LIMITS = OutboxLimits(max_entries=6, max_bytes=1024 * 1024, alarm_ratio=0.5)
HELD_S = 6 * 3600.0               # simulated time spent at the bound with the eIM down
AFTER_S = 12 * 3600.0             # bound on the catch-up after the eIM returns


def _polls(runtime: Any) -> int:
    return int(sum(v for k, v in runtime.metrics.backhaul_requests.values.items() if "GetEimPackage" in str(k)))


async def _scenario(workdir: Path) -> dict[str, Any]:
    sc = Scenario(workdir)
    pki = await asyncio.to_thread(generate_pki, workdir / "pki")
    out: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        smdp, eim, inject_port = await peers(stack, pki)
        runtime = await sc.start(stack, pki, eim, DEVICES, inject_port, StoreOptions(outbox_limits=LIMITS))
        assert sc.astore is not None
        astore = sc.astore
        # the daemon's glue (Daemon._on_backlog): the queue alarm follows the level at once
        book = AlarmBook()
        levels: list[str] = []

        def on_backlog(usage: OutboxUsage) -> None:
            levels.append(usage.level)
            for d in book.queue_level(usage.level, usage.entries, usage.payload_bytes, sc.clock()):
                book.apply(d, sc.clock())
        runtime.on_backlog = on_backlog

        tasks = sc.start_devices()
        try:
            # first contact (the eUICCs get their eIM), then the devices sleep
            for _ in range(3):
                await sc.advance(STEP_S, eim)
            await sc.quiet(eim)
            packages = []
            for d in sc.devices:
                for _ in range(PACKAGES_EACH):
                    package = eim.service.queue_euicc_package(d.eid, {"psmo": [{"op": "listProfileInfo"}]})
                    assert await eim.service.push(package) == "eimPackageReceived"
                    packages.append(package)

            # the eIM unreachable: results pile up to the bound, then the gateway holds
            await eim.peer.stop()
            start = sc.clock()
            while not runtime.holding and sc.clock() - start < HELD_S:
                await sc.advance(STEP_S, eim)
            assert runtime.holding, f"the outbox never reached its bound: {runtime.backlog}"
            polls_at_bound = _polls(runtime)
            runs_at_bound = sum(1 for d in sc.devices for load in d.card.loads if load.accepted)
            while sc.clock() - start < HELD_S:
                await sc.advance(STEP_S, eim)
            usage = await astore.run(lambda s: s.outbox.usage())
            waiting = await astore.run(lambda s: s.deliveries.list())
            inbox_before = await astore.run(lambda s: s.stats()["inbox_open"])
            refused = eim.service.queue_euicc_package(sc.devices[0].eid, {"psmo": [{"op": "listProfileInfo"}]})
            out["push_while_full"] = await eim.service.push(refused)
            packages.append(refused)
            out.update(
                held_usage=(usage.entries, usage.level), waiting=[(w.kind, w.server) for w in waiting],
                runs_held=sum(1 for d in sc.devices for load in d.card.loads if load.accepted) - runs_at_bound,
                runs_before_return=sum(1 for d in sc.devices for load in d.card.loads if load.accepted),
                polls_held=_polls(runtime) - polls_at_bound,
                inbox_grew=await astore.run(lambda s: s.stats()["inbox_open"]) - inbox_before,
                metric_level=runtime.metrics.outbox_level.get(),
                metric_holding=runtime.metrics.holding_new_work.get(),
                alarm=book.active[QUEUE_ALARM_KEY].alarm.severity if QUEUE_ALARM_KEY in book.active else None,
                eim_results_held=sum(len(eim.service.devices[d.eid].results) for d in sc.devices))

            # the eIM back: the backlog drains, the hold ends, the rest runs
            await eim.peer.start()
            after = sc.clock()
            while sc.clock() - after < AFTER_S:
                if all(not p.pending for p in packages) and runtime.backlog is not None \
                        and runtime.backlog.entries == 0:
                    break
                await sc.advance(STEP_S, eim)
            await sc.quiet(eim)
            out["caught_up_s"] = sc.clock() - after
        finally:
            await sc.stop_devices(tasks)
        problems, leaks, figures = check_ledger(sc.devices, smdp, eim)
        end = await astore.run(lambda s: (s.outbox.usage(), s.deliveries.list()))
        out.update(problems=problems, leaks=leaks, figures=figures, levels=levels, alarm_after=dict(book.active),
                   end_usage=(end[0].entries, end[0].level), end_waiting=len(end[1]), holding_after=runtime.holding,
                   packages=len(packages), handed_over=sc.results_handed_over,
                   eim_results=sum(len(eim.service.devices[d.eid].results) for d in sc.devices))
    return out


def test_at_the_outbox_bound_new_work_is_refused_and_the_backlog_drains_exactly_once(
        caplog: pytest.LogCaptureFixture, workdir: Path) -> None:
    started = time.monotonic()
    caplog.set_level(logging.INFO, logger="gateway.store.outbox")
    out = asyncio.run(_scenario(workdir))
    print(f"backlog test: {out['packages']} packages; held at {out['held_usage']} with "
          f"{out['runs_before_return']} run; push while full: {out['push_while_full']}; levels {out['levels']}; "
          f"drained in {out['caught_up_s'] / 3600:.1f} simulated h; {time.monotonic() - started:.1f} s real; "
          f"{out['figures']}")
    entries, level = out["held_usage"]
    # the bound: reached, passed only by work that was already running (one package per device at most)
    assert level == "full" and LIMITS.max_entries <= entries <= LIMITS.max_entries + DEVICES
    assert len(out["waiting"]) == entries and {k for k, _ in out["waiting"]} == {"result"}   # one accounting
    # the alarm before the bound, then the bound: log, metric, alarm
    assert out["levels"][:2] == ["alarm", "full"]
    assert "outbox above its alarm level: 3 entries" in caplog.text
    assert "outbox FULL, new work refused" in caplog.text
    assert (out["metric_level"], out["metric_holding"], out["alarm"]) == (2, 1, "critical")
    # held: no package started, no eIM poll, a push refused (the eIM keeps it), nothing stored for it
    assert out["runs_held"] == 0 and out["polls_held"] == 0 and out["inbox_grew"] == 0
    assert out["push_while_full"] != "eimPackageReceived"
    assert out["runs_before_return"] == entries and out["eim_results_held"] == 0
    # the eIM back: everything drained, each package exactly one result, nothing run twice
    assert not out["problems"], "\n".join(out["problems"])
    assert not out["leaks"], "\n".join(out["leaks"])
    assert out["eim_results"] == out["packages"] == DEVICES * PACKAGES_EACH + 1
    assert out["end_usage"] == (0, "ok") and out["end_waiting"] == 0 and not out["holding_after"]
    assert out["levels"][-1] == "ok" and out["alarm_after"] == {}
    assert "outbox back under its alarm level" in caplog.text
