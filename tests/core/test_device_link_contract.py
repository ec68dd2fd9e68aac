"""What the device link asks of the engine (docs/device-link.md §7), end to end.

`next_size_hint` on the batches whose answer is large (measured over real CoAP/DTLS through
the link simulator), `stopped = "data"` on the last BPP segment read as completion, each
step within the agent's buffer and each batch within its byte budget (a call that cannot
fit is refused cleanly), and idempotent exchanges: a Result the agent sends again gets the
same batch, its consequences never run twice, across a restart too; one whose first answer
was Idle is a wake like a Hello (new work may have come since the lost Idle).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from gateway.core import actions as A
from gateway.core import events as E
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.errors import NetworkError
from gateway.links.base import DeviceCredential, DeviceRegistry
from gateway.links.coap import CoapServer, CoapServerConfig
from gateway.links.memory import MemoryLink
from gateway.links.protocol import (
    STOPPED_DATA,
    BatchMsg,
    BatchResult,
    DeviceStatus,
    Downlink,
    Result,
    StepResult,
    Uplink,
    encode_downlink,
    encode_step,
)
from gateway.links.simulator import LinkProfile, UdpLinkSimulator
from gateway.service.demo import free_udp_pair
from hil.agent.agent import Agent
from hil.agent.coap_transport import CoapAgentTransport
from hil.agent.memory_transport import MemoryAgentTransport
from gateway.spec import codec, esipa
from hil.pki import RspPki
from tests.core.driver import ICCID, CardBackend, EngineDriver, Peers, make_agent, mid_session, running_peers


def is_bpp(downlink: Downlink) -> bool:
    return isinstance(downlink, BatchMsg) and downlink.batch.steps[0].apdus[0][5:7] == b"\xbf\x36"


# -- 1. next_size_hint -----------------------------------------------------------------------------


async def coap_download(peers: Peers, driver: EngineDriver, rtt_s: float) -> tuple[list[float], CoapAgentTransport]:
    """One device downloads a 30 KB profile over CoAP/DTLS on a link of `rtt_s`: each exchange's time."""
    card = peers.card()
    await peers.download(card.eid, await peers.order())
    registry = DeviceRegistry([DeviceCredential("sensor-1", card.eid, b"psk-of-sensor-1")])
    async with CoapServer(driver, registry, CoapServerConfig(dtls_port=free_udp_pair())) as server:
        async with UdpLinkSimulator(("127.0.0.1", server._config.dtls_port), LinkProfile(rtt_s=rtt_s)) as sim:
            transport = CoapAgentTransport("127.0.0.1", sim.listen_port, card.eid, identity="sensor-1",
                                           psk=b"psk-of-sensor-1")
            status = Agent.make_status(card.eid, imei="353290611234567", plmn="26201", buffer_size=48 * 1024)
            agent = Agent(status, CardBackend(card), transport)
            try:
                report = await agent.run_session()
            finally:
                await transport.close()
    assert report.error is None and report.transport_error is None
    assert [p.iccid for p in card.profiles] == [ICCID]
    return report.exchange_s, transport


async def test_the_bpp_size_hint_saves_the_coap_round_trip_of_the_bpp_downlink(pki: RspPki) -> None:
    # A block requested with the uplink costs no round trip of its own; one requested after
    # block 0 arrived costs a second one. Counted, not timed.
    async with running_peers(pki) as peers:
        plain = peers.driver(peers.config(bpp_size_hint=None, authenticate_server_size_hint=None))
        without, t_without = await coap_download(peers, plain, 0.05)
        hinted = peers.driver()
        with_hint, t_with = await coap_download(peers, hinted, 0.05)
    assert t_without.speculative_requests == 0
    assert t_without.block_requests == 31             # BPP blocks 1..31, each after block 0 arrived
    assert t_with.speculative_requests == 31 + 1     # the same, each sent with its uplink, and a block 1
    #                                                  after the challenge (its hint is an estimate)
    assert t_with.block_requests == t_with.speculative_requests and t_with.block_timeouts == 0
    print(f"session over CoAP/DTLS at RTT 0.05 s: {sum(without):.2f}s without hints, {sum(with_hint):.2f}s with")


