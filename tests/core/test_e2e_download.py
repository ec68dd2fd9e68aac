"""End to end, profile download: the engine against the real SM-DP+ and eIM peers (hil/peers,
HTTPS with the test PKI) and a software eUICC behind the reference agent, over the in-memory
device link that counts round trips (tests/core/driver.py). What each server received is
read back through its admin API.
"""

from __future__ import annotations

import asyncio

from gateway.core import actions as A
from gateway.links.memory import MemoryLink
from hil import rspcrypto
from hil.euicc import Faults
from hil.pki import RspPki
from tests.core.driver import ICCID, ICCID_DIGITS, make_agent, mid_session, restart_server, running_peers
from tests.core.peers import MiniSmds


async def test_direct_download_then_enable_of_a_30kb_profile_takes_six_exchanges(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        link = MemoryLink(driver)
        await peers.download(card.eid, await peers.order())
        await peers.psmo(card.eid, {"op": "enable", "iccid": ICCID_DIGITS})
        agent, backend = make_agent(link, card)

        report = await agent.run_session()

        assert report.error is None and report.transport_error is None
        assert [(p.iccid, p.state) for p in card.profiles] == [(ICCID, "enabled")]
        assert not card.session_open and card.notifications == []   # install, enable, EPR removed
        assert report.batches == 6 and link.counters(card.eid).batches == 6   # trigger -> ... -> all removed
        assert report.exchanges == 7                    # the 7th uplink carries the last results: Idle
        assert report.downlink_bytes > 30_000           # the whole BPP went down in one of them
        assert backend.refreshes == ["uicc-reset"]      # after the enable
        notes = await peers.smdp_notifications()
        assert [(n["event"], n["verified"]) for n in notes] == [("install", True), ("enable", True)]
        assert [o["state"] for o in await peers.orders()] == ["installed"]
        results = await peers.one_result_per_package(card.eid)
        assert [(r["kind"], r["verified"]) for r in results.values()] == [
            ("profileDownloadTriggerResult", True), ("euiccPackageResultSigned", True)]
        hinted = [a.batch for a in driver.of(A.SendBatch) if a.batch.next_size_hint is not None]
        assert [(b.steps[0].apdus[0][5:7], b.next_size_hint) for b in hinted] == [
            (b"\xbf\x2e", 2048),           # the challenge: AuthenticateServer follows
            (b"\xbf\x21", 32 * 1024)]      # PrepareDownload: the BPP follows


async def test_the_eim_gets_the_installation_result_byte_for_byte_as_the_euicc_signed_it(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        await peers.download(card.eid, await peers.order(size=2048))
        agent, _ = make_agent(MemoryLink(peers.driver()), card)
        await agent.run_session()
        (install,) = await peers.smdp_notifications()
        (result,) = await peers.results(card.eid)
        assert install["der"][:4] == "bf37" and result["der"] == install["der"]   # spliced, not re-encoded
        assert result["verified"]


async def test_bpp_is_split_over_exchanges_only_when_the_device_bounds_its_batch(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        await peers.download(card.eid, await peers.order())
        agent, _ = make_agent(MemoryLink(driver), card, max_batch_bytes=8192)
        report = await agent.run_session()
        assert [p.iccid for p in card.profiles] == [ICCID]
        assert report.batches > 6
        assert all(sum(len(x) for s in a.batch.steps for x in s.apdus) <= 8192 for a in driver.of(A.SendBatch))
        await peers.one_result_per_package(card.eid)


async def test_notifications_reach_the_smdp_after_its_outage_and_leave_the_euicc_only_once_it_has_them(
        pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        await peers.download(card.eid, await peers.order(size=2048))
        await peers.psmo(card.eid, {"op": "enable", "iccid": ICCID_DIGITS})
        driver.after["getBoundProfilePackage"] = peers.smdp.stop   # the SM-DP+ goes away with the BPP sent
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()
        assert [(p.iccid, p.state) for p in card.profiles] == [(ICCID, "enabled")]
        # the eIM acknowledged the installation result it got in its ProfileDownloadTriggerResult,
        # but the notification is addressed to the SM-DP+: both stay on the eUICC until it has them
        assert [n.event for n in card.notifications] == ["install", "enable"]
        await driver.advance(3 * 3600)                                 # retries while it is down
        assert not [a for a in driver.audits("deliverNotification") if "to " + peers.smdp.address in a.detail
                    and a.result == "ok"]
        await restart_server(peers.smdp)
        await driver.advance(2 * 3600)                                 # the next retries deliver both
        assert sorted(n["event"] for n in await peers.smdp_notifications()) == ["enable", "install"]
        assert [n.event for n in card.notifications] == ["install", "enable"]   # removal waits for the device
        await agent.run_session()
        assert card.notifications == []
        assert [o["state"] for o in await peers.orders()] == ["installed"]
        await peers.one_result_per_package(card.eid)
        # the profile state changes, in structured form (what the runtime's webhooks read)
        delivered = [a for a in driver.audits("deliverNotification") if a.result == "ok"]
        removed = [a for a in driver.audits("removeNotification") if a.result == "ok"]
        assert sorted((a.event, a.iccid) for a in delivered) == [("enable", ICCID), ("install", ICCID)]
        assert sorted((a.event, a.iccid) for a in removed if a.event) == [("enable", ICCID), ("install", ICCID)]
        assert {a.seq for a in delivered} == {a.seq for a in removed if a.event}
        assert all(a.detail.startswith(f"seq {a.seq} (") for a in removed)     # the text is unchanged
        assert all(a.event is None for a in removed if a.detail.endswith("(result)"))


async def test_contact_smds_retrieves_the_event_then_downloads_from_its_smdp(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        activation = await peers.order(size=2048, eid=card.eid.hex(), matchingId="EVT-1")
        driver.smds = MiniSmds(pki, events=[("EVT-1", peers.smdp.address)])
        await peers.queue(card.eid, "download", {"contactSmds": "smds.example"})
        agent, _ = make_agent(MemoryLink(driver), card)
        report = await agent.run_session()
        assert activation.endswith("$EVT-1")
        assert driver.smds.calls == ["initiateAuthentication", "authenticateClient"]
        assert [p.iccid for p in card.profiles] == [ICCID] and not card.session_open
        assert report.batches == 7     # + [GetEuiccChallenge, GetEUICCInfo1] and AuthenticateServer for the SM-DS
        assert card.notifications == []
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "profileDownloadTriggerResult" and result["verified"]


async def test_contact_smds_without_an_event_ends_with_one_error_result(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        driver.smds = MiniSmds(pki, events=[])
        await peers.queue(card.eid, "download", {"contactSmds": "smds.example"})
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()
        assert card.profiles == [] and not mid_session(card)
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "profileDownloadError"


async def test_contact_default_smdp_uses_the_address_the_eim_set_on_the_euicc(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver(peers.config(default_smdp="gateway-default.example"))
        await peers.order(size=2048, eid=card.eid.hex(), matchingId="")   # the EID's default order
        await peers.psmo(card.eid, {"op": "setDefaultDpAddress", "defaultDpAddress": peers.smdp.address})
        await peers.queue(card.eid, "download", {"contactDefaultSmdp": True})
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()
        assert [p.iccid for p in card.profiles] == [ICCID]
        assert {a.smdp_address for a in driver.of(A.PostEs9)} == {peers.smdp.address}
        assert len(await peers.one_result_per_package(card.eid)) == 2


async def test_twenty_devices_download_concurrently_without_disturbing_each_other(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        driver = peers.driver(peers.config(seed=9))
        link = MemoryLink(driver)
        cards = []
        for n in range(20):
            eid = bytes.fromhex(rspcrypto.eid_with_check_digits(f"890490320000000000077{n:09d}"))
            faults = Faults(sw_on_command={30: 0x6F00}) if n == 0 else None   # one device's eUICC glitches
            card = peers.card(eid, faults=faults)
            cards.append(card)
            await peers.download(eid, await peers.order(size=2048, iccid=f"8900012345678901{n:04d}"))
        agents = [make_agent(link, c)[0] for c in cards]
        reports = await asyncio.gather(*(a.run_session() for a in agents))
        assert all(r.error is None for r in reports)
        assert cards[0].profiles == [] and not mid_session(cards[0])
        assert all(len(c.profiles) == 1 and not c.notifications for c in cards[1:])
        for card in cards:
            await peers.one_result_per_package(card.eid)
        assert len(driver.engine.sessions) == 20
        assert {link.counters(c.eid).batches for c in cards[1:]} == {5}
