"""Crash recovery end to end: the engine rebuilt from nothing but its saved session blobs,
against the real SM-DP+ and eIM peers. `EngineDriver.restart` throws the engine away and
builds a new one from the last SaveSession of each device, as the service does after a
restart; the peers keep running, as servers do while a gateway restarts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.errors import NetworkError
from gateway.links.memory import MemoryLink
from hil.agent.agent import Agent
from hil.agent.memory_transport import MemoryAgentTransport
from hil.euicc import SoftEuicc
from hil.pki import RspPki
from tests.core.driver import ICCID, ICCID_DIGITS, Peers, make_agent, running_peers


async def test_restart_after_every_exchange_still_downloads_and_enables_in_six_batches(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        driver.restart_after_each_uplink = True
        await peers.download(card.eid, await peers.order())
        await peers.psmo(card.eid, {"op": "enable", "iccid": ICCID_DIGITS})
        agent, _ = make_agent(MemoryLink(driver), card)
        report = await agent.run_session()
        assert driver.restarts == report.exchanges
        assert card.profiles[0].state == "enabled" and card.notifications == []
        assert report.batches == 6
        assert len(await peers.one_result_per_package(card.eid)) == 2
        assert [n["event"] for n in await peers.smdp_notifications()] == ["install", "enable"]


async def test_answer_lost_in_a_crash_is_asked_again_after_restart(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        driver.crash_on = "getBoundProfilePackage"
        await peers.download(card.eid, await peers.order(size=2048))
        agent, _ = make_agent(MemoryLink(driver), card)
        report = await agent.run_session()
        assert driver.crashed and report.error is not None        # the device got no batch this time
        await driver.restart()                                    # the request is posted again
        assert driver.posted.count("getBoundProfilePackage") == 2  # the SM-DP+ hands out the same BPP
        await agent.run_session()
        assert [p.iccid for p in card.profiles] == [ICCID] and card.notifications == []
        assert len(await peers.one_result_per_package(card.eid)) == 1


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


async def _run_batch_whose_result_is_lost(peers: Peers, link: MemoryLink, card: SoftEuicc) -> Agent:
    """A PSMO package's batch runs on the card, then the uplink carrying its Result fails."""
    await peers.psmo(card.eid, {"op": "getRAT"})
    agent, _ = make_agent(link, card)
    agent.transport = FlakyTransport(MemoryAgentTransport(link, card.eid), fail_at=2)
    first = await agent.run_session()
    assert first.transport_error is not None and await peers.results(card.eid) == []
    return agent


async def test_result_delivered_after_a_gateway_restart_is_accepted_for_the_batch_in_flight(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        link = MemoryLink(driver)
        agent = await _run_batch_whose_result_is_lost(peers, link, card)
        await driver.restart()
        await agent.run_session()                  # the agent sends the kept Result first
        assert len(await peers.one_result_per_package(card.eid)) == 1
        assert card.state.eims[0].counter == 1 and card.notifications == []


async def test_device_that_lost_the_result_gets_the_package_result_from_the_euicc(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        link = MemoryLink(driver)
        await _run_batch_whose_result_is_lost(peers, link, card)
        await driver.restart()
        rebooted, _ = make_agent(link, card)       # the sensor rebooted and forgot the Result
        await rebooted.run_session()
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "euiccPackageResultSigned" and result["verified"]
        assert card.state.eims[0].counter == 1 and card.notifications == []
