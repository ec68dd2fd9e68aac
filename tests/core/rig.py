"""A synchronous in-test runtime over the in-memory responders of tests/core/peers.py.

Used only by tests/policy/test_e2e_gate.py (the policy gate drives the engine synchronously
through it). The engine's own end-to-end tests run against the real peers with
tests/core/driver.py; delete this file once the policy test moves there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from gateway.core import actions as A
from gateway.core.engine import Engine
from gateway.core.events import BackhaulAnswered, BackhaulFailed, DeviceHello, DeviceResult, Event, TimerFired
from gateway.errors import GatewayError
from gateway.links.memory import MemoryLink
from gateway.links.protocol import BatchMsg, Downlink, ErrorMsg, Hello, Idle, Uplink
from hil.agent.agent import Agent
from hil.agent.memory_transport import MemoryAgentTransport
from hil.euicc import SoftEuicc
from tests.core.peers import MiniEim, MiniSmdp, MiniSmds


@dataclass
class CardBackend:
    """The agent's view of a software eUICC: APDUs in, responses out; a refresh resets it."""

    card: SoftEuicc
    refreshes: list[str] = field(default_factory=list)

    def transmit(self, apdu: bytes) -> bytes:
        return self.card.transmit(apdu)

    def refresh(self, kind: str) -> None:
        self.refreshes.append(kind)


@dataclass
class EngineRig:
    engine: Engine
    smdp: MiniSmdp
    eim: MiniEim
    now: float = 1000.0
    down: set[str] = field(default_factory=set)
    downlinks: dict[bytes, Downlink] = field(default_factory=dict)
    timers: dict[tuple[bytes, str], float] = field(default_factory=dict)
    actions: list[A.Action] = field(default_factory=list)
    saved: dict[bytes, A.SaveSession] = field(default_factory=dict)
    other_eims: dict[str, MiniEim] = field(default_factory=dict)
    restart_after_each_uplink: bool = False
    crash_on: str | None = None          # a backhaul function whose answer is lost in a crash
    restarts: int = 0
    crashed: bool = False
    smds: MiniSmds | None = None

    async def exchange(self, eid: bytes, uplink: Uplink) -> Downlink:
        event: Event
        if isinstance(uplink, Hello):
            event = DeviceHello(eid, self.now, uplink.status)
        else:
            event = DeviceResult(eid, self.now, uplink.result, uplink.status)
        self.run([event])
        downlink = self.downlinks.pop(eid, ErrorMsg(7, "the engine did not answer"))
        if self.restart_after_each_uplink:
            self.restart()
        return downlink

    def restart(self) -> None:
        """A gateway restart: a new engine built from the last SaveSession of each device only."""
        self.restarts += 1
        self.engine = Engine(self.engine.config)
        self.timers.clear()
        for eid, saved in self.saved.items():
            self.engine.restore(eid, saved.blob)
        follow: list[Event] = []
        for action in self.engine.resume(self.now):
            self.actions.append(action)
            event = self.perform(action)
            if event is not None:
                follow.append(event)
        self.run(follow)

    def run(self, events: list[Event]) -> None:
        queue: deque[Event] = deque(events)
        while queue:
            event = queue.popleft()
            for action in self.engine.handle(event):
                self.actions.append(action)
                follow = self.perform(action)
                if follow is not None:
                    queue.append(follow)

    def perform(self, action: A.Action) -> Event | None:
        if isinstance(action, A.SendBatch):
            self.downlinks[action.eid] = BatchMsg(action.batch)
        elif isinstance(action, A.ReplyIdle):
            self.downlinks[action.eid] = Idle(action.retry_after_s)
        elif isinstance(action, A.ReplyError):
            self.downlinks[action.eid] = ErrorMsg(action.code, action.text)
        elif isinstance(action, A.SaveSession):
            self.saved[action.eid] = action
        elif isinstance(action, A.StartTimer):
            self.timers[(action.eid, action.name)] = action.at
        elif isinstance(action, A.CancelTimer):
            self.timers.pop((action.eid, action.name), None)
        elif isinstance(action, A.PostEs11):
            assert self.smds is not None
            if action.smds_address in self.down:
                return BackhaulFailed(action.eid, self.now, action.request_id, "NetworkError", True, "down")
            try:
                body = self.smds.handle(action.function, action.body)
            except GatewayError as exc:
                return BackhaulFailed(action.eid, self.now, action.request_id, type(exc).__name__, False, str(exc))
            return BackhaulAnswered(action.eid, self.now, action.request_id, body)
        elif isinstance(action, (A.PostEs9, A.PostEsipa)):
            if self.crash_on is not None and action.function == self.crash_on:
                self.crash_on = None
                self.crashed = True
                return None
            server = action.smdp_address if isinstance(action, A.PostEs9) else action.eim_id
            if server in self.down:
                return BackhaulFailed(action.eid, self.now, action.request_id, "NetworkError", True,
                                      f"{server} unreachable")
            try:
                if isinstance(action, A.PostEs9):
                    body = self.smdp.handle(action.function, action.body)
                else:
                    eim = self.eim if action.eim_id == self.eim.eim_id else self.other_eims[action.eim_id]
                    body = eim.handle(action.body)
            except GatewayError as exc:
                return BackhaulFailed(action.eid, self.now, action.request_id, type(exc).__name__, False, str(exc))
            return BackhaulAnswered(action.eid, self.now, action.request_id, body)
        return None

    def advance(self, seconds: float) -> None:
        """Move the clock and fire every timer that fell due."""
        self.now += seconds
        due = sorted((at, key) for key, at in self.timers.items() if at <= self.now)
        for _, key in due:
            del self.timers[key]
            self.run([TimerFired(key[0], self.now, key[1])])

    def of(self, kind: type[A.Action]) -> list[A.Action]:
        return [a for a in self.actions if isinstance(a, kind)]


def make_agent(link: MemoryLink, card: SoftEuicc, *, imei: str = "353290611234567",
               plmn: str | None = "26201", max_batch_bytes: int | None = None) -> tuple[Agent, CardBackend]:
    backend = CardBackend(card)
    status = Agent.make_status(card.eid, imei=imei, plmn=plmn)
    if max_batch_bytes is not None:
        from dataclasses import replace
        status = replace(status, max_batch_bytes=max_batch_bytes)
    return Agent(status, backend, MemoryAgentTransport(link, card.eid)), backend
