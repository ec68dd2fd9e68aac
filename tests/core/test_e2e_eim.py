"""End-to-end eIM procedures: packages polled and pushed, several eIMs, data requests,
acknowledgements, discovery, indirect download, ePRAndNotifications.

The eIM and SM-DP+ are the in-test responders of tests/core/peers.py (the real peers in
hil/peers come later); the software eUICC, the reference agent and the in-memory device link
are the real ones.
"""

from __future__ import annotations

from typing import Any

from gateway.core import actions as A
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.core.events import EimPackageReceived
from gateway.links.memory import MemoryLink
from gateway.spec import codec
from hil.euicc import SoftEuicc
from hil.euicc.eim import eim_config_from
from hil.pki import RspPki
from tests.core.peers import MiniEim, MiniSmdp
from tests.core.rig import EngineRig, make_agent

ICCID = bytes.fromhex("98001032547698103214")


def card_with(pki: RspPki, *eims: MiniEim, indirect: bool = False) -> SoftEuicc:
    card = SoftEuicc(pki, pki.eid_bytes)
    for eim in eims:
        data = eim.initial_eim()
        if indirect:
            data["indirectProfileDownload"] = None
        card.state.eims.append(eim_config_from(card, data))
    card.commit()
    return card


def rig_for(pki: RspPki, eim: MiniEim, **config: Any) -> EngineRig:
    engine = Engine(EngineConfig(seed=3, **config))
    return EngineRig(engine, MiniSmdp(pki), eim)


def audits(rig: EngineRig, operation: str) -> list[A.Audit]:
    return [a for a in rig.actions if isinstance(a, A.Audit) and a.operation == operation]


async def test_first_contact_adds_the_initial_eim_then_polls_it_and_runs_its_package(pki: RspPki) -> None:
    eim = MiniEim(pki)
    card = card_with(pki)                                   # no eIM on the eUICC yet
    rig = rig_for(pki, eim, initial_eim=eim.initial_eim())
    eim.queue_package(card.eid, eim.euicc_package_request(card.eid, [("listEim", {})], b"\x10", "ecoList"))
    agent, _ = make_agent(MemoryLink(rig), card)
    report = await agent.run_session()
    assert report.error is None
    assert [e.eim_id for e in card.state.eims] == [eim.eim_id]
    assert len(eim.polls) >= 1
    (result,) = eim.results_of()
    assert result[0] == "euiccPackageResult" and result[1][0] == "euiccPackageResultSigned"
    assert card.notifications == []                         # the result was removed after the ack


async def test_pushed_package_runs_on_next_wake_and_a_duplicate_push_is_not_run_twice(pki: RspPki) -> None:
    eim = MiniEim(pki)
    card = card_with(pki, eim)
    rig = rig_for(pki, eim, eims=(EimEndpoint(eim.eim_id, eim.fqdn),))
    package = eim.euicc_package_request(card.eid, [("getRAT", {})], b"\x20")
    push = EimPackageReceived(card.eid, rig.now, eim.eim_id, eim.transfer(package), "push", "inbox-1")
    rig.run([push, EimPackageReceived(card.eid, rig.now, eim.eim_id, eim.transfer(package), "push", "inbox-2")])
    marks = [(a.key, a.state) for a in rig.actions if isinstance(a, A.MarkInbox)]
    assert ("inbox-2", "duplicate") in marks
    agent, _ = make_agent(MemoryLink(rig), card)
    await agent.run_session()
    assert len(eim.results) == 1
    rig.run([EimPackageReceived(card.eid, rig.now, eim.eim_id, eim.transfer(package), "push", "inbox-3")])
    await agent.run_session()
    assert len(eim.results) == 1                            # same transaction id: refused, not re-run
    assert ("inbox-3", "duplicate") in [(a.key, a.state) for a in rig.actions if isinstance(a, A.MarkInbox)]
    assert card.state.eims[0].counter == 1


