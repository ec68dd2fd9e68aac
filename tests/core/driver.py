"""The engine's end-to-end test driver: the engine, the real SM-DP+ and eIM peers, and the
reference agent on a software eUICC over the counting in-memory device link.

`EngineDriver` is the `UplinkHandler` behind `gateway.links.memory.MemoryLink`. It does what
the service runtime (gateway/service/runtime.py) does with the engine's actions, minus the
SQLite store and with an injected clock: each uplink becomes an engine event; PostEsipa /
PostEs9 go over real HTTPS through the runtime's own `HttpBackhaul` (gateway/backhaul/http.py
with the ESipa and ES9+ bindings) to the peers of hil/peers, and their answers (or the
library errors translated by the backhaul) come back as BackhaulAnswered / BackhaulFailed;
timers fire when a test calls `advance`. It is not the runtime because the runtime arms its
timers on the event loop: a test of a three-hour outage would take three hours.

Fault hooks are on the wire, never inside the peers: `after[function]` runs once after that
function's answer arrived (stop a server, move a peer's clock); `rewrite[function]` replaces
the answer body (a malformed server answer); `crash_on` loses one answer as a gateway crash
would. SM-DS event retrieval (ES11) goes to the in-memory `MiniSmds` of tests/core/peers.py,
because hil/peers has no SM-DS.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from gateway.backhaul.http import BackhaulHttp, HttpLimits, TlsTrust
from gateway.core import actions as A
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.core.events import (
    BackhaulAnswered,
    BackhaulFailed,
    DeviceHello,
    DeviceResult,
    EimPackageReceived,
    Event,
    TimerFired,
)
from gateway.errors import FunctionFailed, GatewayError, is_retryable
from gateway.links.memory import MemoryLink
from gateway.links.protocol import BatchMsg, Downlink, ErrorMsg, Hello, Idle, Uplink
from gateway.service.runtime import HttpBackhaul, _pushed_package_identity
from gateway.spec import codec
from hil.agent.agent import Agent
from hil.agent.memory_transport import MemoryAgentTransport
from hil.euicc import Faults, SoftEuicc
from hil.euicc.eim import eim_config_from
from hil.peers.common import iccid_to_bytes
from hil.peers.eim import EimServer
from hil.peers.smdpp import SmdppServer
from hil.pki import RspPki
from tests.core.peers import MiniSmds

ICCID_DIGITS = "89000123456789012341"
ICCID = iccid_to_bytes(ICCID_DIGITS)
PROFILE_BYTES = 30_000


@dataclass
class CardBackend:
    """The agent's view of a software eUICC: APDUs in, responses out; a refresh is recorded."""

    card: SoftEuicc
    refreshes: list[str] = field(default_factory=list)

    def transmit(self, apdu: bytes) -> bytes:
        return self.card.transmit(apdu)

    def refresh(self, kind: str) -> None:
        self.refreshes.append(kind)


