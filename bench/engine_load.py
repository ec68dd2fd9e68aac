"""Many devices through a profile download at once: `python bench/engine_load.py [--devices N] [--json]`.

One gateway process, one engine, N software eUICCs (hil.euicc) each behind the reference agent
on the in-memory device link, all woken together. The SM-DP+ and eIM are the real peers
(hil/peers), each in a process of its own, reached over HTTPS through the gateway's backhaul
(gateway.service.runtime.HttpBackhaul, as tests/core/driver.py drives it). Each download is
ordered at the eIM through its admin API (a ProfileDownloadTrigger for a 30 KB profile) and
runs until its installation result is verified at the eIM and the notification delivered to
the SM-DP+ and removed from the eUICC.

The eUICCs' cryptography runs in the gateway process (the cards and agents are simulated
there), so `cpu_s_per_download` is the gateway process's CPU (engine, backhaul, TLS, link
encoding, and the simulated cards); `engine_cpu_s_per_download` is the part spent inside
`Engine.handle`; `peers_cpu_s_per_download` is the SM-DP+ and eIM processes'. `peak_rss_mb`
is the gateway process's.

Prints total_s, cpu_s_per_download, engine_cpu_s_per_download, peers_cpu_s_per_download,
peak_rss_mb, completed, exchanges_per_download.
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
import base64  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402

from gateway.backhaul.http import BackhaulHttp, HttpLimits, TlsTrust  # noqa: E402
from gateway.core import actions as A  # noqa: E402
from gateway.core.engine import EimEndpoint, Engine, EngineConfig  # noqa: E402
from gateway.core.events import Event  # noqa: E402
from gateway.links.memory import MemoryLink  # noqa: E402
from gateway.service.runtime import HttpBackhaul  # noqa: E402
from gateway.spec import codec  # noqa: E402
from hil import rspcrypto  # noqa: E402
from hil.euicc import SoftEuicc  # noqa: E402
from hil.euicc.eim import eim_config_from  # noqa: E402
from hil.pki import generate_pki  # noqa: E402
from tests.core.driver import Admin, EngineDriver, make_agent  # noqa: E402


class TimedEngine(Engine):
    cpu_s = 0.0

    def handle(self, event: Event) -> list[A.Action]:
        start = time.process_time()
        try:
            return super().handle(event)
        finally:
            self.cpu_s += time.process_time() - start


@asynccontextmanager
async def peer_process(module: str, *args: str) -> AsyncIterator[tuple[str, int]]:
    """`python -m module ...` until it prints READY; (its URL, its pid)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", module, *args,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL,
                                                cwd=os.path.dirname(_here))
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"{module} did not start: {line!r}")
        yield line.split()[1], proc.pid
    finally:
        proc.terminate()
        await proc.wait()


def process_cpu_s(pid: int) -> float:
    """User + system CPU of a running child (from /proc; 0 where that is not available)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(devices: int, profile_bytes: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        pki = generate_pki(Path(tmp) / "pki")
        async with peer_process("hil.peers.smdpp", "--pki", str(pki.directory)) as (smdp_url, smdp_pid), \
                peer_process("hil.peers.eim", "--pki", str(pki.directory), "--smdpp", smdp_url) as (eim_url, eim_pid), \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session, \
                BackhaulHttp(HttpLimits(request_timeout_s=600.0, per_server_connections=16)) as http:
            admin = Admin(pki, session)
            identity = await admin.get(eim_url + "/admin/eim")
            eim_data = codec.decode("EimConfigurationData", bytes.fromhex(identity["eimConfigurationData"]))
            eim_data.pop("indirectProfileDownload", None)                 # direct downloads
            cards: list[SoftEuicc] = []
            for n in range(devices):
                eid = bytes.fromhex(rspcrypto.eid_with_check_digits(f"8904903200000000000{n:011d}"))
                card = SoftEuicc(pki, eid)
                card.state.eims.append(eim_config_from(card, eim_data))
                card.commit()
                cards.append(card)

            async def order(card: SoftEuicc, n: int) -> None:
                cert = base64.b64encode(card.identity.certificate_der).decode()
                await admin.post(f"{eim_url}/admin/eids/{card.eid.hex()}", {"euiccCertificate": cert})
                ordered = await admin.post(smdp_url + "/admin/orders", {"size": profile_bytes,
                                                                        "iccid": f"8900012345{n:010d}"})
                await admin.post(f"{eim_url}/admin/eids/{card.eid.hex()}/download",
                                 {"activationCode": ordered["activationCode"]})

            await asyncio.gather(*(order(c, n) for n, c in enumerate(cards)))
            engine = TimedEngine(EngineConfig(eims=(EimEndpoint(identity["eimId"], identity["eimFqdn"]),), seed=1))
            driver = EngineDriver(engine, HttpBackhaul(http, trust=TlsTrust(ca_file=str(pki.tls_trust_path))))
            link = MemoryLink(driver)
            agents = [make_agent(link, card)[0] for card in cards]
            gate = asyncio.Semaphore(concurrency)

            async def wake(agent: Any) -> Any:
                async with gate:
                    return await agent.run_session()

            peers_cpu = process_cpu_s(smdp_pid) + process_cpu_s(eim_pid)
            wall, cpu = time.perf_counter(), time.process_time()
            reports = await asyncio.gather(*(wake(a) for a in agents))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            peers_cpu = process_cpu_s(smdp_pid) + process_cpu_s(eim_pid) - peers_cpu
            installed = [o for o in (await admin.get(smdp_url + "/admin/orders"))["orders"]
                         if o["state"] == "installed"]
            done = sum(1 for c in cards if c.profiles and not c.notifications and not c.session_open)
            return {
                "devices": devices,
                "concurrency": concurrency,
                "completed": min(done, len(installed)),
                "total_s": round(wall, 3),
                "cpu_s_per_download": round(cpu / devices, 5),
                "engine_cpu_s_per_download": round(engine.cpu_s / devices, 5),
                "peers_cpu_s_per_download": round(peers_cpu / devices, 5),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "exchanges_per_download": sum(r.exchanges for r in reports) / devices,
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--profile-bytes", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=1000,
                        help="devices awake at the same time (default: all of them)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.devices, args.profile_bytes, args.concurrency))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0 if result["completed"] == args.devices else 1


if __name__ == "__main__":
    sys.exit(main())
