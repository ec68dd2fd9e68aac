"""End-to-end: the engine against a software eUICC over the in-memory device link.

The SM-DP+ and eIM are small in-test responders (tests/core/peers.py) because the real peers
(hil/peers) do not exist yet; the eUICC (hil.euicc.SoftEuicc), the reference device agent
(hil.agent), the device-link encoding (gateway.links.memory) and all cryptography are real.
"""

from __future__ import annotations

from gateway.core import actions as A
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.links.memory import MemoryLink
from hil.euicc import SoftEuicc
from hil.euicc.eim import eim_config_from
from hil.pki import RspPki
from tests.core.peers import MiniEim, MiniSmdp, MiniSmds
from tests.core.rig import EngineRig, make_agent

ICCID = bytes.fromhex("98001032547698103214")


def provisioned_card(pki: RspPki, eim: MiniEim) -> SoftEuicc:
    """A card as it leaves the factory: its eIM is configured (SGP.32 §3.5)."""
    card = SoftEuicc(pki, pki.eid_bytes)
    card.state.eims.append(eim_config_from(card, eim.initial_eim()))
    card.commit()
    return card


def setup(pki: RspPki, **config: object) -> tuple[EngineRig, MemoryLink, SoftEuicc]:
    smdp = MiniSmdp(pki, address="smdp.example")
    eim = MiniEim(pki)
    card = provisioned_card(pki, eim)
    engine = Engine(EngineConfig(eims=(EimEndpoint(eim.eim_id, eim.fqdn),), seed=7, **config))  # type: ignore[arg-type]
    rig = EngineRig(engine, smdp, eim)
    return rig, MemoryLink(rig), card


