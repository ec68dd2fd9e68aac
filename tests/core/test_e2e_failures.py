"""Failure paths end to end against the real SM-DP+ and eIM peers: after each, the eUICC has
no open RSP session, the servers were told (cancelSession once the eUICC could sign a
cancellation), and the eIM holds exactly one result per package (read back through its admin
API). The refusals are the peers' own (wrong SM-DP+ address, an order bound to another EID,
an expired order); outages are the peers really stopped; malformed answers are rewritten on
the wire by the driver. Software eUICC with fault injection, reference agent, counting
in-memory device link (tests/core/driver.py).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.core import actions as A
from gateway.core.events import OperatorAction
from gateway.links.memory import MemoryLink
from hil.euicc import Faults, PowerLoss
from hil.pki import RspPki
from tests.core.driver import ICCID, EngineDriver, Peers, make_agent, mid_session, restart_server, running_peers

SMALL = 1024   # profile size for the matrices: every ES10b command kind, few BPP segments


def smdp_sessions_open(peers: Peers) -> list[str]:
    """RSP sessions the SM-DP+ still holds open (in-process view of the peer's state)."""
    return [s.state for s in peers.smdp.service.sessions.values() if s.state != "closed"]


async def download_error(peers: Peers, eid: bytes) -> dict[str, Any]:
    ((_, result),) = (await peers.one_result_per_package(eid)).items()
    assert result["kind"] == "profileDownloadError", result
    return result


async def smdp_gone_after_authenticate_client(peers: Peers) -> tuple[Any, EngineDriver, Any]:
    """A download whose SM-DP+ stops after AuthenticateClient, run until the engine's request
    retries (request_backoff: 3 attempts) are spent: (card, driver, agent)."""
    card = peers.card()
    driver = peers.driver()
    await peers.download(card.eid, await peers.order(size=SMALL))
    driver.after["authenticateClient"] = peers.smdp.stop
    agent, _ = make_agent(MemoryLink(driver), card)
    await agent.run_session()
    for _ in range(6):
        await driver.advance(120)
    return card, driver, agent


async def test_smdp_refusing_initiate_authentication_ends_with_one_error_and_no_session(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        activation = await peers.order(size=SMALL)
        peers.smdp.service.set_address("elsewhere.example")      # 8.8.1: not this SM-DP+'s address
        await peers.download(card.eid, activation)
        agent, _ = make_agent(MemoryLink(driver), card)
        report = await agent.run_session()
        assert report.error is None and not mid_session(card) and card.profiles == []
        assert "cancelSession" not in driver.posted               # nothing to cancel before AuthenticateServer
        await download_error(peers, card.eid)


@pytest.mark.parametrize("refusal", ["authenticateClient", "getBoundProfilePackage"])
async def test_smdp_refusing_after_authenticate_server_cancels_on_the_euicc_and_tells_the_server(
        pki: RspPki, refusal: str) -> None:
    clock = {"now": time.time()}
    async with running_peers(pki, smdp_clock=lambda: clock["now"]) as peers:
        card = peers.card()
        driver = peers.driver()
        if refusal == "authenticateClient":                        # 8.1.1: the order is for another EID
            activation = await peers.order(size=SMALL, eid="89049032000000000000000000000256")
        else:                                                      # 8.8.5: the order expires meanwhile
            activation = await peers.order(size=SMALL, ttlS=60)

            async def expire() -> None:
                clock["now"] += 120
            driver.after["authenticateClient"] = expire
        await peers.download(card.eid, activation)
        agent, _ = make_agent(MemoryLink(driver), card)
        report = await agent.run_session()
        assert report.error is None and not mid_session(card) and card.profiles == []
        assert driver.posted.count("cancelSession") == 1          # the SM-DP+ was told
        assert [a.result for a in driver.audits("cancelSession")] == ["ok"]   # the eUICC signed it
        assert smdp_sessions_open(peers) == []
        await download_error(peers, card.eid)


async def test_smdp_outage_is_retried_with_backoff_then_the_download_completes(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        await peers.download(card.eid, await peers.order(size=SMALL))
        driver.after["authenticateClient"] = peers.smdp.stop      # gone before getBoundProfilePackage
        agent, _ = make_agent(MemoryLink(driver), card)
        first = await agent.run_session()                         # told to come back when the retry is due
        assert first.idle_after_s is not None and first.idle_after_s <= 60
        assert card.profiles == [] and driver.posted.count("getBoundProfilePackage") == 1
        await restart_server(peers.smdp)
        await driver.advance(120)                                 # the retry timer fires: the BPP is fetched
        await agent.run_session()
        assert [p.iccid for p in card.profiles] == [ICCID] and not mid_session(card)
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "profileDownloadTriggerResult" and result["verified"]


async def test_smdp_unreachable_until_retries_run_out_cancels_with_reason_timeout(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card, driver, agent = await smdp_gone_after_authenticate_client(peers)
        assert len([a for a in driver.audits("backhaul") if a.result == "retry"]) >= 2
        await restart_server(peers.smdp)
        await agent.run_session()
        assert not mid_session(card) and card.profiles == []
        await download_error(peers, card.eid)
        (order,) = await peers.orders()
        assert order["state"] == "released"                       # cancelled with a reason that keeps it
        cancels = driver.audits("cancelSession")
        assert cancels and cancels[-1].result == "ok"
        assert driver.posted.count("cancelSession") >= 1


async def test_a_cancellation_the_smdp_cannot_take_waits_as_a_delivery_and_reaches_it_once_it_is_back(
        pki: RspPki) -> None:
    """The eUICC's signed CancelSession is owed to the SM-DP+ like a notification: with the
    SM-DP+ down it waits (counted with what waits for the backhaul), retried on backoff, and
    the SM-DP+ hears it exactly once when it returns, hours later."""
    async with running_peers(pki) as peers:
        card, driver, agent = await smdp_gone_after_authenticate_client(peers)
        await agent.run_session()                                  # the eUICC cancels; the SM-DP+ is down
        assert not mid_session(card)
        (waiting,) = driver.of(A.BackhaulWaiting)[-1].waiting
        assert (waiting.kind, waiting.function, waiting.state) == ("cancellation", "cancelSession", "WAITING")
        assert driver.audits("deliverCancellation") == []          # not heard yet
        await restart_server(peers.smdp)
        for _ in range(12):
            await driver.advance(3600)
            if driver.audits("deliverCancellation"):
                break
        (order,) = await peers.orders()
        assert order["state"] == "released"                        # reason timeout: the order stays available
        assert [a.result for a in driver.audits("deliverCancellation")] == ["ok"]
        assert driver.of(A.BackhaulWaiting)[-1].waiting == ()
        await download_error(peers, card.eid)                      # and the eIM its one result


async def test_eim_unreachable_leaves_packages_with_the_eim_and_nothing_runs(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        await peers.download(card.eid, await peers.order(size=SMALL))
        await peers.eim.stop()
        agent, _ = make_agent(MemoryLink(driver), card)
        report = await agent.run_session()
        assert report.batches == 1                 # only the first-contact reads
        assert report.idle_after_s is not None     # told when the poll will be retried
        assert [f for f in driver.posted if f[0].islower()] == [] and card.profiles == []
        await restart_server(peers.eim)
        await driver.advance(60)                   # the retried poll fetches the trigger
        await agent.run_session()
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "profileDownloadTriggerResult"


async def test_device_vanishing_mid_bpp_ends_with_one_error_result_and_no_open_session(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card(faults=Faults(tear_after_bpp_segments=6))
        driver = peers.driver()
        await peers.download(card.eid, await peers.order())
        link = MemoryLink(driver)
        agent, _ = make_agent(link, card)
        with pytest.raises(PowerLoss):
            await agent.run_session()
        card.power_cycle()
        agent, _ = make_agent(link, card)           # the sensor rebooted: the batch result is gone
        await agent.run_session()
        assert not mid_session(card) and card.profiles == []
        # the eUICC recorded the interrupted installation as a signed error result: that is the
        # one result the eIM gets, and the SM-DP+ gets it as the install notification
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "profileDownloadTriggerResult" and result["verified"]
        assert "errorResult" in result["decoded"]["profileInstallationResultData"]["finalResult"]
        (note,) = await peers.smdp_notifications()
        assert note["event"] == "install" and note["verified"] and note["detail"].startswith("errorResult")
        assert [o["state"] for o in await peers.orders()] == ["failed"]
        assert card.notifications == []
        assert any(a.result == "lost" for a in driver.of(A.Audit))


DOWNLOAD_COMMANDS = 54   # APDUs the card receives in a clean download of the SMALL profile


async def test_the_fault_matrix_covers_every_command_of_a_clean_download(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card(faults=Faults())
        await peers.download(card.eid, await peers.order(size=SMALL))
        agent, _ = make_agent(MemoryLink(peers.driver()), card)
        await agent.run_session()
        assert [p.iccid for p in card.profiles] == [ICCID]
        assert card.faults.commands_seen == DOWNLOAD_COMMANDS


@pytest.mark.parametrize("n", range(1, DOWNLOAD_COMMANDS + 1))
async def test_euicc_error_status_at_any_command_of_a_download_leaves_no_session_and_one_result(
        pki: RspPki, n: int) -> None:
    async with running_peers(pki) as peers:
        card = peers.card(faults=Faults(sw_on_command={n: 0x6F00}))
        driver = peers.driver()
        await peers.download(card.eid, await peers.order(size=SMALL))
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()
        await agent.run_session()                   # a later wake finishes what is left
        assert not mid_session(card)
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        if result["kind"] == "profileDownloadTriggerResult":
            assert [p.iccid for p in card.profiles] == [ICCID]
        else:
            assert card.profiles == []
            if "authenticateClient" in driver.posted:
                assert driver.posted.count("cancelSession") == 1
                assert smdp_sessions_open(peers) == []


async def test_lost_load_euicc_package_response_is_recovered_from_the_euicc_not_resent(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        await peers.psmo(card.eid, {"op": "getRAT"})
        agent, backend = make_agent(MemoryLink(peers.driver()), card)
        original = backend.transmit
        armed = [True]

        def transmit(apdu: bytes) -> bytes:          # the response carrying the result is lost: the package ran
            out = original(apdu)
            if armed[0] and apdu[1] == 0xE2 and apdu[5:7] == b"\xbf\x51":
                armed[0] = False
                return b"\x6f\x00"
            return out

        backend.transmit = transmit  # type: ignore[method-assign]
        await agent.run_session()
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "euiccPackageResultSigned" and result["verified"]
        assert card.state.eims[0].counter == 1      # ran once
        assert card.notifications == []


async def test_operator_cancel_mid_download_cancels_on_the_euicc_and_at_the_smdp(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        await peers.download(card.eid, await peers.order(size=SMALL))

        async def cancel() -> None:
            await driver.run([OperatorAction(card.eid, driver.now, "cancel")])
        driver.after["authenticateClient"] = cancel
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()
        assert not mid_session(card) and card.profiles == []
        assert driver.posted.count("cancelSession") == 1
        (order,) = await peers.orders()
        assert order["state"] == "cancelled"                       # endUserRejection ends the order
        await download_error(peers, card.eid)
        # the authenticateClient answer came after the cancel let go of it: stale, not audited
        (stale,) = driver.of(A.StaleAnswer)
        assert stale.reason == A.STALE_CANCELLED
        assert [a for a in driver.of(A.Audit) if a.operation == "backhaul"] == []


GARBAGE = [b"", b"{}", b"not json", b'{"header": {"functionExecutionStatus": {"status": "Executed-Success"}}}',
           b'{"header": {"functionExecutionStatus": {"status": "Executed-Success"}}, "transactionId": "00",'
           b' "boundProfilePackage": "vyQA"}', bytes(range(256))]


@pytest.mark.parametrize("function", ["initiateAuthentication", "authenticateClient", "getBoundProfilePackage"])
@pytest.mark.parametrize("body", GARBAGE, ids=range(len(GARBAGE)))
async def test_a_malformed_smdp_answer_ends_the_download_cleanly(pki: RspPki, function: str, body: bytes) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        driver.rewrite[function] = body
        await peers.download(card.eid, await peers.order(size=SMALL))
        agent, _ = make_agent(MemoryLink(driver), card)
        report = await agent.run_session()
        assert report.error is None and not mid_session(card) and card.profiles == []
        await download_error(peers, card.eid)
        assert driver.posted.count("cancelSession") == (0 if function == "initiateAuthentication" else 1)
        if function != "initiateAuthentication":
            assert smdp_sessions_open(peers) == []


PACKAGE_COMMANDS = 19   # APDUs the card receives for one clean EuiccPackageRequest session


async def test_the_package_fault_matrix_covers_every_command_of_a_clean_package_session(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card(faults=Faults())
        await peers.psmo(card.eid, {"op": "getRAT"})
        agent, _ = make_agent(MemoryLink(peers.driver()), card)
        await agent.run_session()
        assert card.state.eims[0].counter == 1
        assert card.faults.commands_seen == PACKAGE_COMMANDS


@pytest.mark.parametrize("n", range(1, PACKAGE_COMMANDS + 1))
async def test_euicc_error_status_at_any_command_of_a_package_gives_exactly_one_result(pki: RspPki, n: int) -> None:
    async with running_peers(pki) as peers:
        card = peers.card(faults=Faults(sw_on_command={n: 0x6F00}))
        await peers.psmo(card.eid, {"op": "getRAT"})
        agent, _ = make_agent(MemoryLink(peers.driver()), card)
        await agent.run_session()
        await agent.run_session()
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()   # exactly one result
        ran = card.state.eims[0].counter == 1
        if result["kind"] == "euiccPackageResultSigned":
            assert ran and result["verified"]
        else:
            assert result["kind"] == "eimPackageResultResponseError" and not ran
        assert card.notifications == []               # the kept result was removed after the ack



async def test_indirect_download_refused_by_the_smdp_is_cancelled_through_the_eim(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card(indirect=True)
        driver = peers.driver()
        activation = await peers.order(size=SMALL, eid="89049032000000000000000000000256")   # another EID's
        await peers.download(card.eid, activation)
        agent, _ = make_agent(MemoryLink(driver), card)
        report = await agent.run_session()
        assert report.error is None and not mid_session(card) and card.profiles == []
        assert [f for f in driver.posted if f[0].islower()] == []          # never the SM-DP+ directly
        assert driver.posted.count("CancelSession") == 1                   # told through the eIM
        assert [a.result for a in driver.audits("cancelSession")] == ["ok"]
        assert smdp_sessions_open(peers) == []                             # the eIM relayed it
        await download_error(peers, card.eid)