@dataclass
class EngineDriver:
    engine: Engine
    backhaul: HttpBackhaul
    now: float = 1000.0
    downlinks: dict[bytes, Downlink] = field(default_factory=dict)
    timers: dict[tuple[bytes, str], float] = field(default_factory=dict)
    actions: list[A.Action] = field(default_factory=list)
    saved: dict[bytes, A.SaveSession] = field(default_factory=dict)
    after: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    rewrite: dict[str, bytes] = field(default_factory=dict)
    crash_on: str | None = None
    crashed: bool = False
    restart_after_each_uplink: bool = False
    restarts: int = 0
    smds: MiniSmds | None = None
    posted: list[str] = field(default_factory=list)           # functions, in the order posted
    _locks: dict[bytes, asyncio.Lock] = field(default_factory=dict)

    # -- the device link ------------------------------------------------------------------------

    async def exchange(self, eid: bytes, uplink: Uplink) -> Downlink:
        event: Event
        if isinstance(uplink, Hello):
            event = DeviceHello(eid, self.now, uplink.status)
        else:
            event = DeviceResult(eid, self.now, uplink.result, uplink.status)
        await self.run([event])
        downlink = self.downlinks.pop(eid, ErrorMsg(7, "the engine did not answer"))
        if self.restart_after_each_uplink:
            await self.restart()
        return downlink

    # -- the eIM push (what gateway.service.runtime.Runtime.on_transfer does, without the store) --

    async def on_transfer(self, body: bytes, binding: str) -> bytes:
        eid, eim_id, key = _pushed_package_identity(body)
        await self.run([EimPackageReceived(eid, self.now, eim_id, body, "push", key)])
        return codec.encode("TransferEimPackageResponse", ("eimPackageReceived", None))

    # -- the engine's step ---------------------------------------------------------------------

    async def run(self, events: list[Event]) -> None:
        queue: deque[Event] = deque(events)
        while queue:
            event = queue.popleft()
            async with self._locks.setdefault(event.eid, asyncio.Lock()):
                out = self.engine.handle(event)
            for action in out:
                self.actions.append(action)
                follow = await self.perform(action)
                if follow is not None:
                    queue.append(follow)

    async def restart(self) -> None:
        """A gateway restart: a new engine built from the last SaveSession of each device only."""
        self.restarts += 1
        self.engine = Engine(self.engine.config)
        self.timers.clear()
        for eid, saved in self.saved.items():
            self.engine.restore(eid, saved.blob)
        follow: list[Event] = []
        for action in self.engine.resume(self.now):
            self.actions.append(action)
            event = await self.perform(action)
            if event is not None:
                follow.append(event)
        await self.run(follow)

    async def perform(self, action: A.Action) -> Event | None:
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
        elif isinstance(action, (A.PostEsipa, A.PostEs9, A.PostEs11)):
            return await self._post(action)
        return None

    async def _post(self, action: A.PostEsipa | A.PostEs9 | A.PostEs11) -> Event | None:
        self.posted.append(action.function)
        try:
            if isinstance(action, A.PostEsipa):
                body = await self.backhaul.post_esipa(action)
            elif isinstance(action, A.PostEs9):
                body = await self.backhaul.post_es9(action)
            else:
                assert self.smds is not None, "an ES11 request without an SM-DS in the test"
                body = self.smds.handle(action.function, action.body)
        except GatewayError as exc:
            subject = reason = None
            if isinstance(exc, FunctionFailed):
                subject, reason = exc.subject_code, exc.reason_code
            retry_after = getattr(exc, "retry_after_s", None)
            return BackhaulFailed(action.eid, self.now, action.request_id, type(exc).__name__, is_retryable(exc),
                                  str(exc), subject_code=subject, reason_code=reason,
                                  retry_after_s=None if retry_after is None else float(retry_after))
        hook = self.after.pop(action.function, None)
        if hook is not None:
            await hook()
        if self.crash_on == action.function:
            self.crash_on = None
            self.crashed = True
            return None
        body = self.rewrite.get(action.function, body)
        return BackhaulAnswered(action.eid, self.now, action.request_id, body)

    async def advance(self, seconds: float) -> None:
        """Move the clock and fire every timer that fell due."""
        self.now += seconds
        due = sorted((at, key) for key, at in self.timers.items() if at <= self.now)
        for _, key in due:
            if self.timers.get(key) is not None and self.timers[key] <= self.now:
                del self.timers[key]
                await self.run([TimerFired(key[0], self.now, key[1])])

    def of(self, kind: type[A.Action]) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]

    def audits(self, operation: str) -> list[A.Audit]:
        return [a for a in self.actions if isinstance(a, A.Audit) and a.operation == operation]


# -- the peers and their admin APIs --------------------------------------------------------------


class Admin:
    """The peers' admin APIs over HTTPS (hil/peers/README.md), trusting the test PKI's TLS CA."""

    def __init__(self, pki: RspPki, session: aiohttp.ClientSession) -> None:
        self.ssl: ssl.SSLContext = TlsTrust(ca_file=str(pki.tls_trust_path)).ssl_context()
        self.session = session

    async def get(self, url: str) -> Any:
        async with self.session.get(url, ssl=self.ssl) as resp:
            assert resp.status == 200, (url, resp.status, await resp.text())
            return await resp.json()

    async def post(self, url: str, obj: dict[str, Any]) -> Any:
        async with self.session.post(url, json=obj, ssl=self.ssl) as resp:
            assert resp.status == 200, (url, resp.status, await resp.text())
            return await resp.json()


