"""1,000 devices through a profile download at once: `python bench/load.py [--devices N] [--json]`.

What runs, all in this one process and one event loop:

- the gateway's own runtime path: `gateway.service.runtime.Runtime` feeding the pure engine
  (`gateway.core.engine.Engine`, configured as `ipae-gateway demo` configures it: the eIM
  peer as the eIM, AddInitialEim on first contact), every step committed to a real SQLite
  store (`gateway.store.AsyncStore`, WAL, in a temporary directory), northbound over the
  gateway's one HTTPS client (`HttpBackhaul` over `BackhaulHttp`, TLS verified) with the
  daemon's connection limits;
- the real peers of hil/peers on loopback TLS sockets: the SM-DP+ (one order per device,
  `--profile-bytes` each, bound with real ECKA/SCP03t) and the eIM (one
  ProfileDownloadTrigger per device, results verified with the eUICC certificates);
- the device side on the **in-memory device link** (`gateway.links.memory.MemoryLink`, the
  same decode/EID-check/encode path as the network adapters, no sockets: CoAP/DTLS and MQTT
  are measured by bench/links.py): per device the reference agent (hil.agent) and a
  software eUICC (hil.euicc, NVM in memory), waking every `--wake` seconds.

Every download is ordered before the clock starts; all devices then wake together. A device
is done when the eIM holds its download result, the profile is on its eUICC and no
notification is left there. The CPU time is the whole process's (gateway, peers and eUICCs
share it: their cryptography is real), so `cpu_s_per_download` is an upper bound for the
gateway's share; `engine_cpu_s_per_download` is the part spent inside `Engine.handle`.

Prints devices, completed, total_s, cpu_s_per_download, engine_cpu_s_per_download,
peak_rss_mb (the process's), exchanges_per_download (every round trip on the device link,
wake-ups answered Idle while the gateway was busy included), backhaul_requests (ESipa and
ES9+ posts); with --json as one JSON object.
Not part of the test run.
"""

from __future__ import annotations

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0]) == _here:
    del sys.path[0]
sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from gateway.backhaul.http import BackhaulHttp, HttpLimits, TlsTrust  # noqa: E402
from gateway.core import actions as A  # noqa: E402
from gateway.core.engine import EimEndpoint, Engine, EngineConfig  # noqa: E402
from gateway.core.events import Event  # noqa: E402
from gateway.links.memory import MemoryLink  # noqa: E402
from gateway.service.runtime import HttpBackhaul, Runtime, RuntimeOptions  # noqa: E402
from gateway.store import AsyncStore  # noqa: E402
from hil import rspcrypto  # noqa: E402
from hil.agent.agent import Agent  # noqa: E402
from hil.agent.memory_transport import MemoryAgentTransport  # noqa: E402
from hil.euicc import SoftEuicc  # noqa: E402
from hil.peers.eim import EimServer  # noqa: E402
from hil.peers.smdpp import SmdppServer  # noqa: E402
from hil.pki import generate_pki  # noqa: E402


class TimedEngine(Engine):
    cpu_s = 0.0

    def handle(self, event: Event) -> list[A.Action]:
        start = time.process_time()
        try:
            return super().handle(event)
        finally:
            self.cpu_s += time.process_time() - start


def _eid(n: int) -> bytes:
    return bytes.fromhex(rspcrypto.eid_with_check_digits(f"8904903200000000000{n:011d}"))


async def _device(agent: Agent, card: SoftEuicc, package: Any, order_iccid: bytes, wake_s: float,
                  deadline: float) -> bool:
    while time.monotonic() < deadline:
        await agent.run_session()
        if (not package.pending and not card.notifications
                and any(p.iccid == order_iccid for p in card.profiles)):
            return bool(package.state == "done")
        await asyncio.sleep(wake_s)
    return False


async def run(devices: int, profile_bytes: int, wake_s: float, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ipae-load-") as tmp:
        pki = await asyncio.to_thread(generate_pki, Path(tmp) / "pki")
        async with SmdppServer(pki) as smdp, EimServer(pki, smdp_url=smdp.url) as eim:
            engine = TimedEngine(EngineConfig(
                eims=(EimEndpoint(eim.service.eim_id, eim.fqdn),),
                initial_eim=eim.service.own_configuration_data(indirect_download=False), seed=1))
            astore = await AsyncStore.open(Path(tmp) / "gateway.sqlite3")
            http = BackhaulHttp(HttpLimits(request_timeout_s=max(120.0, timeout_s)))
            try:
                backhaul = HttpBackhaul(http, trust=TlsTrust(ca_file=str(pki.tls_trust_path)))
                runtime = Runtime(engine, astore, backhaul, clock=time.time,
                                  options=RuntimeOptions(exchange_timeout_s=timeout_s))
                link = MemoryLink(runtime)
                now = time.time()
                eids = [_eid(n) for n in range(devices)]

                def register(s: Any) -> None:
                    for n, eid in enumerate(eids):
                        s.devices.register(eid, "coap", f"load-{n}", now=now)
                await astore.run(register)
                work = []
                for eid in eids:
                    card = SoftEuicc(pki, eid)
                    eim.service.register(eid, euicc_certificate=card.identity.certificate_der,
                                         eum_certificate=card.identity.eum_certificate_der)
                    order = smdp.service.order_profile(eid=eid, size=profile_bytes)
                    package = eim.service.queue_profile_download(
                        eid, {"activationCode": f"1${smdp.address}${order.matching_id}"})
                    agent = Agent(Agent.make_status(eid), card, MemoryAgentTransport(link, eid))
                    work.append((agent, card, package, order.iccid))
                wall, cpu = time.perf_counter(), time.process_time()
                deadline = time.monotonic() + timeout_s
                done = await asyncio.gather(*(_device(a, c, p, i, wake_s, deadline) for a, c, p, i in work))
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                await runtime.drain(10.0)
                await runtime.close()
            finally:
                await http.close()
                await astore.close()
            completed = sum(done)
            return {
                "devices": devices,
                "completed": completed,
                "profile_bytes": profile_bytes,
                "device_link": "memory (gateway.links.memory.MemoryLink)",
                "total_s": round(wall, 3),
                "cpu_s_per_download": round(cpu / max(1, completed), 5),
                "engine_cpu_s_per_download": round(engine.cpu_s / max(1, completed), 5),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "exchanges_per_download": round(link.totals.exchanges / max(1, devices), 2),
                "backhaul_requests": int(sum(runtime.metrics.backhaul_requests.values.values())),
                "smdp_notifications": len(smdp.service.notifications),
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--profile-bytes", type=int, default=30_000)
    parser.add_argument("--wake", type=float, default=0.5, metavar="S", help="seconds between a device's wake-ups")
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="S", help="give up after S seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(run(args.devices, args.profile_bytes, args.wake, args.timeout))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0 if result["completed"] == args.devices else 1


if __name__ == "__main__":
    sys.exit(main())
