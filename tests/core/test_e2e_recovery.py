"""Crash recovery end to end: the engine rebuilt from nothing but its saved session blobs.

In-test SM-DP+/eIM responders (tests/core/peers.py; real peers come later), real software
eUICC, agent and device link. `EngineRig.restart` throws the engine away and builds a new one
from the last SaveSession of each device, as the service does after a restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.errors import NetworkError
from gateway.links.memory import MemoryLink
from hil.agent.memory_transport import MemoryAgentTransport
from hil.euicc import SoftEuicc
from hil.euicc.eim import eim_config_from
from hil.pki import RspPki
from tests.core.peers import MiniEim, MiniSmdp
from tests.core.rig import EngineRig, make_agent

ICCID = bytes.fromhex("98001032547698103214")


def setup(pki: RspPki) -> tuple[EngineRig, MemoryLink, SoftEuicc]:
    eim = MiniEim(pki)
    card = SoftEuicc(pki, pki.eid_bytes)
    card.state.eims.append(eim_config_from(card, eim.initial_eim()))
    card.commit()
    rig = EngineRig(Engine(EngineConfig(eims=(EimEndpoint(eim.eim_id, eim.fqdn),), seed=5)), MiniSmdp(pki), eim)
    return rig, MemoryLink(rig), card


async def test_restart_after_every_exchange_still_downloads_and_enables_in_six_batches(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.restart_after_each_uplink = True
    rig.eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x01")
    rig.eim.queue_package(card.eid, rig.eim.euicc_package_request(card.eid, [("enable", {"iccid": ICCID})], b"\x02"))
    agent, _ = make_agent(link, card)
    report = await agent.run_session()
    assert rig.restarts == report.exchanges
    assert card.profiles[0].state == "enabled" and card.notifications == []
    assert report.batches == 6
    assert len(rig.eim.results) == 2 and len(rig.smdp.notifications) == 2


async def test_answer_lost_in_a_crash_is_asked_again_after_restart(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.crash_on = "getBoundProfilePackage"
    rig.eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x03")
    agent, _ = make_agent(link, card)
    report = await agent.run_session()
    assert rig.crashed and report.error is not None        # the device got no batch this time
    rig.restart()                                          # the request is posted again
    assert rig.smdp.calls.count("getBoundProfilePackage") == 1
    await agent.run_session()
    assert [p.iccid for p in card.profiles] == [ICCID]
    assert len(rig.eim.results) == 1 and card.notifications == []


@dataclass
class FlakyTransport:
    """The device's uplink number `fail_at` never reaches the gateway (a network error)."""

    inner: MemoryAgentTransport
    fail_at: int
    count: int = 0

    async def exchange(self, payload: bytes, buffer_size: int, size_hint: int | None = None
                       ) -> AsyncIterator[bytes]:
        self.count += 1
        if self.count == self.fail_at:
            raise NetworkError("uplink lost")
        async for chunk in self.inner.exchange(payload, buffer_size, size_hint):
            yield chunk

    async def close(self) -> None:
        return None


async def test_result_delivered_after_a_gateway_restart_is_accepted_for_the_batch_in_flight(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.eim.queue_package(card.eid, rig.eim.euicc_package_request(card.eid, [("getRAT", {})], b"\x04"))
    agent, _ = make_agent(link, card)
    agent.transport = FlakyTransport(MemoryAgentTransport(link, card.eid), fail_at=2)
    first = await agent.run_session()          # the batch ran; its Result did not get through
    assert first.transport_error is not None and rig.eim.results == []
    rig.restart()
    await agent.run_session()                  # the agent sends the kept Result first
    assert len(rig.eim.results) == 1
    assert card.state.eims[0].counter == 1 and card.notifications == []


async def test_device_that_lost_the_result_gets_the_package_result_from_the_euicc(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.eim.queue_package(card.eid, rig.eim.euicc_package_request(card.eid, [("getRAT", {})], b"\x05"))
    agent, _ = make_agent(link, card)
    agent.transport = FlakyTransport(MemoryAgentTransport(link, card.eid), fail_at=2)
    await agent.run_session()
    rig.restart()
    rebooted, _ = make_agent(link, card)       # the sensor rebooted and forgot the Result
    await rebooted.run_session()
    ((kind, value),) = rig.eim.results_of()
    assert kind == "euiccPackageResult" and value[0] == "euiccPackageResultSigned"
    assert card.state.eims[0].counter == 1 and card.notifications == []
