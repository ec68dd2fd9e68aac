"""Round trips of a complete direct profile download: `python bench/round_trips.py [--json]`.

Drives the engine (gateway.core) against a software eUICC (hil.euicc) through the in-memory
device link and the reference agent, and against the real SM-DP+ and eIM peers (hil/peers,
in this process, over HTTPS with a generated test PKI), for the scenario the issue counts:
the eIM orders a download of a 30 KB profile, then its enable, until every notification and
result has been delivered and removed from the eUICC (tests/core/driver.py performs the
engine's actions).

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

from gateway.links.memory import MemoryLink  # noqa: E402
from hil.euicc import SoftEuicc  # noqa: E402
from hil.euicc.eim import eim_config_from  # noqa: E402
from hil.pki import generate_pki  # noqa: E402
from tests.core.driver import ICCID_DIGITS, make_agent, running_peers  # noqa: E402


class CountingCard(SoftEuicc):
    apdus = 0

    def transmit(self, apdu: bytes) -> bytes:
        self.apdus += 1
        return super().transmit(apdu)


async def measure(profile_bytes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        pki = generate_pki(tmp)
        async with running_peers(pki) as peers:
            card = CountingCard(pki, pki.eid_bytes)
            card.state.eims.append(eim_config_from(card, peers.eim_data()))
            card.commit()
            peers.eim.service.register(card.eid, euicc_certificate=card.identity.certificate_der)
            link = MemoryLink(peers.driver())
            await peers.download(card.eid, await peers.order(size=profile_bytes))
            await peers.psmo(card.eid, {"op": "enable", "iccid": ICCID_DIGITS})
            agent, _ = make_agent(link, card)
            report = await agent.run_session()
            results = await peers.results(card.eid)
            notes = await peers.smdp_notifications()
            ok = (bool(card.profiles) and card.profiles[0].state == "enabled" and not card.notifications
                  and report.error is None and len(results) == 2 and len(notes) == 2
                  and all(r["verified"] for r in results + notes))
            return {
                "profile_bytes": profile_bytes,
                "download_round_trips": report.batches,
                "link_round_trips": report.exchanges,
                "per_apdu_round_trips": card.apdus,
                "downlink_bytes": report.downlink_bytes,
                "uplink_bytes": report.uplink_bytes,
                "peers": "hil.peers (HTTPS)",
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
