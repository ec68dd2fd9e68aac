"""Many devices through a profile download at once: `python bench/engine_load.py [--devices N] [--json]`.

One process, one engine, N software eUICCs (hil.euicc) each behind the reference agent on
the in-memory device link, all woken together; each download is ordered by the eIM (a
ProfileDownloadTrigger for a 30 KB profile) and runs until its notification is delivered
and removed. The SM-DP+ and eIM are the in-test responders of tests/core/peers.py (the real
peers in hil/peers come later); their cryptography and the eUICCs' is real and runs in this
process too, so `cpu_s_per_download` is the whole system's, and `engine_cpu_s_per_download`
the part spent inside `Engine.handle`.

Prints total_s, cpu_s_per_download, engine_cpu_s_per_download, peak_rss_mb, completed.
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
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from gateway.core import actions as A  # noqa: E402
from gateway.core.engine import EimEndpoint, Engine, EngineConfig  # noqa: E402
from gateway.core.events import Event  # noqa: E402
from gateway.links.memory import MemoryLink  # noqa: E402
from hil import rspcrypto  # noqa: E402
from hil.euicc import SoftEuicc  # noqa: E402
from hil.euicc.eim import eim_config_from  # noqa: E402
from hil.pki import generate_pki  # noqa: E402
from tests.core.peers import MiniEim, MiniSmdp  # noqa: E402
from tests.core.rig import EngineRig, make_agent  # noqa: E402


class TimedEngine(Engine):
    cpu_s = 0.0

    def handle(self, event: Event) -> list[A.Action]:
        start = time.process_time()
        try:
            return super().handle(event)
        finally:
            self.cpu_s += time.process_time() - start


async def run(devices: int, profile_bytes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        pki = generate_pki(tmp)
        smdp, eim = MiniSmdp(pki, profile_bytes=profile_bytes), MiniEim(pki)
        engine = TimedEngine(EngineConfig(eims=(EimEndpoint(eim.eim_id, eim.fqdn),), seed=1))
        rig = EngineRig(engine, smdp, eim)
        link = MemoryLink(rig)
        cards = []
        for n in range(devices):
            eid = bytes.fromhex(rspcrypto.eid_with_check_digits(f"8904903200000000000{n:011d}"))
            card = SoftEuicc(pki, eid)
            card.state.eims.append(eim_config_from(card, eim.initial_eim()))
            card.commit()
            cards.append(card)
            eim.queue_trigger(eid, "1$smdp.example$LOAD", n.to_bytes(4, "big"))
        agents = [make_agent(link, card)[0] for card in cards]
        wall, cpu = time.perf_counter(), time.process_time()
        reports = await asyncio.gather(*(a.run_session() for a in agents))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        done = sum(1 for c in cards if c.profiles and not c.notifications and not c.session_open)
        return {
            "devices": devices,
            "completed": done,
            "total_s": round(wall, 3),
            "cpu_s_per_download": round(cpu / devices, 5),
            "engine_cpu_s_per_download": round(engine.cpu_s / devices, 5),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "exchanges_per_download": sum(r.exchanges for r in reports) / devices,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--profile-bytes", type=int, default=30_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.devices, args.profile_bytes))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0 if result["completed"] == args.devices else 1


if __name__ == "__main__":
    sys.exit(main())