@dataclass
class Peers:
    pki: RspPki
    smdp: SmdppServer
    eim: EimServer
    http: BackhaulHttp
    admin: Admin
    extra_eims: list[EimServer] = field(default_factory=list)

    # -- SM-DP+ --
    async def order(self, *, size: int = PROFILE_BYTES, iccid: str = ICCID_DIGITS, **more: Any) -> str:
        """A download order at the SM-DP+; its activation code."""
        obj: dict[str, Any] = {"size": size, "iccid": iccid, **more}
        order = await self.admin.post(self.smdp.url + "/admin/orders", obj)
        return str(order["activationCode"])

    async def smdp_notifications(self) -> list[dict[str, Any]]:
        return list((await self.admin.get(self.smdp.url + "/admin/notifications"))["notifications"])

    async def orders(self) -> list[dict[str, Any]]:
        return list((await self.admin.get(self.smdp.url + "/admin/orders"))["orders"])

    # -- eIM --
    async def queue(self, eid: bytes, what: str, obj: dict[str, Any], eim: EimServer | None = None) -> dict[str, Any]:
        """POST /admin/eids/<eid>/<what> (psmo, eco, ipa-euicc-data, download); the package."""
        out = await self.admin.post(f"{(eim or self.eim).url}/admin/eids/{eid.hex()}/{what}", obj)
        return dict(out["package"])

    async def download(self, eid: bytes, activation_code: str) -> dict[str, Any]:
        return await self.queue(eid, "download", {"activationCode": activation_code})

    async def psmo(self, eid: bytes, *ops: dict[str, Any]) -> dict[str, Any]:
        return await self.queue(eid, "psmo", {"operations": list(ops)})

    async def device(self, eid: bytes, eim: EimServer | None = None) -> dict[str, Any]:
        return dict(await self.admin.get(f"{(eim or self.eim).url}/admin/eids/{eid.hex()}"))

    async def results(self, eid: bytes, eim: EimServer | None = None) -> list[dict[str, Any]]:
        return list((await self.admin.get(f"{(eim or self.eim).url}/admin/eids/{eid.hex()}/results"))["results"])

    async def one_result_per_package(self, eid: bytes, eim: EimServer | None = None) -> dict[int, dict[str, Any]]:
        """Each package's one result, read back from the eIM; fails when one has none or several."""
        device = await self.device(eid, eim)
        results = device["results"]
        by_package: dict[int, list[dict[str, Any]]] = {}
        for r in results:
            assert r["packageId"] is not None, r
            by_package.setdefault(r["packageId"], []).append(r)
        for package in device["packages"]:
            got = by_package.get(package["packageId"], [])
            assert len(got) == 1, (package, got)
            assert package["state"] in ("done", "failed"), package
        return {k: v[0] for k, v in by_package.items()}

    def eim_data(self, *, indirect: bool = False, eim: EimServer | None = None) -> dict[str, Any]:
        """The eIM's EimConfigurationData, as an eUICC leaves the factory with it."""
        return (eim or self.eim).service.own_configuration_data(indirect_download=indirect)

    def card(self, eid: bytes | None = None, *, faults: Faults | None = None, indirect: bool = False,
             eims: tuple[EimServer, ...] | None = None) -> SoftEuicc:
        """A software eUICC with its eIM(s) configured (SGP.32 §3.5), known to the eIM."""
        card = SoftEuicc(self.pki, eid or self.pki.eid_bytes, faults=faults)
        for eim in eims if eims is not None else (self.eim,):
            card.state.eims.append(eim_config_from(card, self.eim_data(indirect=indirect, eim=eim)))
            eim.service.register(card.eid, euicc_certificate=card.identity.certificate_der)
        card.commit()
        return card

    def config(self, *, eims: tuple[EimServer, ...] | None = None, **more: Any) -> EngineConfig:
        endpoints = tuple(EimEndpoint(e.service.eim_id, e.fqdn) for e in (eims if eims is not None else (self.eim,)))
        return EngineConfig(eims=endpoints, **{"seed": 7, **more})

    def driver(self, config: EngineConfig | None = None, *, esipa_binding: str = "asn1") -> EngineDriver:
        trust = TlsTrust(ca_file=str(self.pki.tls_trust_path))
        return EngineDriver(Engine(config or self.config()),
                            HttpBackhaul(self.http, trust=trust, esipa_binding=esipa_binding))


@asynccontextmanager
async def running_peers(pki: RspPki, *, eim_id: str = "ipae-test-eim", inject_url: str | None = None,
                        smdp_clock: Callable[[], float] = time.time) -> AsyncIterator[Peers]:
    async with SmdppServer(pki, clock=smdp_clock) as smdp, \
            EimServer(pki, eim_id=eim_id, smdp_url=smdp.url, inject_url=inject_url) as eim, \
            BackhaulHttp(HttpLimits(request_timeout_s=20.0, connect_timeout_s=5.0)) as http, \
            aiohttp.ClientSession() as session:
        yield Peers(pki, smdp, eim, http, Admin(pki, session))


async def restart_server(server: SmdppServer | EimServer) -> None:
    """Bring a stopped peer back on the same port, with the state it had."""
    await server.peer.start()


def make_agent(link: MemoryLink, card: SoftEuicc, *, imei: str = "353290611234567",
               plmn: str | None = "26201", max_batch_bytes: int | None = None) -> tuple[Agent, CardBackend]:
    backend = CardBackend(card)
    status = Agent.make_status(card.eid, imei=imei, plmn=plmn)
    if max_batch_bytes is not None:
        status = replace(status, max_batch_bytes=max_batch_bytes)
    return Agent(status, backend, MemoryAgentTransport(link, card.eid)), backend


def mid_session(card: SoftEuicc) -> bool:
    """An RSP session with a transaction: AuthenticateServer ran and nothing ended it. (A bare
    GetEuiccChallenge leaves only a challenge, which the next one replaces: SGP.22 §3.1.2.)"""
    return card.session is not None and bool(card.session.transaction_id)
