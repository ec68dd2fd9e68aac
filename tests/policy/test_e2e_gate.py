"""End to end: fallback, return and IMEI quarantine driven by a device agent on a software eUICC.

Real parts: the reference agent (hil.agent) and the software eUICC (hil.euicc) with two
profiles, one carrying the fallback attribute; the device-link encoding (in-memory link,
gateway.links.memory); the real engine (gateway.core) behind the gate, driven by the engine
tests' driver (tests/core/driver.EngineDriver: the runtime's handling of the engine's actions
with an injected clock); the real eIM and SM-DP+ peers (hil/peers) in process over HTTPS,
reached through the runtime's own backhaul; a real SQLite store for the registry, audit log
and webhook outbox. `Backend` below does what gateway/policy/__init__.py asks the runtime to
do, as gateway/service/supervisor.py does it, with the test's clock.
"""

from __future__ import annotations

import asyncio
import random
import types
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.config.policies import FallbackPolicy, FallbackWaveSection, PoliciesSection, WebhooksPolicy
from gateway.core.actions import PostEsipa
from gateway.core.events import EimPackageReceived, StateReportPending
from gateway.links.memory import MemoryLink
from gateway.links.protocol import Downlink, Uplink
from gateway.policy import (
    AuditPolicy,
    BindImei,
    EmitEvent,
    Policies,
    PolicyDecision,
    ReportStateChange,
    SavePolicyState,
    SetQuarantine,
)
from gateway.policy import imei as imei_policy
from gateway.policy.gate import PolicyGate, RegistryView
from gateway.policy.webhooks import enqueue_event
from gateway.spec import esipa
from gateway.store import Store
from hil.euicc import SoftEuicc
from hil.pki import RspPki
from policy_support import FALLBACK, HOME, with_fallback_profile
from tests.core.driver import EngineDriver, Peers, make_agent, running_peers

IMEI = "353290611234567"
HOOKS = WebhooksPolicy(urls=("https://hooks.example/ipae",))


class Backend:
    """The runtime's side of the gate: registry, decisions, state-change reports to the eIM."""

    def __init__(self, store: Store, driver: EngineDriver, peers: Peers) -> None:
        self.store = store
        self.driver = driver
        self.peers = peers
        self.gate: PolicyGate | None = None
        self.states: dict[tuple[bytes, str], bytes] = {}
        self.reports: list[ReportStateChange] = []
        self.decisions: list[PolicyDecision] = []
        self.peak_inflight = 0
        self.hooks = HOOKS

    async def registry(self, eid: bytes) -> RegistryView:
        d = self.store.devices.require(eid)
        return RegistryView(d.imei, d.quarantined, d.tags)

    async def apply_decisions(self, eid: bytes | None, decisions: list[PolicyDecision], now: float) -> None:
        self.decisions += decisions
        if self.gate is not None:
            self.peak_inflight = max(self.peak_inflight, len(self.gate.policies.fallbacks.wave.inflight))
        with self.store.transaction():
            for d in decisions:
                if isinstance(d, SetQuarantine):
                    self.store.devices.set_quarantine(d.eid, d.quarantined, reason=d.reason, now=now)
                elif isinstance(d, BindImei):
                    self.store.devices.bind_imei(d.eid, d.imei, now=now)
                elif isinstance(d, AuditPolicy):
                    self.store.audit.append(time=now, eid=d.eid, operation=d.operation, result=d.result,
                                            detail=dict(d.detail), iccid=d.iccid)
                elif isinstance(d, EmitEvent):
                    enqueue_event(self.store, d, self.hooks, gateway_id="gw-test", now=now)
                elif isinstance(d, SavePolicyState):
                    self.states[(d.eid, d.kind)] = d.blob
        for d in decisions:
            if isinstance(d, ReportStateChange):
                # as the supervisor does: the engine holds back its own PLMN-change report
                await self.driver.run([StateReportPending(d.eid, now, True)])
                self.reports.append(d)

    async def send_due_reports(self) -> None:
        """The runtime's timer: each report at its time, over HTTPS to the device's eIM; a package
        in the answer goes to the engine as one received by poll."""
        driver = self.driver
        eim = self.peers.eim.service.eim_id
        for report in sorted(self.reports, key=lambda r: r.at):
            driver.now = max(driver.now, report.at)
            assert self.gate is not None
            body = await driver.backhaul.post_esipa(PostEsipa(report.eid, f"policy-{report.token}", eim,
                                                              self.peers.eim.fqdn, "GetEimPackage",
                                                              self.gate.report_request(report)))
            for d in self.gate.policies.report_sent(report.eid, report.token, driver.now):
                if isinstance(d, SavePolicyState):
                    self.states[(d.eid, d.kind)] = d.blob
            await driver.run([StateReportPending(report.eid, driver.now, False, answered=True)])
            kind, _ = esipa.decode_response("GetEimPackage", body)
            if kind != "eimPackageError":
                await driver.run([EimPackageReceived(report.eid, driver.now, eim, body, "poll")])
        self.reports.clear()