async def test_each_of_several_eims_is_polled_and_gets_its_own_result(pki: RspPki) -> None:
    eim1, eim2 = MiniEim(pki, eim_id="eim-one", fqdn="one.example"), MiniEim(pki, eim_id="eim-two", fqdn="two.example")
    card = card_with(pki, eim1, eim2)
    rig = rig_for(pki, eim1, eims=(EimEndpoint("eim-one", "one.example"), EimEndpoint("eim-two", "two.example")))
    rig.other_eims["eim-two"] = eim2
    eim1.queue_package(card.eid, eim1.euicc_package_request(card.eid, [("getRAT", {})], b"\x31"))
    eim2.queue_package(card.eid, eim2.euicc_package_request(card.eid, [("getRAT", {})], b"\x32"))
    agent, _ = make_agent(MemoryLink(rig), card)
    await agent.run_session()
    assert len(eim1.results) == 1 and len(eim2.results) == 1
    assert b"eim-one" in eim1.results[0] and b"eim-two" in eim2.results[0]
    assert card.notifications == []


async def test_ipa_euicc_data_request_collects_euicc_and_ipa_tags(pki: RspPki) -> None:
    eim = MiniEim(pki)
    card = card_with(pki, eim)
    rig = rig_for(pki, eim, eims=(EimEndpoint(eim.eim_id, eim.fqdn),))
    request = codec.encode("IpaEuiccDataRequest", {"tagList": bytes.fromhex("BF20A9A6"), "eimTransactionId": b"\x40"})
    rig.run([EimPackageReceived(card.eid, rig.now, eim.eim_id, eim.transfer(request), "push", "k")])
    agent, _ = make_agent(MemoryLink(rig), card)
    await agent.run_session()
    ((kind, value),) = eim.results_of()
    assert kind == "ipaEuiccDataResponse" and value[0] == "ipaEuiccData"
    data = value[1]
    assert {"euiccInfo1", "deviceInfo", "euiccCertificate"} <= set(data)
    assert data["euiccCertificate"] == card.identity.certificate_der


async def test_eim_acknowledgements_remove_the_acknowledged_results_from_the_euicc(pki: RspPki) -> None:
    eim = MiniEim(pki)
    card = card_with(pki, eim)
    rig = rig_for(pki, eim, eims=(EimEndpoint(eim.eim_id, eim.fqdn),))
    rig.down.add(eim.eim_id)                                 # results cannot be delivered
    eim.queue_package(card.eid, eim.euicc_package_request(card.eid, [("getRAT", {})], b"\x50"))
    agent, _ = make_agent(MemoryLink(rig), card)
    await agent.run_session()                                # poll fails: nothing runs
    rig.down.clear()
    await agent.run_session()
    assert len(eim.results) == 1
    assert card.notifications == []
    # a result the eIM got by other means (IpaEuiccData) is acknowledged by a push
    rig.down.add(eim.eim_id)
    package = eim.euicc_package_request(card.eid, [("getRAT", {})], b"\x51")
    rig.run([EimPackageReceived(card.eid, rig.now, eim.eim_id, eim.transfer(package), "push", "p")])
    await agent.run_session()
    (kept,) = card.notifications
    assert kept.event == "euiccPackageResult"
    rig.run([EimPackageReceived(card.eid, rig.now, eim.eim_id, eim.transfer(eim.acknowledgements([kept.seq_number])),
                                "push", "ack")])
    await agent.run_session()
    assert card.notifications == []


async def test_plmn_change_is_reported_with_notify_state_change_and_rplmn(pki: RspPki) -> None:
    eim = MiniEim(pki)
    card = card_with(pki, eim)
    rig = rig_for(pki, eim, eims=(EimEndpoint(eim.eim_id, eim.fqdn),))
    link = MemoryLink(rig)
    agent, _ = make_agent(link, card, plmn="26201")
    await agent.run_session()
    assert "notifyStateChange" not in eim.polls[-1]
    agent2, _ = make_agent(link, card, plmn="310410")
    await agent2.run_session()
    assert "notifyStateChange" in eim.polls[-1]
    assert eim.polls[-1]["rPLMN"] == bytes.fromhex("130014")


