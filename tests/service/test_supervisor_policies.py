"""Edge policies through the daemon (`ipae-gateway run`, a real process): a reference agent
over CoAP/DTLS with a software eUICC falls back, the test eIM (hil.peers.eim over real TLS)
hears about it. One state-change report per policy switch:

- while the policy's report is owed (its slot not reached), the engine holds back its own
  PLMN-change report: the device waking on another network reports nothing to the eIM;
- once the eIM answered the policy's report, the policies record it sent (audit
  stateChangeReported); the engine's session holds its own reports back until the device
  names its serving network, which counts as reported (the eIM may answer before the device
  wakes on the fallback network), and reports PLMN changes itself from then on.

And the policies' state is in the store: a restart between a fallback and its return keeps
the device in fallback with the same return time.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gateway.core.session import DeviceSession
from hil.agent.agent import Agent
from hil.agent.coap_transport import CoapAgentTransport
from hil.euicc import SoftEuicc
from hil.peers.eim import EimServer
from hil.pki import RspPki
from tests.policy.policy_support import FALLBACK, fallback_card, fallback_layout
from tests.service.daemon_support import (
    Daemon,
    Layout,
    make_eid,
    psk_of,
    start_daemon,
    stop_daemon,
    wait_for_socket,
)

EID = make_eid(1)


@dataclass
class Rig:
    daemon: Daemon
    agent: Agent
    card: SoftEuicc
    eim: EimServer
    layout: Layout
    transport: CoapAgentTransport

    def fallback_state(self) -> dict[str, object]:
        with sqlite3.connect(self.layout.db) as db:
            (blob,) = db.execute("SELECT blob FROM policy_state WHERE eid = ? AND kind = 'fallback'",
                                 (EID,)).fetchone()
        state: dict[str, object] = json.loads(blob)
        return state

    async def devices_in(self, state: str) -> int:
        status, text = await self.daemon.get("/metrics")
        assert status == 200
        found = re.search(r'policy\{family="fallback_devices",key="' + state + r'"\} (\d+)', text)
        return 0 if found is None else int(found.group(1))

    async def restart(self) -> None:
        await self.transport.close()
        assert stop_daemon(self.daemon) == 0
        self.daemon = start_daemon(self.layout)
        self.daemon.wait_notify("READY=1")
        await wait_for_socket(self.layout.socket_path)
        self.transport = CoapAgentTransport("127.0.0.1", self.layout.coap_port, EID, identity="dev1", psk=psk_of(1))
        self.agent = Agent(self.agent.status, self.card, self.transport)

    def session_pending(self) -> bool:
        with sqlite3.connect(self.layout.db) as db:
            (blob,) = db.execute("SELECT blob FROM sessions WHERE eid = ?", (EID,)).fetchone()
        return DeviceSession.from_blob(EID, blob).policy_report_pending

    async def wake(self, *, failures: int, plmn: str) -> None:
        self.agent.status = replace(self.agent.status, attach_failures=failures, plmn=plmn)
        report = await self.agent.run_session()
        assert report.error is None and report.transport_error is None, report


@asynccontextmanager
async def rig(workdir: Path, pki: RspPki, *, report_spread_s: float) -> AsyncIterator[Rig]:
    async with EimServer(pki) as eim:
        card = fallback_card(pki, EID, [eim])
        lay = fallback_layout(workdir, pki, eim, report_spread_s=report_spread_s)
        daemon = start_daemon(lay)
        transport = CoapAgentTransport("127.0.0.1", lay.coap_port, EID, identity="dev1", psk=psk_of(1))
        agent = Agent(Agent.make_status(EID, imei="356938035643809", plmn="26201"), card, transport)
        r = Rig(daemon, agent, card, eim, lay, transport)
        try:
            daemon.wait_notify("READY=1")
            await wait_for_socket(lay.socket_path)
            yield r
        finally:
            await r.transport.close()
            assert stop_daemon(r.daemon) == 0


async def test_while_the_policy_report_is_owed_the_engine_reports_no_plmn_change_of_its_own(
        workdir: Path, pki: RspPki) -> None:
    async with rig(workdir, pki, report_spread_s=86400.0) as r:       # the report's slot: hours away
        await r.wake(failures=1, plmn="26201")
        await r.wake(failures=3, plmn="26201")                         # falls back
        assert r.card.state.enabled_profile().iccid == FALLBACK  # type: ignore[union-attr]
        await r.wake(failures=0, plmn="26202")                         # awake on the fallback network
        await asyncio.sleep(0.5)
        assert r.eim.service.devices[EID].state_changes == []
        assert r.session_pending()


async def test_an_eim_answer_before_the_device_wakes_on_the_new_network_gives_exactly_one_report(
        workdir: Path, pki: RspPki) -> None:
    async with rig(workdir, pki, report_spread_s=0.0) as r:           # the report goes out at once
        await r.wake(failures=1, plmn="26201")
        await r.wake(failures=3, plmn="26201")                         # falls back
        device = r.eim.service.devices[EID]
        audit: list[tuple[str, str]] = []
        for _ in range(200):
            status, shown = await r.daemon.get(f"/v1/devices/{EID.hex()}")
            assert status == 200
            audit = [(a["operation"], a["result"]) for a in shown["audit"]]
            if ("stateChangeReported", "ok") in audit:
                break
            await asyncio.sleep(0.05)
        assert ("stateChangeReported", "ok") in audit                  # the eIM answered the policy's report
        # sent before the device named its new network: no rPLMN rather than the failing 262-01
        assert [(c["notifyStateChange"], c["stateChangeCause"], c["rPLMN"]) for c in device.state_changes] == [
            (True, 1, None)]
        assert r.session_pending()                                     # held until the device names its PLMN
        await r.wake(failures=0, plmn="26202")                         # awake on the fallback network
        await asyncio.sleep(0.5)
        assert len(device.state_changes) == 1                          # the engine did not report 262-02 again
        assert not r.session_pending()
        await r.wake(failures=0, plmn="26203")                         # a change of its own is the engine's
        assert [(c["stateChangeCause"], c["rPLMN"]) for c in device.state_changes[1:]] == [(None, "62f230")]


async def test_a_restart_between_a_fallback_and_its_return_keeps_the_return_time(workdir: Path, pki: RspPki) -> None:
    async with rig(workdir, pki, report_spread_s=0.0) as r:
        await r.wake(failures=1, plmn="26201")
        await r.wake(failures=3, plmn="26201")                         # falls back
        before = r.fallback_state()
        assert before["state"] == "fallback" and isinstance(before["return_at"], float)
        assert await r.devices_in("fallback") == 1
        await r.restart()
        assert await r.devices_in("fallback") == 1                     # restored before any wake-up
        await r.wake(failures=0, plmn="26202")
        after = r.fallback_state()
        assert (after["state"], after["return_at"]) == ("fallback", before["return_at"])
        assert r.card.state.enabled_profile().iccid == FALLBACK  # type: ignore[union-attr]
