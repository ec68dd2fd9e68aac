"""Fallback end to end: a device that cannot attach is switched to its fallback Profile.

In-test SM-DP+/eIM responders (tests/core/peers.py; the real peers come later), real
software eUICC, agent and device link.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.core import actions as A
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.links.memory import MemoryLink
from hil.euicc import SoftEuicc
from hil.euicc.eim import eim_config_from
from hil.pki import RspPki
from tests.core.peers import MiniEim, MiniSmdp
from tests.core.rig import EngineRig, make_agent

ICCID_A = bytes.fromhex("98001032547698103214")   # the fallback Profile
ICCID_B = bytes.fromhex("98001032547698103225")   # the operational Profile


async def test_attach_failures_switch_to_the_fallback_profile_and_the_eim_is_told(pki: RspPki) -> None:
    eim = MiniEim(pki)
    card = SoftEuicc(pki, pki.eid_bytes)
    card.state.eims.append(eim_config_from(card, eim.initial_eim()))
    card.commit()
    smdp = MiniSmdp(pki, iccid=ICCID_A, fallback_allowed=True)
    engine = Engine(EngineConfig(eims=(EimEndpoint(eim.eim_id, eim.fqdn),), seed=6,
                                 fallback_after_attach_failures=3))
    rig = EngineRig(engine, smdp, eim)
    link = MemoryLink(rig)
    agent, backend = make_agent(link, card)
    # Profile A, marked as fallback; then Profile B, enabled
    eim.queue_trigger(card.eid, "1$smdp.example$A", b"\x01")
    eim.queue_package(card.eid, eim.euicc_package_request(card.eid, [("setFallbackAttribute", {"iccid": ICCID_A})],
                                                          b"\x02"))
    await agent.run_session()
    smdp.iccid, smdp.fallback_allowed = ICCID_B, False
    eim.queue_trigger(card.eid, "1$smdp.example$B", b"\x03")
    eim.queue_package(card.eid, eim.euicc_package_request(card.eid, [("enable", {"iccid": ICCID_B})], b"\x04"))
    await agent.run_session()
    assert {p.iccid: p.state for p in card.profiles} == {ICCID_A: "disabled", ICCID_B: "enabled"}
    refreshes = len(backend.refreshes)

    agent.status = replace(agent.status, attach_failures=5)    # B's network is gone
    report = await agent.run_session()
    assert report.error is None
    assert {p.iccid: p.state for p in card.profiles} == {ICCID_A: "enabled", ICCID_B: "disabled"}
    assert len(backend.refreshes) == refreshes + 1
    told = [p for p in eim.polls if "stateChangeCause" in p]
    assert told and told[-1]["stateChangeCause"] == 1 and "notifyStateChange" in told[-1]
    assert any(isinstance(a, A.Audit) and a.operation == "fallback" and a.result == "ok" for a in rig.actions)
    assert card.notifications == []

    await agent.run_session()                                 # still failing: not executed twice
    assert sum(1 for a in rig.actions if isinstance(a, A.Audit) and a.operation == "fallback") == 1
