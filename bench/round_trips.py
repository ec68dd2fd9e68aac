"""Round trips of a complete direct profile download: `python bench/round_trips.py [--json]`.

Drives the engine (gateway.core) against a software eUICC (hil.euicc) through the in-memory
device link and the reference agent, for the scenario the issue counts: the eIM orders a
download of a 30 KB profile, then its enable, until every notification and result has been
delivered and removed from the eUICC. The SM-DP+ and eIM are the in-test responders of
tests/core/peers.py (the real peers in hil/peers come later).

- download_round_trips: exchanges that carried a batch (one batch down, its results up).
  The device's last uplink, carrying the results of the final batch, is answered by Idle;
  it is reported separately as link_round_trips (batches + 1).
- per_apdu_round_trips: the round trips a relay that forwards one APDU per exchange needs
  for the same download: every APDU the eUICC received (STORE DATA blocks, GET RESPONSE,
  MANAGE CHANNEL, SELECT), counted at the card.
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
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

from gateway.core.engine import EimEndpoint, Engine, EngineConfig  # noqa: E402
from gateway.links.memory import MemoryLink  # noqa: E402
from hil.euicc import SoftEuicc  # noqa: E402
from hil.euicc.eim import eim_config_from  # noqa: E402
from hil.pki import generate_pki  # noqa: E402
from tests.core.peers import MiniEim, MiniSmdp  # noqa: E402
from tests.core.rig import EngineRig, make_agent  # noqa: E402

ICCID = bytes.fromhex("98001032547698103214")


class CountingCard(SoftEuicc):
    apdus = 0

    def transmit(self, apdu: bytes) -> bytes:
        self.apdus += 1
        return super().transmit(apdu)


async def measure(profile_bytes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        pki = generate_pki(tmp)
        smdp, eim = MiniSmdp(pki, profile_bytes=profile_bytes), MiniEim(pki)
        card = CountingCard(pki, pki.eid_bytes)
        card.state.eims.append(eim_config_from(card, eim.initial_eim()))
        card.commit()
        engine = Engine(EngineConfig(eims=(EimEndpoint(eim.eim_id, eim.fqdn),), seed=1))
        rig = EngineRig(engine, smdp, eim)
        link = MemoryLink(rig)
        eim.queue_trigger(card.eid, "1$smdp.example$MATCH-1", b"\x01")
        eim.queue_package(card.eid, eim.euicc_package_request(card.eid, [("enable", {"iccid": ICCID})], b"\x02"))
        agent, _ = make_agent(link, card)
        report = await agent.run_session()
        ok = (bool(card.profiles) and card.profiles[0].state == "enabled" and not card.notifications
              and report.error is None)
        return {
            "profile_bytes": profile_bytes,
            "download_round_trips": report.batches,
            "link_round_trips": report.exchanges,
            "per_apdu_round_trips": card.apdus,
            "downlink_bytes": report.downlink_bytes,
            "uplink_bytes": report.uplink_bytes,
            "completed": ok,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--profile-bytes", type=int, default=30_000)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.profile_bytes))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:24} {value}")
    return 0 if result["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