async def test_hints_are_capped_by_the_device_budget_and_exact_for_the_rest_of_a_split_bpp(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        await peers.download(card.eid, await peers.order())
        agent, _ = make_agent(MemoryLink(driver), card, max_batch_bytes=8192)
        await agent.run_session()
        batches = [a.batch for a in driver.of(A.SendBatch)]
        sizes = [len(encode_downlink(BatchMsg(b))) for b in batches]
        assert all(n <= 8192 for n in sizes)                 # whole downlinks, as MQTT carries them
        first_bpp = next(i for i, b in enumerate(batches) if is_bpp(BatchMsg(b)))
        assert batches[first_bpp - 1].next_size_hint == 8192  # PrepareDownload: the budget, not 32 KB
        split = range(first_bpp, first_bpp + 4)               # 30 KB in 8 KB batches
        for i in split[:-1]:
            assert batches[i].next_size_hint == sizes[i + 1]   # the rest of the BPP: exact
        assert [p.iccid for p in card.profiles] == [ICCID]


# -- 2. stopped = "data" on the last BPP segment --------------------------------------------------


@dataclass
class LastSegmentStops:
    """A handler shim: the last BPP segment of a downlink gets stop_if_data, so the real agent
    reports stopped = "data" on it, as an agent that marks every segment would."""

    inner: EngineDriver
    stopped: list[str | None]

    async def exchange(self, eid: bytes, uplink: Uplink) -> Downlink:
        if isinstance(uplink, Result) and uplink.result.stopped == STOPPED_DATA:
            self.stopped.append(uplink.result.stopped)
        down = await self.inner.exchange(eid, uplink)
        if is_bpp(down):
            assert isinstance(down, BatchMsg)
            steps = down.batch.steps
            last = next(i for i, s in enumerate(steps) if not s.stop_if_data)   # the planner marks all others
            steps = steps[:last] + (replace(steps[last], stop_if_data=True),) + steps[last + 1:]
            down = BatchMsg(replace(down.batch, steps=steps))
        return down


async def test_stopped_data_on_the_last_bpp_segment_is_the_normal_end_of_the_load(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        await peers.download(card.eid, await peers.order())
        shim = LastSegmentStops(driver, [])
        agent, _ = make_agent(MemoryLink(shim), card)
        report = await agent.run_session()
        assert shim.stopped == [STOPPED_DATA]
        assert [p.iccid for p in card.profiles] == [ICCID] and not mid_session(card)
        assert [(a.result, a.detail) for a in driver.audits("download")] == [("ok", "installed")]
        assert driver.audits("cancelSession") == [] and "cancelSession" not in driver.posted
        assert report.batches == 5
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "profileDownloadTriggerResult" and result["verified"]


# -- 3. device limits -------------------------------------------------------------------------------


async def test_a_bpp_segment_larger_than_the_agent_buffer_is_refused_and_the_session_cancelled(
        pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        await peers.download(card.eid, await peers.order())
        agent, _ = make_agent(MemoryLink(driver), card)
        agent.status = replace(agent.status, buffer_size=1024)
        report = await agent.run_session()
        assert report.error is None and report.transport_error is None   # no step the agent refused
        for a in driver.of(A.SendBatch):
            assert all(len(encode_step(s)) <= 1024 for s in a.batch.steps)
        (refused,) = [a for a in driver.audits("deviceLink") if a.result == "refused"]
        assert "LoadBoundProfilePackage is a" in refused.detail and "buffers 1024 bytes" in refused.detail
        assert "cancelSession" in driver.posted and not mid_session(card)       # eUICC and SM-DP+ told
        assert card.profiles == []
        assert [a.result for a in driver.audits("download")] == ["cancelling"]
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "profileDownloadError"          # one result, an error
        assert driver.engine.state_of(card.eid) == "idle"
        print(refused.detail)


# -- 4. idempotent exchanges --------------------------------------------------------------------------


@dataclass
class DownlinkLost:
    """The gateway got uplink number `lose_at` and answered, but the answer never reached the device."""

    inner: MemoryAgentTransport
    lose_at: int
    count: int = 0

    async def exchange(self, payload: bytes, buffer_size: int, size_hint: int | None = None
                       ) -> AsyncIterator[bytes]:
        self.count += 1
        chunks = [c async for c in self.inner.exchange(payload, buffer_size, size_hint)]
        if self.count == self.lose_at:
            raise NetworkError("downlink lost")
        for chunk in chunks:
            yield chunk

    async def close(self) -> None:
        return None


async def lose_the_bpp_downlink(peers: Peers, restart: bool) -> tuple[Any, EngineDriver, MemoryLink]:
    card = peers.card()
    driver = peers.driver()
    link = MemoryLink(driver)
    await peers.download(card.eid, await peers.order())
    agent, _ = make_agent(link, card)
    agent.transport = DownlinkLost(MemoryAgentTransport(link, card.eid), lose_at=4)   # PrepareDownload's Result
    first = await agent.run_session()
    assert first.transport_error is not None and card.profiles == []
    if restart:
        await driver.restart()
    await agent.run_session()                   # the agent sends the same Result again
    return card, driver, link


async def test_a_result_sent_again_gets_the_same_bpp_and_its_consequences_run_once(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card, driver, link = await lose_the_bpp_downlink(peers, restart=False)
        bpps = [a.batch for a in driver.of(A.SendBatch) if is_bpp(BatchMsg(a.batch))]
        assert len(bpps) == 2 and bpps[0] == bpps[1]               # the same batch, same batch_id
        assert driver.posted.count("getBoundProfilePackage") == 1  # PrepareDownload's reply used once
        assert [p.iccid for p in card.profiles] == [ICCID] and not mid_session(card)
        (repeat,) = [a for a in driver.audits("deviceLink") if a.result == "repeat"]
        assert "same downlink again" in repeat.detail and "differs" not in repeat.detail
        assert len(await peers.one_result_per_package(card.eid)) == 1
        assert link.downlink_kinds["ErrorMsg"] == 0


async def test_a_result_sent_again_after_a_restart_gets_the_same_downlink_from_the_session_blob(
        pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card, driver, _ = await lose_the_bpp_downlink(peers, restart=True)
        bpps = [a.batch for a in driver.of(A.SendBatch) if is_bpp(BatchMsg(a.batch))]
        assert len(bpps) == 2 and bpps[0] == bpps[1]
        assert driver.posted.count("getBoundProfilePackage") == 1
        assert [p.iccid for p in card.profiles] == [ICCID] and not mid_session(card)
        assert len(await peers.one_result_per_package(card.eid)) == 1


# -- 4, pure: the repeat's window, state by state ------------------------------------------------------

EID = bytes.fromhex("89049032123451234512345678901235")
NO_PACKAGE = esipa.encode_from_eim("getEimPackageResponse", ("eimPackageError", 1))
SECOND_EIM = codec.encode("GetEimConfigurationDataResponse", {
    "eimConfigurationDataList": [{"eimId": "eim-2", "eimFqdn": "eim2.example"}]})


def first_contact(eng: Engine) -> A.SendBatch:
    """Hello, the poll answered: the first-contact batch [RetrieveNotificationsList, GetEimConfigurationData]."""
    (poll,) = [a for a in eng.handle(E.DeviceHello(EID, 0.0, DeviceStatus(EID))) if isinstance(a, A.PostEsipa)]
    (batch,) = [a for a in eng.handle(E.BackhaulAnswered(EID, 0.1, poll.request_id, NO_PACKAGE))
                if isinstance(a, A.SendBatch)]
    return batch


def found_second_eim(batch_id: int, first_sw: int = 0x6A88) -> E.DeviceResult:
    """Its Result: the eUICC names an eIM the gateway did not know, which must now be polled."""
    return E.DeviceResult(EID, 1.0, BatchResult(batch_id, (StepResult(b"", first_sw), StepResult(SECOND_EIM, 0x9000))))


def of(out: list[A.Action], kind: type[Any]) -> list[Any]:
    return [a for a in out if isinstance(a, kind)]


def test_a_result_repeated_while_its_downlink_is_decided_is_applied_once_and_answered_once() -> None:
    eng = Engine(EngineConfig(eims=(EimEndpoint("eim-1", "eim.example"),), seed=1))
    batch = first_contact(eng)
    out = eng.handle(found_second_eim(batch.batch.batch_id))
    (poll,) = of(out, A.PostEsipa)                       # the new eIM is polled: the downlink waits
    assert poll.eim_id == "eim-2" and of(out, A.SendBatch) == []
    again = eng.handle(found_second_eim(batch.batch.batch_id, first_sw=0x6A80))   # the agent timed out
    assert of(again, A.PostEsipa) == [] and [a for a in again if isinstance(a, A.DOWNLINKS)] == []
    (note,) = [a for a in again if isinstance(a, A.Audit) and a.result == "repeat"]
    assert "answered when ready" in note.detail and "differs from the first, which stands" in note.detail
    out = eng.handle(E.BackhaulAnswered(EID, 2.0, poll.request_id, NO_PACKAGE))
    (reply,) = [a for a in out if isinstance(a, A.DOWNLINKS)]     # one downlink, for the newest uplink
    assert eng.sessions[EID].eims == [{"eimId": "eim-2", "eimFqdn": "eim2.example"}]


def test_a_pending_result_survives_a_restart_and_its_repeat_is_answered_without_running_again() -> None:
    config = EngineConfig(eims=(EimEndpoint("eim-1", "eim.example"),), seed=1)
    eng = Engine(config)
    batch = first_contact(eng)
    out = eng.handle(found_second_eim(batch.batch.batch_id))
    (saved,) = of(out, A.SaveSession)
    (poll,) = of(out, A.PostEsipa)
    restarted = Engine(config)                           # the gateway died with the uplink pending
    restarted.restore(EID, saved.blob)
    (reposted,) = of(restarted.resume(5.0), A.PostEsipa)
    assert reposted.body == poll.body
    out = restarted.handle(E.BackhaulAnswered(EID, 6.0, reposted.request_id, NO_PACKAGE))
    assert [a for a in out if isinstance(a, A.DOWNLINKS)] == []   # nobody is waiting since the restart
    out = restarted.handle(found_second_eim(batch.batch.batch_id))  # the agent sends its Result again
    assert of(out, A.PostEsipa) == []
    (reply,) = [a for a in out if isinstance(a, A.DOWNLINKS)]
    assert isinstance(reply, A.SendBatch | A.ReplyIdle)


def test_a_result_is_answered_the_same_until_the_next_result_or_a_hello_and_refused_after() -> None:
    eng = Engine(EngineConfig(eims=(EimEndpoint("eim-1", "eim.example"),), seed=1))
    batch = first_contact(eng)
    failed = E.DeviceResult(EID, 1.0, BatchResult(batch.batch.batch_id, (StepResult(b"", 0x6A88),), "unexpected-sw"))
    (first,) = of(eng.handle(failed), A.SendBatch)          # the reads are asked again
    (saved,) = of(eng.handle(failed), A.SaveSession)
    eng.restore(EID, saved.blob)                             # the kept downlink is in the blob
    out = eng.handle(failed)
    assert of(out, A.SendBatch) == [first] and eng.sessions[EID].counter == first.batch.batch_id
    nxt = E.DeviceResult(EID, 2.0, BatchResult(first.batch.batch_id, (StepResult(b"", 0x6A88),), "unexpected-sw"))
    assert len(of(eng.handle(nxt), A.SendBatch)) == 1
    (late,) = [a for a in eng.handle(failed) if isinstance(a, A.DOWNLINKS)]   # older than the window
    assert isinstance(late, A.ReplyError) and late.code == 6
    eng.handle(E.DeviceHello(EID, 3.0, DeviceStatus(EID)))
    (after_hello,) = [a for a in eng.handle(nxt) if isinstance(a, A.DOWNLINKS)]
    assert isinstance(after_hello, A.ReplyError)


async def test_an_eim_package_too_large_for_the_agent_buffer_gets_one_error_result_and_never_runs(
        pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        agent, _ = make_agent(MemoryLink(driver), card)
        agent.status = replace(agent.status, buffer_size=512)
        package = await peers.queue(card.eid, "eco", {"operations": [{
            "op": "addEim", "eimId": "eim-2", "eimFqdn": "two.example", "counterValue": 0,
            "eimCertificate": base64.b64encode(pki.eim_sign.cert_der).decode()}]})
        report = await agent.run_session()
        assert report.error is None and report.transport_error is None
        (refused,) = [a for a in driver.audits("deviceLink") if a.result == "refused"]
        assert "LoadEuiccPackage is a" in refused.detail and "buffers 512 bytes" in refused.detail
        result = (await peers.one_result_per_package(card.eid))[package["packageId"]]
        assert result["kind"] != "euiccPackageResultSigned", result
        assert [e.eim_id for e in card.state.eims] == ["ipae-test-eim"] and card.state.eims[0].counter == 0
        print(result["kind"], refused.detail)


EMPTY_LIST = codec.encode("RetrieveNotificationsListResponse", ("notificationList", []))
FIRST_EIM = codec.encode("GetEimConfigurationDataResponse", {
    "eimConfigurationDataList": [{"eimId": "eim-1", "eimFqdn": "eim.example"}]})
DATA_REQUEST = esipa.encode_from_eim("getEimPackageResponse", ("ipaEuiccDataRequest", {"tagList": b"\x80"}))


def test_a_result_repeated_after_its_idle_is_handled_as_a_hello_and_gets_the_work_that_came_since() -> None:
    eng = Engine(EngineConfig(eims=(EimEndpoint("eim-1", "eim.example"),), seed=1))
    batch = first_contact(eng)
    read = E.DeviceResult(EID, 1.0, BatchResult(batch.batch.batch_id, (StepResult(EMPTY_LIST, 0x9000),
                                                                      StepResult(FIRST_EIM, 0x9000))))
    (idle,) = [a for a in eng.handle(read) if isinstance(a, A.DOWNLINKS)]
    assert isinstance(idle, A.ReplyIdle)                          # nothing to do: that Idle is lost
    again = eng.handle(replace(read, now=2.0))                    # the agent sends its Result again
    (poll,) = of(again, A.PostEsipa)                              # a wake: the eIM is asked, as for a Hello
    assert poll.function == "GetEimPackage" and [a for a in again if isinstance(a, A.DOWNLINKS)] == []
    (note,) = [a for a in again if isinstance(a, A.Audit) and a.result == "repeat"]
    assert "handled as a Hello" in note.detail
    out = eng.handle(E.BackhaulAnswered(EID, 2.1, poll.request_id, DATA_REQUEST))
    (work,) = [a for a in out if isinstance(a, A.DOWNLINKS)]
    assert isinstance(work, A.SendBatch)                          # the package that came since the Idle
    assert work.batch.steps[0].apdus[0][5:7] == b"\xbf\x52"
    (third,) = [a for a in eng.handle(replace(read, now=3.0)) if isinstance(a, A.DOWNLINKS)]
    assert third == work                                          # a further copy: the same batch, not run twice
    assert len([a for a in eng.sessions[EID].queue]) == 0 and eng.state_of(EID).startswith("eim_data")


def test_a_result_repeated_after_its_idle_with_nothing_new_gets_idle_again() -> None:
    eng = Engine(EngineConfig(eims=(EimEndpoint("eim-1", "eim.example"),), seed=1))
    batch = first_contact(eng)
    read = E.DeviceResult(EID, 1.0, BatchResult(batch.batch.batch_id, (StepResult(EMPTY_LIST, 0x9000),
                                                                      StepResult(FIRST_EIM, 0x9000))))
    eng.handle(read)
    (poll,) = of(eng.handle(replace(read, now=2.0)), A.PostEsipa)
    (reply,) = [a for a in eng.handle(E.BackhaulAnswered(EID, 2.1, poll.request_id, NO_PACKAGE))
                if isinstance(a, A.DOWNLINKS)]
    assert isinstance(reply, A.ReplyIdle)