async def test_direct_download_then_enable_of_30kb_profile_takes_six_batches(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    eid = card.eid
    rig.eim.queue_trigger(eid, "1$smdp.example$MATCH-1", b"\x01")
    enable = rig.eim.euicc_package_request(eid, [("enable", {"iccid": ICCID})], b"\x02")
    rig.eim.queue_package(eid, enable)
    agent, backend = make_agent(link, card)

    report = await agent.run_session()

    assert report.error is None and report.transport_error is None
    assert [p.iccid for p in card.profiles] == [ICCID]
    assert card.profiles[0].state == "enabled"
    assert not card.session_open
    assert card.notifications == []                  # install, enable notifications and EPR removed
    assert report.batches == 6                      # trigger -> installed -> enabled -> all removed
    assert report.exchanges == 7                    # the 7th uplink carries the last results: Idle
    assert backend.refreshes == ["uicc-reset"]      # after the enable
    assert len(rig.smdp.notifications) == 2         # install (PIR) and enable, to the SM-DP+
    assert len(rig.eim.results) == 2                # ProfileDownloadTriggerResult, EuiccPackageResult
    assert link.counters(eid).batches == 6
    batches = [a.batch for a in rig.of(A.SendBatch) if isinstance(a, A.SendBatch)]
    hinted = [b for b in batches if b.next_size_hint is not None]
    assert len(hinted) == 1 and hinted[0].steps[0].apdus[0][5:7] == b"\xbf\x21"   # PrepareDownload


async def test_profile_download_result_carries_the_pir_as_the_euicc_signed_it(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.eim.queue_trigger(card.eid, "1$smdp.example$MATCH-1", b"\x07")
    agent, _ = make_agent(link, card)
    await agent.run_session()
    pir = rig.smdp.notifications[0]
    assert pir[:2] == b"\xbf\x37"
    assert pir in rig.eim.results[0]                # spliced, not re-encoded


async def test_smdp_refusing_authenticate_client_cancels_the_session_on_euicc_and_server(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.smdp.refuse["authenticateClient"] = ("8.1.1", "3.8")
    rig.eim.queue_trigger(card.eid, "1$smdp.example$MATCH-1", b"\x03")
    agent, _ = make_agent(link, card)
    report = await agent.run_session()
    assert report.error is None
    assert not card.session_open
    assert card.profiles == []
    assert len(rig.smdp.cancelled) == 1 and rig.smdp.cancelled[0][:2] == b"\xbf\x41"
    assert len(rig.eim.results) == 1                # exactly one result: the download error
    audits = [a for a in rig.of(A.Audit) if isinstance(a, A.Audit) and a.operation == "cancelSession"]
    assert audits and audits[0].result == "ok"


async def test_bpp_split_over_exchanges_when_the_device_bounds_its_batch(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.eim.queue_trigger(card.eid, "1$smdp.example$MATCH-1", b"\x04")
    agent, _ = make_agent(link, card, max_batch_bytes=8192)
    report = await agent.run_session()
    assert [p.iccid for p in card.profiles] == [ICCID]
    assert report.batches > 6
    batches = [a.batch for a in rig.of(A.SendBatch) if isinstance(a, A.SendBatch)]
    assert all(sum(len(x) for s in b.steps for x in s.apdus) <= 8192 for b in batches)


async def test_notification_kept_on_euicc_while_smdp_down_and_removed_after_delivery(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.eim.queue_trigger(card.eid, "1$smdp.example$MATCH-1", b"\x05")
    agent, _ = make_agent(link, card)
    # the SM-DP+ goes down once the BPP is fetched: the PIR notification cannot be delivered
    original = rig.smdp.handle

    def handle(function: str, body: bytes) -> bytes:
        out = original(function, body)
        if function == "getBoundProfilePackage":
            rig.down.add("smdp.example")
        return out

    rig.smdp.handle = handle  # type: ignore[method-assign]
    await agent.run_session()
    assert [p.iccid for p in card.profiles] == [ICCID]
    assert [n.event for n in card.notifications] == ["install"]   # not delivered: kept
    rig.advance(3 * 3600)                                          # retries while down
    assert rig.smdp.notifications == []
    rig.down.clear()
    rig.advance(2 * 3600)                                          # next retry delivers
    assert len(rig.smdp.notifications) == 1
    assert [n.event for n in card.notifications] == ["install"]   # removal waits for the device
    await agent.run_session()
    assert card.notifications == []


async def test_contact_smds_retrieves_the_event_then_downloads_from_its_smdp(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.smds = MiniSmds(pki, events=[("EVT-1", "smdp.example")])
    rig.eim.queue_trigger(card.eid, None, b"\x0a", smds="smds.example")
    agent, _ = make_agent(link, card)
    report = await agent.run_session()
    assert rig.smds.calls == ["initiateAuthentication", "authenticateClient"]
    assert [p.iccid for p in card.profiles] == [ICCID] and not card.session_open
    assert report.batches == 7          # + [GetEuiccChallenge, GetEUICCInfo1] and AuthenticateServer for the SM-DS
    assert card.notifications == []


async def test_contact_smds_without_an_event_ends_with_one_error_result(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.smds = MiniSmds(pki, events=[])
    rig.eim.queue_trigger(card.eid, None, b"\x0b", smds="smds.example")
    agent, _ = make_agent(link, card)
    await agent.run_session()
    assert card.profiles == [] and (card.session is None or not card.session.transaction_id)
    (result,) = rig.eim.results_of()
    assert result[1]["profileDownloadTriggerResultData"][0] == "profileDownloadError"


async def test_contact_default_smdp_uses_the_address_set_on_the_euicc(pki: RspPki) -> None:
    rig, link, card = setup(pki, default_smdp="gateway-default.example")
    rig.eim.queue_package(card.eid, rig.eim.euicc_package_request(
        card.eid, [("setDefaultDpAddress", {"defaultDpAddress": "smdp.example"})], b"\x0c"))
    value = {"profileDownloadData": ("contactDefaultSmdp", None), "eimTransactionId": b"\x0d"}
    from gateway.spec import esipa
    rig.eim.packages[card.eid].append(
        esipa.encode_from_eim("getEimPackageResponse", ("profileDownloadTriggerRequest", value)))
    agent, _ = make_agent(link, card)
    await agent.run_session()
    assert [p.iccid for p in card.profiles] == [ICCID]
    assert {a.smdp_address for a in rig.of(A.PostEs9) if isinstance(a, A.PostEs9)} == {"smdp.example"}


async def test_twenty_devices_download_concurrently_without_disturbing_each_other(pki: RspPki) -> None:
    import asyncio

    from hil import rspcrypto
    from hil.euicc import Faults
    smdp, eim = MiniSmdp(pki), MiniEim(pki)
    rig = EngineRig(Engine(EngineConfig(eims=(EimEndpoint(eim.eim_id, eim.fqdn),), seed=9)), smdp, eim)
    link = MemoryLink(rig)
    cards = []
    for n in range(20):
        eid = bytes.fromhex(rspcrypto.eid_with_check_digits(f"890490320000000000077{n:09d}"))
        faults = Faults(sw_on_command={30: 0x6F00}) if n == 0 else None   # one device's eUICC glitches
        card = SoftEuicc(pki, eid, faults=faults)
        card.state.eims.append(eim_config_from(card, eim.initial_eim()))
        card.commit()
        cards.append(card)
        eim.queue_trigger(eid, "1$smdp.example$M", bytes([n]))
    agents = [make_agent(link, c)[0] for c in cards]
    reports = await asyncio.gather(*(a.run_session() for a in agents))
    assert all(r.error is None for r in reports)
    assert cards[0].profiles == [] and not cards[0].session_open
    assert all([p.iccid for p in c.profiles] == [ICCID] and not c.notifications for c in cards[1:])
    assert len(rig.eim.results) == 20 and len(rig.engine.sessions) == 20
    assert {link.counters(c.eid).batches for c in cards[1:]} == {5}
