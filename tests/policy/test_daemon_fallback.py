"""The daemon (`ipae-gateway run`, a real process) falls a device back: a reference agent over
CoAP/DTLS reports attach failures, the software eUICC switches to its fallback profile, and the
test eIM (hil.peers.eim over real TLS) receives exactly one state change with cause fallback.

Return from fallback is covered with an injected clock in test_e2e_gate.py: the daemon runs on
the wall clock and return_after_s is at least 60 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hil.agent.agent import Agent
from hil.agent.coap_transport import CoapAgentTransport
from hil.euicc import SoftEuicc
from hil.euicc.eim import eim_config_from
from hil.euicc.state import Profile
from hil.peers.eim import EimServer
from hil.pki import RspPki
from tests.service.daemon_support import (
    Layout,
    free_udp_port,
    make_eid,
    psk_of,
    short_dir,
    start_daemon,
    stop_daemon,
    wait_for_socket,
)

HOME = bytes.fromhex("98001032547698103214")
FALLBACK = bytes.fromhex("98001032547698103215")


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from short_dir()


async def test_the_daemon_falls_a_device_back_and_the_eim_hears_it_once(workdir: Path, pki: RspPki) -> None:
    eid = make_eid(1)
    async with EimServer(pki) as eim:
        eim.service.device(eid, create=True)
        card = SoftEuicc(pki, eid)
        card.state.eims.append(eim_config_from(card, eim.service.own_configuration_data(indirect_download=False)))
        card.state.profiles += [
            Profile(HOME, card.new_isdp_aid(), state="enabled", install_state="installed"),
            Profile(FALLBACK, card.new_isdp_aid(), install_state="installed", fallback=True, fallback_allowed=True)]
        card.commit()
        host, port = eim.fqdn.split(":")
        lay = Layout(workdir, free_udp_port(), workdir / "api.sock", [1], extra=(
            f'[northbound]\neim_fqdn = "{host}"\neim_port = {port}\neim_ca_file = "{pki.tls_ca.cert_path}"\n'
            "[policies.fallback]\nenabled = true\nattach_failures = 3\n"
            "[policies.fallback_wave]\nreport_spread_s = 0.0\n"))
        lay.write()
        daemon = start_daemon(lay)
        transport = CoapAgentTransport("127.0.0.1", lay.coap_port, eid, identity="dev1", psk=psk_of(1))
        try:
            daemon.wait_notify("READY=1")
            await wait_for_socket(lay.socket_path)
            agent = Agent(Agent.make_status(eid, imei="356938035643809", plmn="26201"), card, transport)
            for failures in (1, 3):
                agent.status = replace(agent.status, attach_failures=failures)
                report = await agent.run_session()
                assert report.error is None and report.transport_error is None, report
            assert card.state.enabled_profile().iccid == FALLBACK  # type: ignore[union-attr]
            device = eim.service.devices[eid]
            for _ in range(200):
                if device.state_changes:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)                      # and no second report follows
            # fallback(1), sent before the device named its new network: no rPLMN (never the failing 262-01)
            assert [(c["notifyStateChange"], c["stateChangeCause"], c["rPLMN"]) for c in device.state_changes] == [
                (True, 1, None)]
            status, shown = await daemon.get(f"/v1/devices/{eid.hex()}")
            assert status == 200
            assert ("ExecuteFallbackMechanism", "ok") in [(r["operation"], r["result"]) for r in shown["audit"]]
        finally:
            await transport.close()
            assert stop_daemon(daemon) == 0
