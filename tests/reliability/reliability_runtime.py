"""The gateway's runtime in the test's own event loop, on a simulated clock, for scenarios of
simulated hours (the outage and the backlog tests).

What runs: the gateway's runtime (engine, SQLite store, the one HTTPS client with circuit
breakers as the daemon builds it, its ESipa inject endpoint on TLS), the real eIM and SM-DP+
peers, and devices on the in-memory device link (the reference agent and a software eUICC
each, traced by reliability_fleet). Time is compressed through the clock the gateway runs on
(gateway.clock.SimulatedClock): the runtime's events, stored times and engine timers, the
breakers and the devices' wake-ups all read or sleep on it. It jumps (`advance`) only when
everything is quiet (no exchange, no backhaul request, no peer task in flight), so no network
timeout of a request in progress -- those stay on real time -- ever sees a jump.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from gateway.backhaul.http import BackhaulHttp, HttpLimits, TlsTrust
from gateway.backhaul.inject_server import InjectServer, server_ssl_context
from gateway.clock import SimulatedClock
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.core.retry import CircuitBreaker
from gateway.links.memory import MemoryLink
from gateway.service import demo
from gateway.service.runtime import HttpBackhaul, Runtime
from gateway.store import AsyncStore, Store, StoreOptions
from hil.agent.agent import Agent
from hil.agent.memory_transport import MemoryAgentTransport
from hil.peers.eim import EimServer
from hil.peers.smdpp import SmdppServer
from hil.pki import RspPki
from reliability_fleet import Device, TracedEuicc, make_eid

STEP_S = 600.0                    # simulated seconds per jump: devices wake every 10 minutes
QUIET_REAL_S = 60.0               # bound on the real time one step may take to go quiet


class Scenario:
    """The simulated clock, the devices and the gateway's runtime of one scenario."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.clock = SimulatedClock()
        self.devices: list[Device] = []
        self.active: set[bytes] = set()
        self.stop = asyncio.Event()
        self.runtime: Runtime | None = None
        self.astore: AsyncStore | None = None
        self.results_handed_over = 0   # results handed to the eIM (a re-send of a stored one is answered, not stored)

    async def device_loop(self, d: Device) -> None:
        while not self.stop.is_set():
            self.active.add(d.eid)
            try:
                await d.agent.run_session()
                d.sessions += 1
            finally:
                self.active.discard(d.eid)
            sleep = asyncio.ensure_future(self.clock.sleep(STEP_S))
            stopped = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait({sleep, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for f in (sleep, stopped):
                f.cancel()
            await asyncio.gather(sleep, stopped, return_exceptions=True)

    async def quiet(self, eim: EimServer) -> None:
        """Until no device session, gateway task or eIM task is in flight (real time, bounded)."""
        assert self.runtime is not None
        deadline = time.monotonic() + QUIET_REAL_S
        calm = 0
        while calm < 3:
            await asyncio.sleep(0.01)
            busy = self.active or self.runtime.inflight or eim.service.background
            calm = 0 if busy else calm + 1
            if time.monotonic() > deadline:
                raise AssertionError(f"not quiet after {QUIET_REAL_S} s: {len(self.active)} devices in a session, "
                                     f"{self.runtime.inflight} gateway tasks")

    async def advance(self, seconds: float, eim: EimServer) -> None:
        await self.quiet(eim)
        self.clock.advance(seconds)
        await self.quiet(eim)

    async def start(self, stack: contextlib.AsyncExitStack, pki: RspPki, eim: EimServer, count: int,
                    inject_port: int, options: StoreOptions = StoreOptions()) -> Runtime:
        """The gateway's runtime with `count` registered devices, each with its agent."""
        take_result = eim.service.take_result

        async def counting_take_result(device: Any, choice: Any) -> Any:
            self.results_handed_over += 1
            return await take_result(device, choice)
        eim.service.take_result = counting_take_result  # type: ignore[method-assign]
        astore = self.astore = await AsyncStore.open(self.workdir / "gateway.sqlite3", options)
        stack.push_async_callback(astore.close)
        engine = Engine(EngineConfig(eims=(EimEndpoint(eim.service.eim_id, eim.fqdn),),
                                     initial_eim=eim.service.own_configuration_data(indirect_download=False),
                                     idle_retry_s=int(STEP_S), seed=7))
        # the daemon's client: breakers per server on the injected clock (gateway.service.supervisor)
        http = BackhaulHttp(HttpLimits(connect_timeout_s=10.0, request_timeout_s=30.0),
                            breaker_factory=lambda server: CircuitBreaker(server, 5, 60.0, 1800.0, 1),
                            clock=self.clock)
        stack.push_async_callback(http.close)
        backhaul = HttpBackhaul(http, trust=TlsTrust(ca_file=str(pki.tls_trust_path)))
        runtime = self.runtime = Runtime(engine, astore, backhaul, clock=self.clock)
        stack.push_async_callback(runtime.close)
        runtime.note_backlog(await astore.run(lambda s: s.outbox.usage()))
        inject = InjectServer(runtime.on_transfer, server_ssl_context(str(pki.eim_tls.cert_path),
                                                                      str(pki.eim_tls.key_path)),
                              host="127.0.0.1", port=inject_port)
        await inject.start()
        stack.push_async_callback(inject.stop)
        link = MemoryLink(runtime)
        now = self.clock()

        def register(s: Store) -> None:
            for n in range(1, count + 1):
                s.devices.register(make_eid(n), "coap", f"device-{n}", now=now)
        await astore.run(register)
        for n in range(1, count + 1):
            eid = make_eid(n)
            card = TracedEuicc(pki, eid, state_path=self.workdir / "cards" / f"{eid.hex()}.json")
            eim.service.register(eid, euicc_certificate=card.identity.certificate_der,
                                 eum_certificate=card.identity.eum_certificate_der)
            agent = Agent(Agent.make_status(eid), card, MemoryAgentTransport(link, eid))
            run = demo.DeviceRun(n, eid, "memory", f"device-{n}", b"")
            self.devices.append(Device(run, card, agent, agent.transport))
        return runtime

    def start_devices(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.device_loop(d)) for d in self.devices]

    async def stop_devices(self, tasks: list[asyncio.Task[None]]) -> None:
        self.stop.set()
        await asyncio.gather(*tasks)


async def peers(stack: contextlib.AsyncExitStack, pki: RspPki) -> tuple[SmdppServer, EimServer, int]:
    """The SM-DP+ and the eIM (which pushes to the gateway's inject port, returned)."""
    smdp = await stack.enter_async_context(SmdppServer(pki))
    inject_port = demo.free_tcp()
    eim = await stack.enter_async_context(EimServer(
        pki, smdp_url=smdp.url, inject_url=f"https://127.0.0.1:{inject_port}"))
    return smdp, eim, inject_port