class Latency:
    """Each uplink waits for the event loop once, as it would for the radio: devices interleave."""

    def __init__(self, inner: PolicyGate) -> None:
        self.inner = inner

    async def exchange(self, eid: bytes, uplink: Uplink) -> Downlink:
        await asyncio.sleep(0)
        return await self.inner.exchange(eid, uplink)


def card_with_fallback_profile(peers: Peers, eid: bytes | None = None) -> SoftEuicc:
    """A software eUICC known to the eIM, with its home profile enabled and a fallback profile."""
    return with_fallback_profile(peers.card(eid))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store.open(tmp_path / "gateway.sqlite3") as s:
        yield s  # type: ignore[misc]


@pytest.fixture
async def peers(pki: RspPki) -> AsyncIterator[Peers]:
    async with running_peers(pki) as running:
        yield running


def gate_for(peers: Peers, store: Store, policies: Policies) -> tuple[EngineDriver, Backend, PolicyGate]:
    driver = peers.driver()
    backend = Backend(store, driver, peers)
    backend.gate = PolicyGate(driver, policies, backend, clock=lambda: driver.now)
    return driver, backend, backend.gate


def setup(peers: Peers, store: Store) -> tuple[EngineDriver, Backend, PolicyGate, SoftEuicc]:
    card = card_with_fallback_profile(peers)
    config = PoliciesSection(fallback=FallbackPolicy(enabled=True, attach_failures=3, return_after_s=3600.0),
                             fallback_wave=FallbackWaveSection(report_spread_s=60.0))
    driver, backend, gate = gate_for(peers, store, Policies(config, rand=random.Random(5).random))
    store.devices.register(card.eid, "coap", "meter-1", now=driver.now, tags=["water-meter"])
    return driver, backend, gate, card


def state_changes(peers: Peers, eid: bytes) -> list[dict[str, Any]]:
    """What the eIM recorded of the device's GetEimPackage requests with notifyStateChange."""
    device = peers.eim.service.devices[eid]
    return [c for c in device.state_changes if c["notifyStateChange"]]


async def test_fallback_and_return_run_on_the_euicc_and_the_eim_hears_each_once(peers: Peers, store: Store) -> None:
    driver, backend, gate, card = setup(peers, store)
    agent, device = make_agent(MemoryLink(gate), card, imei=IMEI)
    for failures in (1, 2):
        agent.status = replace(agent.status, attach_failures=failures)
        report = await agent.run_session()
        assert report.error is None and report.idle_after_s is not None
        driver.now += 600
    assert card.state.enabled_profile().iccid == HOME  # type: ignore[union-attr]
    assert driver.posted.count("GetEimPackage") == 2   # each wake-up polled the eIM over HTTPS

    agent.status = replace(agent.status, attach_failures=3)
    report = await agent.run_session()
    assert report.error is None and report.idle_after_s is not None
    assert card.state.enabled_profile().iccid == FALLBACK  # type: ignore[union-attr]
    assert device.refreshes == ["uicc-reset"]
    assert report.batches >= 1 and report.exchanges == 2      # the policy batch, then the IPA's Idle
    agent.status = replace(agent.status, attach_failures=0, plmn="26202")
    await agent.run_session()                                 # awake on the fallback network before the report's slot
    await backend.send_due_reports()
    [change] = state_changes(peers, card.eid)
    assert change["stateChangeCause"] == 1 and change["rPLMN"] == "62f220"   # 26202: registered after the switch

    # the network is back; after return_after_s the next wake-up returns from fallback. (The
    # serving PLMN is kept: the engine adds a report of its own when it changes, see the report.)
    agent.status = replace(agent.status, attach_failures=0)
    driver.now += 1800
    await agent.run_session()
    assert card.state.enabled_profile().iccid == FALLBACK  # type: ignore[union-attr]
    driver.now += 1900
    await agent.run_session()
    assert card.state.enabled_profile().iccid == HOME  # type: ignore[union-attr]
    assert device.refreshes == ["uicc-reset", "uicc-reset"]
    await backend.send_due_reports()
    assert len(state_changes(peers, card.eid)) == 2
    audit = [(r.operation, r.result) for r in store.audit.query(eid=card.eid)]
    assert ("ExecuteFallbackMechanism", "ok") in audit and ("ReturnFromFallback", "ok") in audit
    assert [e.kind for e in store.outbox.pending()] == ["webhook:fallback.executed", "webhook:fallback.returned"]


