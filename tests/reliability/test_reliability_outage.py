"""Issue 7 outage test: the eIM is unreachable for 24 simulated hours while devices keep working.

Time is compressed through the injected clock (DESIGN principle 5), as far as the runtime
allows today. `Runtime` takes a `clock` for every event's `now` (so the engine computes its
backoffs, retries and poll times from it) and every stored time; the HTTPS client's circuit
breakers take one too. But the runtime arms the engine's timers (StartTimer) with the event
loop's `call_later(at - clock())`, in the loop's own seconds. So the test runs the gateway
on an event loop whose time can jump (`WarpLoop`) and gives the runtime and the breakers a
clock read from that loop: one clock for both, and 24 hours pass in seconds. The loop jumps
only when everything is quiet (no exchange, no backhaul request, no peer task in flight), so
no network timeout of a request in progress ever sees a jump.

What runs: the gateway's runtime (engine, SQLite store, the one HTTPS client with circuit
breakers as the daemon builds it, its ESipa inject endpoint on TLS), the real eIM and SM-DP+
peers, and devices on the in-memory device link (the reference agent and a software eUICC
each). The scenario:

1. the eIM is up: every device downloads a profile (ordered through the eIM);
2. while the devices sleep the eIM pushes three eUICC packages per device (enable,
   listProfileInfo, disable) to the gateway's inject endpoint, which stores them;
3. the eIM's ESipa endpoint goes away (its listener closed: connection refused) for 24
   simulated hours; the devices wake every 10 simulated minutes and run the stored packages;
   their results wait in the gateway (notifications to the SM-DP+ still go out);
4. the eIM comes back on the same address; time goes on until nothing is left to deliver.

Then every package has exactly one result at the eIM, every eUICC ran every package once,
nothing is left on the eUICCs (the ledger of reliability_fleet), and the eIM really got
nothing during the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.backhaul.http import BackhaulHttp, HttpLimits, TlsTrust
from gateway.backhaul.inject_server import InjectServer, server_ssl_context
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.core.retry import CircuitBreaker
from gateway.links.memory import MemoryLink
from gateway.service import demo
from gateway.service.runtime import HttpBackhaul, Runtime
from gateway.store import AsyncStore, Store
from hil.agent.agent import Agent
from hil.agent.memory_transport import MemoryAgentTransport
from hil.peers.common import iccid_to_str
from hil.peers.eim import EimServer
from hil.peers.smdpp import SmdppServer
from hil.pki import generate_pki
from reliability_fleet import Device, TracedEuicc, check_ledger, make_eid

DEVICES = 6
STEP_S = 600.0                    # simulated seconds per jump: devices wake every 10 minutes
OUTAGE_S = 24 * 3600.0
AFTER_S = 12 * 3600.0             # bound on the catch-up after the outage
QUIET_REAL_S = 60.0               # bound on the real time one step may take to go quiet


class WarpLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock can be moved forward: timers due by then fire at once."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset


class Scenario:
    def __init__(self, loop: WarpLoop, workdir: Path) -> None:
        self.loop = loop
        self.workdir = workdir
        self.epoch = time.time() - loop.time()
        self.devices: list[Device] = []
        self.active: set[bytes] = set()
        self.stop = asyncio.Event()
        self.runtime: Runtime | None = None

    def clock(self) -> float:
        return self.epoch + self.loop.time()

    async def device_loop(self, d: Device) -> None:
        while not self.stop.is_set():
            self.active.add(d.eid)
            try:
                await d.agent.run_session()
                d.sessions += 1
            finally:
                self.active.discard(d.eid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), STEP_S)

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
        self.loop.offset += seconds
        await self.quiet(eim)


async def _scenario(loop: WarpLoop, workdir: Path) -> dict[str, Any]:
    sc = Scenario(loop, workdir)
    pki = await asyncio.to_thread(generate_pki, workdir / "pki")
    async with contextlib.AsyncExitStack() as stack:
        smdp = await stack.enter_async_context(SmdppServer(pki))
        inject_port = demo.free_tcp()
        eim = await stack.enter_async_context(EimServer(
            pki, smdp_url=smdp.url, inject_url=f"https://127.0.0.1:{inject_port}"))
        # how often a result is handed to the eIM (a re-send of one already stored is answered, not stored)
        deliveries = {"results_handed_over": 0}
        take_result = eim.service.take_result

        async def counting_take_result(device: Any, choice: Any) -> Any:
            deliveries["results_handed_over"] += 1
            return await take_result(device, choice)
        eim.service.take_result = counting_take_result  # type: ignore[method-assign]
        astore = await AsyncStore.open(workdir / "gateway.sqlite3")
        stack.push_async_callback(astore.close)
        engine = Engine(EngineConfig(eims=(EimEndpoint(eim.service.eim_id, eim.fqdn),),
                                     initial_eim=eim.service.own_configuration_data(indirect_download=False),
                                     idle_retry_s=int(STEP_S), seed=7))
        # the daemon's client: breakers per server on the injected clock (gateway.service.supervisor)
        http = BackhaulHttp(HttpLimits(connect_timeout_s=10.0, request_timeout_s=30.0),
                            breaker_factory=lambda server: CircuitBreaker(server, 5, 60.0, 1800.0, 1),
                            clock=sc.clock)
        stack.push_async_callback(http.close)
        backhaul = HttpBackhaul(http, trust=TlsTrust(ca_file=str(pki.tls_trust_path)))
        runtime = sc.runtime = Runtime(engine, astore, backhaul, clock=sc.clock)
        stack.push_async_callback(runtime.close)
        inject = InjectServer(runtime.on_transfer, server_ssl_context(str(pki.eim_tls.cert_path),
                                                                      str(pki.eim_tls.key_path)),
                              host="127.0.0.1", port=inject_port)
        await inject.start()
        stack.push_async_callback(inject.stop)
        link = MemoryLink(runtime)
        now = sc.clock()

        def register(s: Store) -> None:
            for n in range(1, DEVICES + 1):
                s.devices.register(make_eid(n), "coap", f"outage-{n}", now=now)
        await astore.run(register)
        for n in range(1, DEVICES + 1):
            eid = make_eid(n)
            card = TracedEuicc(pki, eid, state_path=workdir / "cards" / f"{eid.hex()}.json")
            eim.service.register(eid, euicc_certificate=card.identity.certificate_der,
                                 eum_certificate=card.identity.eum_certificate_der)
            agent = Agent(Agent.make_status(eid), card, MemoryAgentTransport(link, eid))
            run = demo.DeviceRun(n, eid, "memory", f"outage-{n}", b"")
            sc.devices.append(Device(run, card, agent, agent.transport))

        # 1. the eIM up: a profile for every device
        iccids = {}
        for d in sc.devices:
            order = smdp.service.order_profile(eid=d.eid, size=4096)
            iccids[d.eid] = iccid_to_str(order.iccid)
            eim.service.queue_profile_download(d.eid, {"activationCode": f"1${smdp.address}${order.matching_id}"})
        tasks = [asyncio.create_task(sc.device_loop(d)) for d in sc.devices]
        try:
            for _ in range(int(6 * 3600 / STEP_S)):
                if all(not p.pending for d in sc.devices for p in eim.service.devices[d.eid].packages) and all(
                        not d.card.notifications for d in sc.devices):
                    break
                await sc.advance(STEP_S, eim)
            downloaded = [d for d in sc.devices if d.card.profiles]
            assert len(downloaded) == DEVICES, "the downloads before the outage did not all finish"

            # 2. packages pushed to the gateway while the devices sleep
            await sc.quiet(eim)
            pushed = []
            for d in sc.devices:
                for request in ({"psmo": [{"op": "enable", "iccid": iccids[d.eid]}]},
                                {"psmo": [{"op": "listProfileInfo"}]},
                                {"psmo": [{"op": "disable", "iccid": iccids[d.eid]}]}):
                    package = eim.service.queue_euicc_package(d.eid, request)
                    outcome = await eim.service.push(package)
                    assert outcome == "eimPackageReceived", f"push refused: {outcome}"
                    pushed.append((d, package))
            loads_before = {d.eid: len(d.card.loads) for d in sc.devices}

            # 3. the eIM unreachable for 24 simulated hours
            await sc.quiet(eim)
            await eim.peer.stop()
            outage_start = sc.clock()
            results_before = {d.eid: len(eim.service.devices[d.eid].results) for d in sc.devices}
            while sc.clock() - outage_start < OUTAGE_S:
                await sc.advance(STEP_S, eim)
            failed_posts = int(sum(v for k, v in runtime.metrics.backhaul_requests.values.items()
                                   if "failed" in str(k)))
            ran_in_outage = {d.eid: sum(1 for load in d.card.loads[loads_before[d.eid]:] if load.accepted)
                             for d in sc.devices}
            still_pending = [p for _, p in pushed if p.pending]
            got_in_outage = {d.eid: len(eim.service.devices[d.eid].results) - results_before[d.eid]
                             for d in sc.devices}

            # 4. the eIM back on the same address: time goes on until everything is delivered
            await eim.peer.start()
            after_start = sc.clock()
            while sc.clock() - after_start < AFTER_S:
                if all(not p.pending for _, p in pushed) and all(not d.card.notifications for d in sc.devices):
                    break
                await sc.advance(STEP_S, eim)
            caught_up_s = sc.clock() - after_start
            await sc.quiet(eim)
        finally:
            sc.stop.set()
            await asyncio.gather(*tasks)
        problems, leaks, figures = check_ledger(sc.devices, smdp, eim)
        figures.update(deliveries)
        return {"problems": problems, "leaks": leaks, "figures": figures, "ran_in_outage": ran_in_outage,
                "still_pending": still_pending, "pushed": len(pushed), "got_in_outage": got_in_outage,
                "failed_posts": failed_posts, "caught_up_s": caught_up_s}


def test_eim_unreachable_for_24_simulated_hours_every_result_arrives_exactly_once() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ipae-outage-"))
    loop = WarpLoop()
    started = time.monotonic()
    try:
        out = loop.run_until_complete(_scenario(loop, workdir))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"outage test: {out['pushed']} packages pushed before a 24 h eIM outage; "
          f"{out['failed_posts']} backhaul requests failed during it; caught up "
          f"{out['caught_up_s'] / 3600:.1f} simulated hours after the eIM returned; "
          f"{time.monotonic() - started:.1f} s real; {out['figures']}")
    assert all(n == 3 for n in out["ran_in_outage"].values()), \
        f"the devices did not run their stored packages during the outage: {out['ran_in_outage']}"
    assert len(out["still_pending"]) == out["pushed"] and not any(out["got_in_outage"].values()), \
        f"the eIM got results while unreachable: {out['got_in_outage']}"
    assert out["failed_posts"] > 0
    assert not out["problems"], "\n".join(out["problems"])
    assert not out["leaks"], "\n".join(out["leaks"])