async def test_indirect_download_goes_through_the_eim_when_the_euicc_says_so(pki: RspPki) -> None:
    eim = MiniEim(pki)
    card = card_with(pki, eim, indirect=True)
    rig = rig_for(pki, eim, eims=(EimEndpoint(eim.eim_id, eim.fqdn),))
    eim.smdp = rig.smdp
    eim.queue_trigger(card.eid, "1$smdp.example$MATCH-9", b"\x60")
    agent, _ = make_agent(MemoryLink(rig), card)
    report = await agent.run_session()
    assert report.error is None
    assert [p.iccid for p in card.profiles] == [ICCID]
    assert eim.relayed == ["initiateAuthenticationRequestEsipa", "authenticateClientRequestEsipa",
                           "getBoundProfilePackageRequestEsipa"]
    assert [k for k, _ in eim.results_of()] == ["profileDownloadTriggerResult"]
    assert card.notifications == []
    assert rig.smdp.notifications == [] and len(eim.notifications) == 1   # relayed by the eIM
    assert rig.of(A.PostEs9) == []                                        # never the SM-DP+ directly


async def test_epr_and_notifications_carries_the_enable_notification_with_the_result(pki: RspPki) -> None:
    eim = MiniEim(pki)
    card = card_with(pki, eim)
    rig = rig_for(pki, eim, eims=(EimEndpoint(eim.eim_id, eim.fqdn),), epr_and_notifications=True)
    eim.queue_trigger(card.eid, "1$smdp.example$MATCH-1", b"\x70")
    eim.queue_package(card.eid, eim.euicc_package_request(card.eid, [("enable", {"iccid": ICCID})], b"\x71"))
    agent, _ = make_agent(MemoryLink(rig), card)
    report = await agent.run_session()
    kinds = [k for k, _ in eim.results_of()]
    assert kinds == ["profileDownloadTriggerResult", "ePRAndNotifications"]
    _, bundle = eim.results_of()[1]
    assert len(bundle["notificationList"]) == 1
    assert len(rig.smdp.notifications) == 1                  # only the install, by ES9+
    assert card.notifications == [] and report.batches == 6


async def test_an_euicc_refusing_the_initial_eim_is_not_asked_again_in_the_same_wake(pki: RspPki) -> None:
    from hil.euicc import Faults
    eim = MiniEim(pki)
    card = SoftEuicc(pki, pki.eid_bytes, faults=Faults(memory_full=True))
    rig = rig_for(pki, eim, initial_eim=eim.initial_eim())
    agent, _ = make_agent(MemoryLink(rig), card)
    report = await agent.run_session()
    assert report.idle_after_s is not None and report.batches == 2   # read, then add + read
    assert card.state.eims == [] and eim.polls == []
    assert any(a.operation == "eimDiscovery" and a.result == "failed" for a in audits(rig, "eimDiscovery"))


async def test_eim_tls_trust_read_from_the_euicc_goes_with_every_esipa_request(pki: RspPki) -> None:
    eim = MiniEim(pki)
    card = SoftEuicc(pki, pki.eid_bytes)
    data = eim.initial_eim()
    data["trustedPublicKeyDataTls"] = ("trustedCertificateTls", pki.eim_tls.cert_der)
    card.state.eims.append(eim_config_from(card, data))
    card.commit()
    rig = rig_for(pki, eim, eims=(EimEndpoint(eim.eim_id, eim.fqdn),))
    agent, _ = make_agent(MemoryLink(rig), card)
    await agent.run_session()                  # first contact: the configuration is read
    await agent.run_session()
    last = [a for a in rig.actions if isinstance(a, A.PostEsipa)][-1]
    assert last.tls_trust == ("certificate", pki.eim_tls.cert_der)