async def test_an_imei_change_quarantines_the_device_and_no_euicc_operation_runs(peers: Peers, store: Store) -> None:
    driver, backend, gate, card = setup(peers, store)
    link = MemoryLink(gate)
    agent, _ = make_agent(link, card, imei=IMEI)
    assert (await agent.run_session()).error is None
    assert store.devices.require(card.eid).imei == IMEI
    apdus_before = link.counters(card.eid).apdus

    moved, _ = make_agent(link, card, imei="353290619999999")
    moved.status = replace(moved.status, attach_failures=5)
    report = await moved.run_session()
    assert report.error is not None and "quarantined" in report.error.text
    assert link.counters(card.eid).apdus == apdus_before
    row = store.devices.require(card.eid)
    assert row.quarantined and row.imei == IMEI
    assert [r.operation for r in store.audit.query(eid=card.eid, operation="quarantine")] == ["quarantine"]
    assert list(gate.policies.alarms.active) == [imei_policy.alarm_key(card.eid)]
    assert (await moved.run_session()).error is not None          # still refused, no second alarm
    assert len([d for d in backend.decisions if isinstance(d, SetQuarantine)]) == 1

    await backend.apply_decisions(card.eid, imei_policy.release(card.eid, rebind="353290619999999",
                                                                keep_binding=False, now=driver.now), driver.now)
    gate.policies.record_alarms(backend.decisions, driver.now)
    report = await moved.run_session()
    assert report.error is None and report.idle_after_s is not None
    assert gate.policies.alarms.active == {}


async def test_fallback_over_coap_dtls_with_the_reference_agent(peers: Peers, store: Store) -> None:
    """The same fallback over the real CoAP/DTLS link (aiocoap + tinydtls on loopback)."""
    from gateway.links.base import DeviceCredential, DeviceRegistry
    from gateway.links.coap import CoapServer, CoapServerConfig
    from hil.agent import Agent
    from hil.agent.coap_transport import CoapAgentTransport
    from tests.core.driver import CardBackend
    from tests.links.conftest import free_udp_pair

    driver, backend, gate, card = setup(peers, store)
    psk = b"psk-of-meter-1"
    server = CoapServer(gate, DeviceRegistry([DeviceCredential("meter-1", card.eid, psk)]),
                        CoapServerConfig(dtls_port=free_udp_pair()))
    await server.start()
    device = CardBackend(card)
    transport = CoapAgentTransport("127.0.0.1", server._config.dtls_port, card.eid, identity="meter-1", psk=psk,
                                   block_timeout=2.0, request_timeout=20.0)
    agent = Agent(Agent.make_status(card.eid, imei=IMEI, plmn="26201"), device, transport)
    try:
        for failures in (1, 2, 3):
            agent.status = replace(agent.status, attach_failures=failures)
            report = await agent.run_session()
            assert report.error is None and report.transport_error is None
            driver.now += 600
    finally:
        await transport.close()
        await server.close()
    assert card.state.enabled_profile().iccid == FALLBACK  # type: ignore[union-attr]
    assert device.refreshes == ["uicc-reset"]
    await backend.send_due_reports()
    assert [p.get("stateChangeCause") for p in state_changes(peers, card.eid)] == [1]


async def test_carrier_outage_500_agents_one_alarm_and_the_eim_hears_one_state_change_per_device(
        peers: Peers, store: Store) -> None:
    """500 devices on one failing carrier, all waking together: the wave is bounded, one alarm."""
    from gateway.policy import RaiseAlarm

    config = PoliciesSection(fallback=FallbackPolicy(enabled=True, attach_failures=3),
                             fallback_wave=FallbackWaveSection(max_concurrent=20, outage_devices=50))
    driver, backend, gate = gate_for(peers, store, Policies(config, rand=random.Random(11).random))
    link = MemoryLink(Latency(gate))
    cards, agents = [], []
    for i in range(500):
        card = card_with_fallback_profile(peers, bytes.fromhex(f"89049032{i:024d}"))
        store.devices.register(card.eid, "coap", f"meter-{i}", now=driver.now, tags=["water-meter"])
        agent, _ = make_agent(link, card, imei=f"3532906{i:08d}")
        agent.status = replace(agent.status, attach_failures=3)
        cards.append(card)
        agents.append(agent)
    rounds = 0
    while any(c.state.enabled_profile().iccid != FALLBACK for c in cards) and rounds < 60:  # type: ignore[union-attr]
        await asyncio.gather(*(a.run_session() for a in agents))
        driver.now += 300
        rounds += 1
    assert all(c.state.enabled_profile().iccid == FALLBACK for c in cards)  # type: ignore[union-attr]
    assert backend.peak_inflight == 20 and rounds > 1     # bounded: 20 switches at a time, the rest wait
    assert len([d for d in backend.decisions if isinstance(d, RaiseAlarm)]) == 1
    await backend.send_due_reports()
    assert all(len(state_changes(peers, c.eid)) == 1 for c in cards)


