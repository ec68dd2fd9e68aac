"""Issue 7 outage test: the eIM is unreachable for 24 simulated hours while devices keep working.

Time is compressed through the injected clock (DESIGN principle 5, gateway.clock): the
gateway's runtime, its breakers and the devices run on one SimulatedClock that jumps ten
minutes at a time whenever everything is quiet (reliability_runtime), so 24 hours pass in
seconds.

The scenario:

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
import time
from pathlib import Path
from typing import Any

from hil.peers.common import iccid_to_str
from hil.pki import generate_pki
from reliability_fleet import check_ledger
from reliability_runtime import STEP_S, Scenario, peers

DEVICES = 6
OUTAGE_S = 24 * 3600.0
AFTER_S = 12 * 3600.0             # bound on the catch-up after the outage


async def _scenario(workdir: Path) -> dict[str, Any]:
    sc = Scenario(workdir)
    pki = await asyncio.to_thread(generate_pki, workdir / "pki")
    async with contextlib.AsyncExitStack() as stack:
        smdp, eim, inject_port = await peers(stack, pki)
        runtime = await sc.start(stack, pki, eim, DEVICES, inject_port)

        # 1. the eIM up: a profile for every device
        iccids = {}
        for d in sc.devices:
            order = smdp.service.order_profile(eid=d.eid, size=4096)
            iccids[d.eid] = iccid_to_str(order.iccid)
            eim.service.queue_profile_download(d.eid, {"activationCode": f"1${smdp.address}${order.matching_id}"})
        tasks = sc.start_devices()
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
            await sc.stop_devices(tasks)
        problems, leaks, figures = check_ledger(sc.devices, smdp, eim)
        figures["results_handed_over"] = sc.results_handed_over
        return {"problems": problems, "leaks": leaks, "figures": figures, "ran_in_outage": ran_in_outage,
                "still_pending": still_pending, "pushed": len(pushed), "got_in_outage": got_in_outage,
                "failed_posts": failed_posts, "caught_up_s": caught_up_s}


def test_eim_unreachable_for_24_simulated_hours_every_result_arrives_exactly_once(workdir: Path) -> None:
    started = time.monotonic()
    out = asyncio.run(_scenario(workdir))
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

