"""Failure paths end to end: after each, the eUICC has no open session, the SM-DP+ was told
(when the eUICC could sign a cancellation) and the eIM got exactly one result per package.

In-test SM-DP+/eIM responders (tests/core/peers.py; the real peers come later), real
software eUICC with fault injection, real agent and device link.
"""

from __future__ import annotations

import pytest

from gateway.core import actions as A
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.core.events import OperatorAction
from gateway.links.memory import MemoryLink
from gateway.spec import codec
from hil.euicc import Faults, PowerLoss, SoftEuicc
from hil.euicc.eim import eim_config_from
from hil.pki import RspPki
from tests.core.peers import MiniEim, MiniSmdp
from tests.core.rig import EngineRig, make_agent

ICCID = bytes.fromhex("98001032547698103214")


def setup(pki: RspPki, faults: Faults | None = None) -> tuple[EngineRig, MemoryLink, SoftEuicc]:
    eim = MiniEim(pki)
    card = SoftEuicc(pki, pki.eid_bytes, faults=faults)
    card.state.eims.append(eim_config_from(card, eim.initial_eim()))
    card.commit()
    engine = Engine(EngineConfig(eims=(EimEndpoint(eim.eim_id, eim.fqdn),), seed=11))
    rig = EngineRig(engine, MiniSmdp(pki), eim)
    return rig, MemoryLink(rig), card


def mid_session(card: SoftEuicc) -> bool:
    """An RSP session with a transaction: AuthenticateServer ran and nothing ended it. (A bare
    GetEuiccChallenge leaves only a challenge, which the next one replaces: SGP.22 §3.1.2.)"""
    return card.session is not None and bool(card.session.transaction_id)


def trigger_results(rig: EngineRig) -> list[str]:
    out = []
    for kind, value in rig.eim.results_of():
        assert kind == "profileDownloadTriggerResult"
        out.append(value["profileDownloadTriggerResultData"][0])
    return out


@pytest.mark.parametrize("function,told", [("initiateAuthentication", False),
                                           ("authenticateClient", True),
                                           ("getBoundProfilePackage", True)])
async def test_smdp_refusing_at_each_step(pki: RspPki, function: str, told: bool) -> None:
    rig, link, card = setup(pki)
    rig.smdp.refuse[function] = ("8.1", "3.8")
    rig.eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x01")
    agent, _ = make_agent(link, card)
    report = await agent.run_session()
    assert report.error is None and not mid_session(card) and card.profiles == []
    assert len(rig.smdp.cancelled) == (1 if told else 0)
    assert trigger_results(rig) == ["profileDownloadError"]


