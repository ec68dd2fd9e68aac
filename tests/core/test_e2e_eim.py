"""End to end, eIM procedures: packages polled and pushed (through the gateway's inject
endpoint), several eIMs, eUICC data requests, acknowledgements, state changes, discovery,
indirect download, ePRAndNotifications.

The eIM and SM-DP+ are the real peers (hil/peers, HTTPS with the test PKI); what the eIM
received is read back through its admin API. Software eUICC, reference agent and the
counting in-memory device link as in tests/core/driver.py.
"""

from __future__ import annotations

import asyncio

from gateway.backhaul.inject_server import InjectServer, server_ssl_context
from gateway.core import actions as A
from gateway.core.events import BackhaulAnswered, Event
from gateway.links.memory import MemoryLink
from gateway.spec import codec
from hil.euicc import Faults, SoftEuicc
from hil.peers.eim import EimServer
from hil.pki import RspPki
from tests.core.driver import ICCID, ICCID_DIGITS, make_agent, restart_server, running_peers


async def test_first_contact_adds_the_initial_eim_then_polls_it_and_runs_its_package(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = SoftEuicc(pki, pki.eid_bytes)                 # no eIM on the eUICC yet
        identity = await peers.admin.get(peers.eim.url + "/admin/eim")
        initial = codec.decode("EimConfigurationData", bytes.fromhex(identity["eimConfigurationData"]))
        driver = peers.driver(peers.config(eims=(), initial_eim=initial))
        await peers.queue(card.eid, "eco", {"operations": [{"op": "listEim"}]})
        agent, _ = make_agent(MemoryLink(driver), card)
        report = await agent.run_session()
        assert report.error is None
        assert [e.eim_id for e in card.state.eims] == [peers.eim.service.eim_id]
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "euiccPackageResultSigned" and result["verified"]
        assert card.notifications == []                      # the result was removed after the ack


async def test_pushed_package_runs_on_next_wake_once_though_pushed_and_polled_again(pki: RspPki) -> None:
    tls = server_ssl_context(str(pki.dptls.cert_path), str(pki.dptls.key_path))
    holder: list[object] = []

    async def on_transfer(body: bytes, binding: str) -> bytes:
        driver = holder[0]
        assert binding == "asn1"
        return await driver.on_transfer(body, binding)  # type: ignore[attr-defined, no-any-return]

    async with InjectServer(on_transfer, tls, port=0) as inject, \
            running_peers(pki, inject_url=f"https://127.0.0.1:{inject.port}") as peers:
        card = peers.card()
        driver = peers.driver()
        holder.append(driver)
        queued = await peers.admin.post(f"{peers.eim.url}/admin/eids/{card.eid.hex()}/psmo",
                                        {"operations": [{"op": "getRAT"}]})
        assert queued["push"] == "eimPackageReceived"        # persisted by the gateway, answered at once
        package = peers.eim.service.devices[card.eid].packages[0]
        assert await peers.eim.service.push(package) == "eimPackageReceived"   # the eIM pushes it again
        (dup,) = [a for a in driver.audits("eimPackage") if a.result == "duplicate"]
        # the inbox entry it shares its key with is the running original's: not marked by the copy
        assert [m.state for m in driver.of(A.MarkInbox)] == ["running"]
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()                            # the wake's poll hands it out once more
        assert card.state.eims[0].counter == 1               # ran once
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "euiccPackageResultSigned" and result["verified"]
        assert card.notifications == []


async def test_each_of_several_eims_is_polled_and_gets_its_own_result(pki: RspPki) -> None:
    async with running_peers(pki) as peers, EimServer(pki, eim_id="eim-two") as second:
        card = peers.card(eims=(peers.eim, second))
        driver = peers.driver(peers.config(eims=(peers.eim, second)))
        await peers.psmo(card.eid, {"op": "getRAT"})
        await peers.queue(card.eid, "psmo", {"operations": [{"op": "listProfileInfo"}]}, eim=second)
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()
        (first_result,) = (await peers.one_result_per_package(card.eid)).values()
        (second_result,) = (await peers.one_result_per_package(card.eid, second)).values()
        signed_first = first_result["decoded"]["euiccPackageResultSigned"]["euiccPackageResultDataSigned"]
        signed_second = second_result["decoded"]["euiccPackageResultSigned"]["euiccPackageResultDataSigned"]
        assert signed_first["eimId"] == peers.eim.service.eim_id and signed_second["eimId"] == "eim-two"
        assert first_result["verified"] and second_result["verified"]
        assert card.notifications == []


async def test_ipa_euicc_data_request_collects_euicc_and_ipa_tags_and_echoes_the_transaction(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        mixed = await peers.queue(card.eid, "ipa-euicc-data",
                                  {"tags": ["euiccInfo1", "deviceInfo", "euiccCertificate"]})
        ipa_only = await peers.queue(card.eid, "ipa-euicc-data", {"tags": ["deviceInfo", "ipaCapabilities"]})
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()
        results = await peers.one_result_per_package(card.eid)   # each matched by its eimTransactionId
        got = results[mixed["packageId"]]
        assert got["kind"] == "ipaEuiccData" and got["verified"]
        assert got["decoded"]["euiccCertificate"] == card.identity.certificate_der.hex()
        assert got["decoded"]["eimTransactionId"] == mixed["eimTransactionId"].lower()
        assert results[ipa_only["packageId"]]["decoded"]["eimTransactionId"] == ipa_only["eimTransactionId"].lower()


async def test_results_wait_on_the_euicc_while_the_eim_is_down_and_its_acknowledgement_removes_them(
        pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        await peers.psmo(card.eid, {"op": "getRAT"})
        driver.after["GetEimPackage"] = peers.eim.stop        # the eIM goes away with the package sent
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()
        assert card.state.eims[0].counter == 1
        assert [n.event for n in card.notifications] == ["euiccPackageResult"]   # kept for the eIM
        await restart_server(peers.eim)
        await driver.advance(3600)                           # the delivery retry reaches it
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["verified"]
        await agent.run_session()                            # the acknowledged result is removed
        assert card.notifications == []


async def test_plmn_change_is_reported_with_notify_state_change_and_rplmn(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        link = MemoryLink(peers.driver())
        agent, _ = make_agent(link, card, plmn="26201")
        await agent.run_session()
        assert (await peers.device(card.eid))["stateChanges"] == []
        agent2, _ = make_agent(link, card, plmn="310410")
        await agent2.run_session()
        (change,) = (await peers.device(card.eid))["stateChanges"]
        assert change["notifyStateChange"] and change["rPLMN"] == "130014"


async def test_indirect_download_goes_through_the_eim_when_the_euicc_says_so(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card(indirect=True)
        driver = peers.driver()
        await peers.download(card.eid, await peers.order(size=2048))
        agent, _ = make_agent(MemoryLink(driver), card)
        report = await agent.run_session()
        assert report.error is None
        assert [p.iccid for p in card.profiles] == [ICCID] and not card.session_open
        assert [f for f in driver.posted if f[0].islower()] == []            # never the SM-DP+ directly
        assert {"InitiateAuthentication", "AuthenticateClient", "GetBoundProfilePackage"} <= set(driver.posted)
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "profileDownloadTriggerResult" and result["verified"]
        assert card.notifications == []
        # the eIM relayed the installation result to the SM-DP+, which closed the order
        assert [o["state"] for o in await peers.orders()] == ["installed"]


async def test_epr_and_notifications_carries_the_enable_notification_with_the_result(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver(peers.config(epr_and_notifications=True))
        await peers.download(card.eid, await peers.order(size=2048))
        await peers.psmo(card.eid, {"op": "enable", "iccid": ICCID_DIGITS})
        agent, _ = make_agent(MemoryLink(driver), card)
        report = await agent.run_session()
        results = await peers.one_result_per_package(card.eid)
        assert [r["kind"] for r in results.values()] == ["profileDownloadTriggerResult", "euiccPackageResultSigned"]
        assert [n["kind"] for n in (await peers.device(card.eid))["notifications"]] == ["otherSignedNotification"]
        assert [n["event"] for n in await peers.smdp_notifications()] == ["install"]   # only it, by ES9+
        assert card.notifications == [] and report.batches == 6


async def test_an_euicc_refusing_the_initial_eim_is_not_asked_again_in_the_same_wake(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = SoftEuicc(pki, pki.eid_bytes, faults=Faults(memory_full=True))
        driver = peers.driver(peers.config(eims=(), initial_eim=peers.eim_data()))
        agent, _ = make_agent(MemoryLink(driver), card)
        report = await agent.run_session()
        assert report.idle_after_s is not None and report.batches == 2   # read, then add + read
        assert card.state.eims == [] and "GetEimPackage" not in driver.posted
        assert any(a.result == "failed" for a in driver.audits("eimDiscovery"))


async def test_eim_tls_trust_read_from_the_euicc_goes_with_every_esipa_request(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver()
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()                  # first contact: the configuration is read
        await agent.run_session()
        last = driver.of(A.PostEsipa)[-1]
        assert last.tls_trust == ("certificate", pki.tls_ca.cert_der)


async def test_an_eim_package_waits_for_the_initial_eim_to_be_added_to_a_fresh_euicc(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = SoftEuicc(pki, pki.eid_bytes)                 # fresh: no eIM yet
        peers.eim.service.register(card.eid, euicc_certificate=card.identity.certificate_der)
        # the configured eIM is polled before the eUICC was read (saves a round trip) ...
        driver = peers.driver(peers.config(initial_eim=peers.eim_data()))
        await peers.psmo(card.eid, {"op": "getRAT"})
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()
        # ... but its package runs only once AddInitialEim gave the eUICC the eIM's key
        assert [e.eim_id for e in card.state.eims] == [peers.eim.service.eim_id]
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["kind"] == "euiccPackageResultSigned" and result["verified"]
        assert card.state.eims[0].counter == 1 and card.notifications == []


async def test_download_enable_and_data_request_work_over_the_esipa_json_binding(pki: RspPki) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        driver = peers.driver(esipa_binding="json")
        await peers.download(card.eid, await peers.order(size=2048))
        await peers.psmo(card.eid, {"op": "enable", "iccid": ICCID_DIGITS})
        await peers.queue(card.eid, "ipa-euicc-data", {"tags": ["euiccInfo2", "deviceInfo"]})
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()
        assert [(p.iccid, p.state) for p in card.profiles] == [(ICCID, "enabled")]
        results = await peers.one_result_per_package(card.eid)
        assert [r["kind"] for r in results.values()] == [
            "profileDownloadTriggerResult", "euiccPackageResultSigned", "ipaEuiccData"]
        assert all(r["verified"] for r in results.values()) and card.notifications == []


async def test_the_software_euicc_echoes_the_eim_transaction_id_whatever_the_tag_list(pki: RspPki) -> None:
    from gateway.spec import apdu
    from gateway.spec.es10b import decode_response, encode_request
    card = SoftEuicc(pki, pki.eid_bytes)
    request = encode_request("IpaEuiccData", {"tagList": bytes.fromhex("BF20"), "eimTransactionId": b"\x01\x02"})
    opened, _ = apdu.split_response(card.transmit(apdu.manage_channel_open()))
    channel = opened[0]
    card.transmit(apdu.with_channel(apdu.select(apdu.ISD_R_AID), channel))
    answer = b""
    for command in apdu.store_data(request):
        answer = card.transmit(apdu.with_channel(command, channel))
    data, sw = apdu.split_response(answer)
    while sw >> 8 == 0x61:
        more, sw = apdu.split_response(card.transmit(apdu.with_channel(apdu.get_response(sw & 0xFF), channel)))
        data += more
    assert sw == 0x9000
    kind, value = decode_response("IpaEuiccData", data)
    assert kind == "ipaEuiccData" and value["eimTransactionId"] == b"\x01\x02" and "euiccInfo1" in value


async def test_a_notification_acknowledged_in_the_result_answer_before_its_own_answer_leaves_that_answer_stale(
        pki: RspPki) -> None:
    """The race behind "backhaul ignored: answer to unknown request": the runtime posts the
    installation result's HandleNotification and the ProvideEimPackageResult at once; the
    eIM's result answer acknowledges the notification's seqNumber before its own answer is in."""
    async with running_peers(pki) as peers:
        card = peers.card(indirect=True)      # its notifications go to the eIM (HandleNotification)
        driver = peers.driver()
        await peers.download(card.eid, await peers.order(size=2048))
        late: list[asyncio.Future[Event | None]] = []
        perform = driver.perform

        async def notification_answered_late(action: A.Action) -> Event | None:
            if isinstance(action, A.PostEsipa) and action.function == "HandleNotification" and not late:
                late.append(asyncio.ensure_future(perform(action)))    # posted now, answered after the rest
                return None
            return await perform(action)

        driver.perform = notification_answered_late  # type: ignore[method-assign]
        agent, _ = make_agent(MemoryLink(driver), card)
        await agent.run_session()
        answer = await late[0]
        assert isinstance(answer, BackhaulAnswered)
        await driver.run([answer])
        (stale,) = driver.of(A.StaleAnswer)
        assert (stale.reason, stale.request_id, stale.eid) == (A.STALE_ACKNOWLEDGED, answer.request_id, card.eid)
        assert [a for a in driver.of(A.Audit) if a.operation == "backhaul"] == []   # nothing audited for it
        (delivered,) = [a for a in driver.audits("deliverNotification") if a.result == "ok"]
        assert (delivered.event, delivered.iccid, delivered.seq) == ("install", ICCID, 1)   # recorded once, by the ack
        assert card.notifications == []                                  # removed after the ack
        ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
        assert result["verified"]