async def test_roaming_alarm_at_day_90_reaches_a_https_webhook_receiver_with_a_valid_hmac(
        peers: Peers, store: Store, free_tcp_port: int) -> None:
    """A device on a Brazilian network every day: on day 90 of 120 the alarm is raised and the
    roaming.threshold event reaches the receiver, signed; the receiver was down at first."""
    import time

    from gateway.backhaul.inject_server import server_ssl_context
    from gateway.config.policies import RoamingCountry, RoamingPolicy
    from gateway.policy import RaiseAlarm
    from gateway.policy.webhooks import WebhookDispatcher, WebhookSender
    from gateway.store import AsyncStore
    from policy_support import SECRET, FakeClock, Receiver

    card = card_with_fallback_profile(peers)
    driver = peers.driver()
    driver.now = time.time()
    roaming = RoamingPolicy(enabled=True, home_plmns=("26201",),
                            countries=types.MappingProxyType({"724": RoamingCountry(90, 120)}))
    backend = Backend(store, driver, peers)
    receiver = Receiver(server_ssl_context(str(peers.pki.eim_tls.cert_path), str(peers.pki.eim_tls.key_path)), free_tcp_port,
                        FakeClock(0.0))
    backend.hooks = WebhooksPolicy(urls=(receiver.url,), ca_file=peers.pki.tls_ca.cert_path, events=("roaming.threshold",))
    gate = backend.gate = PolicyGate(driver, Policies(PoliciesSection(roaming=roaming)), backend,
                                     clock=lambda: driver.now)
    store.devices.register(card.eid, "coap", "tracker-1", now=driver.now)
    agent, _ = make_agent(MemoryLink(gate), card, imei=IMEI, plmn="72405")
    start = driver.now
    for day in range(90):
        driver.now = start + day * 86_400.0
        raised = len([d for d in backend.decisions if isinstance(d, RaiseAlarm)])
        assert (await agent.run_session()).error is None
        assert raised == 0, f"alarm before day 90 (day {day})"
    [alarm] = [d for d in backend.decisions if isinstance(d, RaiseAlarm)]
    assert alarm.alarm.kind == "roaming-exposure" and dict(alarm.alarm.detail)["days"] == 90
    assert gate.policies.roaming.exposure(card.eid, driver.now)["724"]["alarm"] is True

    store.close()   # the webhook side uses the same database file through its own thread
    receiver.clock.now = driver.now
    async with await AsyncStore.open(store.path) as astore:
        async with WebhookSender(backend.hooks, SECRET, clock=lambda: driver.now) as sender:
            dispatcher = WebhookDispatcher(astore, sender, clock=lambda: driver.now)
            wake = await dispatcher.step()          # receiver down
            assert receiver.received == [] and wake is not None
            await receiver.start()
            try:
                for _ in range(10):
                    if wake is None:
                        break
                    driver.now = max(driver.now, wake)
                    receiver.clock.now = driver.now
                    wake = await dispatcher.step()
            finally:
                await receiver.stop()
    assert [body["type"] for _, body in receiver.received] == ["roaming.threshold"]
    assert receiver.bad_signatures == 0
    assert receiver.received[0][1]["data"]["days"] == 90


async def test_a_gateway_restart_between_the_policy_batch_and_its_result_loses_nothing(
        peers: Peers, store: Store) -> None:
    """The policy batch ran on the eUICC but the gateway restarted before its Result came back:
    the new gate recognises the Result from the saved policy state; the switch is reported once."""
    from gateway.links.protocol import Result

    driver, backend, gate, card = setup(peers, store)

    class Restarting:
        """Restarts the gate (new Policies restored from the saved states) before the first Result."""

        def __init__(self) -> None:
            self.gate, self.restarted = gate, False

        async def exchange(self, eid: bytes, uplink: Uplink) -> Downlink:
            if isinstance(uplink, Result) and not self.restarted:
                self.restarted = True
                policies = Policies(gate.policies.config, rand=random.Random(5).random)
                for (e, kind), blob in backend.states.items():
                    policies.restore(e, kind, blob)
                self.gate = backend.gate = PolicyGate(driver, policies, backend, clock=lambda: driver.now)
            return await self.gate.exchange(eid, uplink)

    link = Restarting()
    agent, _ = make_agent(MemoryLink(link), card, imei=IMEI)
    agent.status = replace(agent.status, attach_failures=3)
    report = await agent.run_session()
    assert link.restarted and report.error is None and report.idle_after_s is not None
    assert card.state.enabled_profile().iccid == FALLBACK  # type: ignore[union-attr]
    assert link.gate.policies.fallbacks.state_of(card.eid) == "fallback"
    await backend.send_due_reports()
    assert len(state_changes(peers, card.eid)) == 1