async def test_smdp_transient_error_is_retried_with_backoff_then_succeeds(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.smdp.refuse["getBoundProfilePackage"] = ("8.1", "4.1")     # execution error: transient
    rig.eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x02")
    agent, _ = make_agent(link, card)
    first = await agent.run_session()          # told to come back when the retry is due
    assert first.idle_after_s is not None and first.idle_after_s <= 60
    assert rig.smdp.calls.count("getBoundProfilePackage") == 1 and card.profiles == []
    del rig.smdp.refuse["getBoundProfilePackage"]
    rig.advance(120)                           # the retry timer fires: the BPP is fetched
    await agent.run_session()
    assert [p.iccid for p in card.profiles] == [ICCID]
    assert trigger_results(rig) == ["profileInstallationResult"]


async def test_smdp_unreachable_mid_download_retries_then_cancels(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    original = rig.smdp.handle

    def handle(function: str, body: bytes) -> bytes:
        if function == "authenticateClient":
            rig.down.add("smdp.example")
        return original(function, body)

    rig.smdp.handle = handle  # type: ignore[method-assign]
    rig.eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x03")
    agent, _ = make_agent(link, card)
    await agent.run_session()                  # AuthenticateClient reaches the server, then it is gone
    rig.down.add("smdp.example")
    for _ in range(6):                         # retries run out (request_backoff: 3 attempts)
        rig.advance(120)
    retries = [a for a in rig.actions if isinstance(a, A.Audit) and a.result == "retry"]
    assert len(retries) >= 3
    rig.down.clear()
    rig.smdp.handle = original  # type: ignore[method-assign]
    await agent.run_session()
    assert not mid_session(card) and card.profiles == []
    assert trigger_results(rig) == ["profileDownloadError"]
    (cancel,) = rig.smdp.cancelled
    reason = codec.decode("CancelSessionResponse", cancel)[1]["euiccCancelSessionSigned"]["reason"]
    assert reason == 2                                          # timeout


async def test_eim_unreachable_leaves_packages_with_the_eim_and_nothing_runs(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.down.add(rig.eim.eim_id)
    rig.eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x04")
    agent, _ = make_agent(link, card)
    report = await agent.run_session()
    assert report.batches == 1                 # only the eIM configuration is read (first contact)
    assert report.idle_after_s is not None     # told when the poll will be retried
    assert rig.smdp.calls == [] and rig.eim.results == [] and card.profiles == []
    rig.down.clear()
    rig.advance(60)                            # the retried poll fetches the trigger
    await agent.run_session()
    assert trigger_results(rig) == ["profileInstallationResult"]


async def test_device_vanishing_mid_bpp_ends_with_one_error_result_and_no_open_session(pki: RspPki) -> None:
    rig, link, card = setup(pki, Faults(tear_after_bpp_segments=6))
    rig.eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x05")
    agent, _ = make_agent(link, card)
    with pytest.raises(PowerLoss):
        await agent.run_session()
    card.power_cycle()
    agent, _ = make_agent(link, card)           # the sensor rebooted: the batch result is gone
    await agent.run_session()
    assert not mid_session(card) and card.profiles == []
    # the eUICC recorded the interrupted installation as a signed error result: that is the
    # one result the eIM gets, and the SM-DP+ gets it as the install notification
    ((kind, value),) = rig.eim.results_of()
    pir = value["profileDownloadTriggerResultData"]
    assert pir[0] == "profileInstallationResult"
    assert pir[1]["profileInstallationResultData"]["finalResult"][0] == "errorResult"
    assert len(rig.smdp.notifications) == 1 and card.notifications == []
    assert any(isinstance(a, A.Audit) and a.result == "lost" for a in rig.actions)


DOWNLOAD_COMMANDS = 168   # APDUs the card receives in a clean download of this test profile


async def test_the_fault_matrix_covers_every_command_of_a_clean_download(pki: RspPki) -> None:
    rig, link, card = setup(pki, Faults())
    rig.eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x06")
    agent, _ = make_agent(link, card)
    await agent.run_session()
    assert [p.iccid for p in card.profiles] == [ICCID]
    assert card.faults.commands_seen == DOWNLOAD_COMMANDS


@pytest.mark.parametrize("n", range(1, DOWNLOAD_COMMANDS + 1))
async def test_euicc_error_status_at_any_command_leaves_no_session_and_one_result(pki: RspPki, n: int) -> None:
    rig, link, card = setup(pki, Faults(sw_on_command={n: 0x6F00}))
    rig.eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x06")
    agent, _ = make_agent(link, card)
    await agent.run_session()
    await agent.run_session()                   # a later wake finishes what is left
    assert not mid_session(card)
    results = trigger_results(rig)
    assert len(results) == 1
    if results == ["profileInstallationResult"]:
        assert [p.iccid for p in card.profiles] == [ICCID]
    else:
        assert card.profiles == []
        if "authenticateClient" in rig.smdp.calls:
            assert len(rig.smdp.cancelled) == 1


async def test_lost_load_euicc_package_response_is_recovered_from_the_euicc_not_resent(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    card.state.eims[0].counter = 0
    package = rig.eim.euicc_package_request(card.eid, [("getRAT", {})], b"\x07")
    rig.eim.queue_package(card.eid, package)
    # the GET RESPONSE that would carry the EuiccPackageResult fails: the package ran
    agent, backend = make_agent(link, card)
    original = backend.transmit
    state = {"armed": True}

    def transmit(apdu: bytes) -> bytes:
        out = original(apdu)
        if state["armed"] and apdu[1] == 0xE2 and apdu[5:7] == b"\xbf\x51":
            state["armed"] = False
            return b"\x6f\x00"
        return out

    backend.transmit = transmit  # type: ignore[method-assign]
    await agent.run_session()
    ((kind, value),) = rig.eim.results_of()
    assert kind == "euiccPackageResult" and value[0] == "euiccPackageResultSigned"
    assert card.state.eims[0].counter == 1      # ran once
    assert card.notifications == []


async def test_operator_cancel_mid_download_cancels_on_the_euicc(pki: RspPki) -> None:
    rig, link, card = setup(pki)
    rig.eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x08")
    agent, _ = make_agent(link, card)
    original = rig.smdp.handle

    def handle(function: str, body: bytes) -> bytes:
        if function == "authenticateClient":
            rig.run([OperatorAction(card.eid, rig.now, "cancel")])
        return original(function, body)

    rig.smdp.handle = handle  # type: ignore[method-assign]
    await agent.run_session()
    assert not mid_session(card) and card.profiles == []
    (cancel,) = rig.smdp.cancelled
    reason = codec.decode("CancelSessionResponse", cancel)[1]["euiccCancelSessionSigned"]["reason"]
    assert reason == 0                                          # endUserRejection
    assert trigger_results(rig) == ["profileDownloadError"]


GARBAGE = [b"", b"{}", b"not json", b'{"header": {"functionExecutionStatus": {"status": "Executed-Success"}}}',
           b'{"header": {"functionExecutionStatus": {"status": "Executed-Success"}}, "transactionId": "00",'
           b' "boundProfilePackage": "vyQA"}', bytes(range(256))]


@pytest.mark.parametrize("function", ["initiateAuthentication", "authenticateClient", "getBoundProfilePackage"])
@pytest.mark.parametrize("body", GARBAGE, ids=range(len(GARBAGE)))
async def test_a_malformed_smdp_answer_ends_the_download_cleanly(pki: RspPki, function: str, body: bytes) -> None:
    rig, link, card = setup(pki)
    original = rig.smdp.handle

    def handle(f: str, b: bytes) -> bytes:
        out = original(f, b)
        return body if f == function else out

    rig.smdp.handle = handle  # type: ignore[method-assign]
    rig.eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x09")
    agent, _ = make_agent(link, card)
    report = await agent.run_session()
    assert report.error is None and not mid_session(card) and card.profiles == []
    assert trigger_results(rig) == ["profileDownloadError"]
    assert len(rig.smdp.cancelled) == (0 if function == "initiateAuthentication" else 1)


PACKAGE_COMMANDS = 18   # APDUs the card receives for one clean EuiccPackageRequest session


@pytest.mark.parametrize("n", range(1, PACKAGE_COMMANDS + 1))
async def test_euicc_error_status_at_any_command_of_a_package_gives_exactly_one_result(pki: RspPki, n: int) -> None:
    rig, link, card = setup(pki, Faults(sw_on_command={n: 0x6F00}))
    rig.eim.queue_package(card.eid, rig.eim.euicc_package_request(card.eid, [("getRAT", {})], b"\x30"))
    agent, _ = make_agent(link, card)
    await agent.run_session()
    await agent.run_session()
    ((kind, value),) = rig.eim.results_of()            # exactly one result
    ran = card.state.eims[0].counter == 1
    if kind == "euiccPackageResult":
        assert ran and value[0] == "euiccPackageResultSigned"
    else:
        assert kind == "eimPackageResultResponseError" and not ran
    assert card.notifications == []                   # the kept result was removed after the ack
