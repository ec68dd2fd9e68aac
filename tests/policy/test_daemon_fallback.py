"""The daemon (`ipae-gateway run`, a real process) falls a device back: a reference agent over
CoAP/DTLS reports attach failures, the software eUICC switches to its fallback profile, and the
test eIM (hil.peers.eim over real TLS) receives exactly one state change with cause fallback.

Return from fallback is covered with an injected clock in test_e2e_gate.py: the daemon runs on
the wall clock and return_after_s is at least 60 s.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.links.protocol import DeviceStatus
from hil.agent.agent import Agent
from hil.euicc import SoftEuicc
from hil.peers.eim import EimServer
from hil.pki import RspPki
from policy_support import FALLBACK, fallback_card, fallback_layout
from tests.service.daemon_support import device_on_the_daemon, make_eid


def device_status(eid: bytes) -> DeviceStatus:
    return Agent.make_status(eid, imei="356938035643809", plmn="26201")


async def fall_back(agent: Agent, card: SoftEuicc) -> None:
    for failures in (1, 3):
        agent.status = replace(agent.status, attach_failures=failures)
        report = await agent.run_session()
        assert report.error is None and report.transport_error is None, report
    assert card.state.enabled_profile().iccid == FALLBACK  # type: ignore[union-attr]


async def state_changes_heard(eims: list[EimServer], eid: bytes) -> list[list[tuple[Any, ...]]]:
    """What each eIM recorded of the device's state-change reports, once all heard one (or 10 s
    passed) and half a second more for any second report."""
    devices = [eim.service.devices[eid] for eim in eims]
    for _ in range(200):
        if all(d.state_changes for d in devices):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    return [[(c["notifyStateChange"], c["stateChangeCause"], c["rPLMN"]) for c in d.state_changes] for d in devices]


async def test_the_daemon_falls_a_device_back_and_the_eim_hears_it_once(workdir: Path, pki: RspPki) -> None:
    eid = make_eid(1)
    async with EimServer(pki) as eim:
        card = fallback_card(pki, eid, [eim])
        lay = fallback_layout(workdir, pki, eim)
        async with device_on_the_daemon(lay, card, status=device_status(eid)) as (daemon, agent):
            await fall_back(agent, card)
            # fallback(1), sent before the device named its new network: no rPLMN (never the failing 262-01)
            assert await state_changes_heard([eim], eid) == [[(True, 1, None)]]
            status, shown = await daemon.get(f"/v1/devices/{eid.hex()}")
            assert status == 200
            assert ("ExecuteFallbackMechanism", "ok") in [(r["operation"], r["result"]) for r in shown["audit"]]


async def test_the_fallback_report_goes_to_each_eim_of_the_euicc_not_only_the_configured_one(
        workdir: Path, pki: RspPki) -> None:
    eid = make_eid(1)
    async with EimServer(pki) as configured, EimServer(pki, eim_id="eim-two") as second:
        card = fallback_card(pki, eid, [configured, second])
        lay = fallback_layout(workdir, pki, configured)
        async with device_on_the_daemon(lay, card, status=device_status(eid)) as (_, agent):
            await fall_back(agent, card)
            assert await state_changes_heard([configured, second], eid) == [[(True, 1, None)]] * 2


async def test_an_eim_down_at_report_time_hears_the_fallback_once_it_is_back_and_the_other_only_once(
        workdir: Path, pki: RspPki) -> None:
    eid = make_eid(1)
    async with EimServer(pki) as configured, EimServer(pki, eim_id="eim-two") as second:
        card = fallback_card(pki, eid, [configured, second])
        # [northbound.retry] sets when the report is tried again: every 0.2 s, no jitter; the
        # refused server's circuit lets a probe through after 1 s
        lay = fallback_layout(workdir, pki, configured, extra=(
            "[northbound.retry]\ninitial_backoff_s = 0.2\nmax_backoff_s = 0.2\njitter_ratio = 0.0\n"
            "[northbound.circuit_breaker]\nopen_s = 1.0\n"))
        async with device_on_the_daemon(lay, card, status=device_status(eid)) as (_, agent):
            agent.status = replace(agent.status, attach_failures=1)
            assert (await agent.run_session()).error is None       # the eUICC's eIMs are read
            await second.peer.stop()                               # connection refused from now on
            await fall_back(agent, card)
            assert (await state_changes_heard([configured], eid)) == [[(True, 1, None)]]
            await asyncio.sleep(1.0)                                # a few refused tries
            assert second.service.devices[eid].state_changes == []
            await second.peer.start()
            assert await state_changes_heard([configured, second], eid) == [[(True, 1, None)]] * 2
