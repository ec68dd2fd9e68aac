"""Every rig scenario on the software eUICC and on the AT modem emulator over a socat pty.

The peers are real (HTTPS on loopback, test PKI), the IPA is the gateway's own engine and
runtime with the reference device agent, and outcomes are checked where they happen: the
profile on the eUICC's own state, the notifications at the SM-DP+ and the eIM.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.spec import codec
from hil.euicc import SoftEuicc
from hil.euicc import state as nvm
from hil.peers.common import iccid_to_str
from hil.peers.eim import EimServer
from hil.peers.smdpp import SmdppServer
from hil.pki import RspPki, generate_pki
from hil.rig import RigOptions, run_scenario
from hil.rig.backends import SoftBackend
from hil.rig.probe import NOTIFICATION_EVENTS, bits
from tests.rig.conftest import BACKENDS, backend_for

pytestmark = pytest.mark.timeout(60)


def options(pki: RspPki, scenario: str, peers: tuple[EimServer, SmdppServer] | None = None,
            **kw: Any) -> RigOptions:
    eim_url, smdp_url = (peers[0].url, peers[1].url) if peers else (None, None)
    return RigOptions(scenario, pki, eim_url=eim_url, smdp_url=smdp_url, timeout_s=20.0, **kw)


def profile(card: SoftEuicc, iccid: str) -> Any:
    return next((p for p in card.profiles if iccid_to_str(p.iccid) == iccid), None)


def event_of(der: bytes) -> str:
    """The profile event a PendingNotification (exact bytes, as delivered) reports."""
    kind, value = codec.decode("PendingNotification", der)
    if kind == "profileInstallationResult":
        return "install"
    events = bits(value["tbsOtherNotification"]["profileManagementOperation"], NOTIFICATION_EVENTS)
    assert len(events) == 1, events
    return events[0]


def events_at_peers(eim: EimServer, smdp: SmdppServer, eid: bytes) -> list[str]:
    """Profile events delivered to the SM-DP+ and (for this EID) to the eIM, sorted; a notification
    that reached both (the eIM also records a download's installation result) counts once."""
    ders = {n.der for n in smdp.service.notifications}
    if eid in eim.service.devices:
        ders |= {n.der for n in eim.service.devices[eid].notifications}
    return sorted(event_of(d) for d in ders)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_probe_reports_the_card_and_leaves_it_unchanged(kind: str, card: SoftEuicc, pki: RspPki,
                                                              pty_pair: tuple[str, str]) -> None:
    before = nvm.dump(card.state)
    with backend_for(kind, card, pty_pair) as backend:
        result = await run_scenario(backend, options(pki, "probe"))
    assert result.ok, result.error
    facts = result.card
    assert facts is not None and facts.eid == card.eid
    assert facts.info1["svn"] == "2.5.0" and facts.info1["ciPkidsForSigning"] == [pki.ci_pkid.hex().upper()]
    assert facts.info2["sgp32Versions"] == ["1.2.0"]
    assert facts.eims == [] and facts.profiles == [] and facts.notifications == []
    assert facts.verdict is not None and facts.verdict.test_card
    names = [s.name for s in result.steps]
    if kind == "serial":
        status = result.steps[0]
        assert status.name == "modem status" and status.apdus == 0
        assert status.data == {"imei": "356938035643809", "plmn": "00101", "signalDbm": -73}
        names = names[1:]
    assert names[:3] == ["select ISD-R", "GetEID", "GetEUICCInfo1"] and names[-1] == "close channel"
    assert all(s.ok and s.apdus >= 1 for s in result.steps if s.name != "modem status")
    assert result.apdus == sum(s.apdus for s in result.steps)
    assert card.apdu.open_channels() == [0]          # the probe closed its logical channel
    assert nvm.dump(card.state) == before and not card.session_open


@pytest.mark.parametrize("kind", BACKENDS)
async def test_lifecycle_installs_enables_disables_deletes_and_delivers_every_notification(
        kind: str, card: SoftEuicc, pki: RspPki, pty_pair: tuple[str, str],
        peers: tuple[EimServer, SmdppServer]) -> None:
    eim, smdp = peers
    with backend_for(kind, card, pty_pair) as backend:
        result = await run_scenario(backend, options(pki, "lifecycle", peers))
    assert result.ok, result.error
    assert [(o["name"], o["ok"], o["packageState"]) for o in result.operations] == [
        ("download", True, "done"), ("enable", True, "done"), ("disable", True, "done"), ("delete", True, "done")]
    iccid = result.operations[0]["iccid"]
    assert profile(card, iccid) is None and card.profiles == []
    assert card.notifications == []
    assert [c.eim_id for c in card.state.eims] == [eim.service.eim_id]   # AddInitialEim by the engine
    results = eim.service.devices[card.eid].results
    assert len(results) == 4 and all(r.verified for r in results)
    assert events_at_peers(eim, smdp, card.eid) == ["delete", "disable", "enable", "install"]
    assert card.refresh_requests >= 2   # enable and disable changed the enabled profile


@pytest.mark.parametrize("kind", BACKENDS)
async def test_each_operation_as_its_own_run(kind: str, card: SoftEuicc, pki: RspPki, pty_pair: tuple[str, str],
                                            peers: tuple[EimServer, SmdppServer]) -> None:
    """What an operator does on a rig: download, then enable/disable/delete by ICCID, one run each."""
    with backend_for(kind, card, pty_pair) as backend:
        download = await run_scenario(backend, options(pki, "download", peers))
        assert download.ok, download.error
        iccid = download.operations[0]["iccid"]
        assert profile(card, iccid).state == "disabled"
        for scenario, expected in (("enable", "enabled"), ("disable", "disabled"), ("enable", "enabled")):
            result = await run_scenario(backend, options(pki, scenario, peers, iccid=iccid))
            assert result.ok, result.error
            assert profile(card, iccid).state == expected
            assert result.card is not None and result.card.eims and result.card.eims[0]["eimId"] == peers[0].service.eim_id
        delete = await run_scenario(backend, options(pki, "delete", peers, iccid=iccid))   # disables first
    assert delete.ok, delete.error
    assert profile(card, iccid) is None and card.notifications == []
    assert events_at_peers(*peers, card.eid) == sorted(["install", "enable", "disable", "enable", "disable", "delete"])


async def test_state_changing_scenario_refused_on_a_card_outside_the_test_ci(
        card: SoftEuicc, pki: RspPki, tmp_path: Any, peers: tuple[EimServer, SmdppServer]) -> None:
    other = generate_pki(tmp_path / "other-pki")      # another CI: a card the rig must not touch
    stranger = SoftEuicc(other, other.eid_bytes)
    result = await run_scenario(SoftBackend(stranger), options(pki, "lifecycle", peers))
    assert result.refused and not result.ok
    assert "not issued by the test CI" in (result.error or "")
    assert result.operations == [] and stranger.state.eims == [] and stranger.profiles == []
    assert all(s.name != "eIM knows the eUICC" for s in result.steps)
    # the read-only probe is allowed on any card
    probe = await run_scenario(SoftBackend(stranger), options(pki, "probe", peers))
    assert probe.ok and probe.card is not None and probe.card.verdict is not None
    assert not probe.card.verdict.test_card


async def test_override_flag_lets_a_state_changing_scenario_touch_a_non_test_card(
        pki: RspPki, tmp_path: Any, peers: tuple[EimServer, SmdppServer]) -> None:
    other = generate_pki(tmp_path / "other-pki")
    stranger = SoftEuicc(other, other.eid_bytes)
    result = await run_scenario(SoftBackend(stranger), options(pki, "download", peers, allow_any_card=True))
    assert not result.refused
    # the flow ran on the card (the gateway sent the download batches) and failed where the
    # trust is missing: this card's CI is not the test SM-DP+'s; the scenario reports it
    assert any(s.name == "download: gateway runs it on the card" and s.apdus > 0 for s in result.steps)
    assert not result.ok and "the eIM recorded failed" in (result.error or "")
    assert result.operations and not result.operations[0]["ok"]
    assert stranger.profiles == []


async def test_enable_without_iccid_names_the_profiles_on_the_card(card: SoftEuicc, pki: RspPki,
                                                                   peers: tuple[EimServer, SmdppServer]) -> None:
    result = await run_scenario(SoftBackend(card), options(pki, "enable", peers))
    assert not result.ok and "needs --iccid" in (result.error or "")


async def test_a_card_bound_to_another_eim_is_reported_not_forced(card: SoftEuicc, pki: RspPki,
                                                                  peers: tuple[EimServer, SmdppServer]) -> None:
    from tests.peers.es10b_script import Card

    data = dict(peers[0].service.own_configuration_data())
    data["eimId"] = "someone-elses-eim"
    Card(card).es10("AddInitialEimRequest", {"eimConfigurationDataList": [data]})
    result = await run_scenario(SoftBackend(card), options(pki, "download", peers))
    assert not result.ok and "someone-elses-eim" in (result.error or "")
    assert card.profiles == [] and [c.eim_id for c in card.state.eims] == ["someone-elses-eim"]


async def test_a_psmo_the_euicc_refuses_fails_the_scenario_with_the_euicc_result(
        card: SoftEuicc, pki: RspPki, peers: tuple[EimServer, SmdppServer]) -> None:
    backend = SoftBackend(card)
    download = await run_scenario(backend, options(pki, "download", peers))
    iccid = download.operations[0]["iccid"]
    assert (await run_scenario(backend, options(pki, "disable", peers, iccid=iccid))).error == (
        "CheckFailed: the eUICC refused: disableResult profileNotInExpectedState (2)")
    assert profile(card, iccid).state == "disabled" and card.notifications == []


async def test_wake_ups_back_off_while_a_peer_is_unreachable_and_the_log_says_why(
        card: SoftEuicc, pki: RspPki, peers: tuple[EimServer, SmdppServer]) -> None:
    """The SM-DP+ goes away after the download: the enable notification cannot be delivered."""
    eim, smdp = peers
    backend = SoftBackend(card)
    download = await run_scenario(backend, options(pki, "download", peers))
    iccid = download.operations[0]["iccid"]
    await smdp.stop()     # the profile's notification address; the rig's admin queries go to another one
    async with SmdppServer(pki) as elsewhere:
        result = await run_scenario(backend, RigOptions("enable", pki, eim_url=eim.url, smdp_url=elsewhere.url,
                                                        iccid=iccid, timeout_s=2.0))
    assert not result.ok and "no enable notifications after 2 s" in (result.error or "")
    assert "handleNotification" in (result.error or "")
    step = next(s for s in result.steps if s.name == "enable: notifications delivered")
    assert step.apdus < 120          # a handful of wake-ups in 2 s, not a busy loop
    assert len(card.notifications) == 1 and profile(card, iccid).state == "enabled"


async def test_lifecycle_with_the_gateway_driving_the_modem_itself(card: SoftEuicc, pki: RspPki,
                                                                   pty_pair: tuple[str, str],
                                                                   peers: tuple[EimServer, SmdppServer]) -> None:
    """--agent gateway: the daemon's path for a modem wired to the gateway (LocalModemDevice)."""
    with backend_for("serial", card, pty_pair) as backend:
        result = await run_scenario(backend, options(pki, "lifecycle", peers, agent="gateway"))
    assert result.ok, result.error
    assert [o["name"] for o in result.operations if o["ok"]] == ["download", "enable", "disable", "delete"]
    assert card.profiles == [] and card.notifications == []
    assert events_at_peers(*peers, card.eid) == ["delete", "disable", "enable", "install"]
    runs = [s for s in result.steps if s.name.endswith("gateway runs it on the card")]
    assert all(s.apdus > 0 for s in runs)


async def test_gateway_agent_needs_a_modem(card: SoftEuicc, pki: RspPki, peers: tuple[EimServer, SmdppServer]) -> None:
    result = await run_scenario(SoftBackend(card), options(pki, "download", peers, agent="gateway"))
    assert not result.ok and "needs a serial backend" in (result.error or "")


@pytest.mark.parametrize("kind", BACKENDS)
async def test_lifecycle_through_the_whole_daemon_over_coap_dtls(kind: str, card: SoftEuicc, pki: RspPki,
                                                                 pty_pair: tuple[str, str],
                                                                 peers: tuple[EimServer, SmdppServer]) -> None:
    """--link coap: `ipae-gateway run`'s Daemon, the reference agent over CoAP/DTLS, the card behind it."""
    with backend_for(kind, card, pty_pair) as backend:
        result = await run_scenario(backend, options(pki, "lifecycle", peers, link="coap"))
    assert result.ok, result.error
    assert any(s.name == "gateway daemon up" and s.ok for s in result.steps)
    assert [o["name"] for o in result.operations if o["ok"]] == ["download", "enable", "disable", "delete"]
    assert card.profiles == [] and card.notifications == []
    assert events_at_peers(*peers, card.eid) == ["delete", "disable", "enable", "install"]


@pytest.mark.parametrize("mode", ["direct", "indirect"])
async def test_download_direct_or_through_the_eim(mode: str, card: SoftEuicc, pki: RspPki,
                                                  peers: tuple[EimServer, SmdppServer],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from hil.peers.eim import relay

    relayed: list[str] = []      # a spy on the eIM's ES9+ relay: the real function still runs
    original = relay.initiate_authentication

    async def spy(eim: Any, value: Any) -> Any:
        relayed.append("initiateAuthentication")
        return await original(eim, value)

    monkeypatch.setattr(relay, "initiate_authentication", spy)
    backend = SoftBackend(card)
    result = await run_scenario(backend, options(pki, "download", peers, download_mode=mode))
    assert result.ok, result.error
    assert relayed == (["initiateAuthentication"] if mode == "indirect" else [])
    assert profile(card, result.operations[0]["iccid"]) is not None
    probe = await run_scenario(backend, options(pki, "probe"))
    assert probe.card is not None
    assert probe.card.eims[0].get("indirectProfileDownload", False) == (mode == "indirect")
    other = "direct" if mode == "indirect" else "indirect"
    again = await run_scenario(backend, options(pki, "download", peers, download_mode=other))
    assert not again.ok and "applies only when the card gets the eIM's configuration" in (again.error or "")
