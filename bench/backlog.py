"""Backlog benchmark (not part of the test run): `python bench/backlog.py [--json]`.

The path eIM package results really take (issue 7): they are the engine's deliveries, kept in
the device sessions and counted in the outbox (gateway/store/deliveries.py), sent by the
runtime. This measures that path end to end, where bench/queue.py measures the store's own
outbox table (webhook events).

1. Fill, the eIM down: `--devices` devices each wake `--per-device` times through the
   runtime's device-link entry (`Runtime.exchange`, real engine, real SQLite store in WAL with
   synchronous=FULL); each wake polls the eIM, gets one package the IPA answers by itself
   (deviceInfo), and its ProvideEimPackageResult fails (connection refused): it waits.
2. Drain, the eIM back: every device wakes once; its poll is answered, which re-arms its
   waiting results (`rearm_in_flight` at a time, each acknowledgement sending the next).
   Timed from the first wake to the outbox empty.

The eIM is a stand-in: bench/queue.py's receiver in its own process (HTTP on 127.0.0.1,
answering 204 to every ESipa POST: an accepted result, an empty poll), reached by a plain-HTTP
`Backhaul` (HTTPS and the real eIM peer's signature checks are not what is measured here).
Figures: queued (results waiting at the end of the fill), fill_per_s, drain_per_s (results
acknowledged per second; target >= 2,000), db_mb (database + WAL after the fill),
drain_commits and units_per_commit (engine steps per group commit during the drain). Each result
costs an engine step, a unit of work in a group commit (AsyncStore.atomic: the steps queued
while one commit waits for the disk share the next) and an HTTP request when it is sent and
again when it is acknowledged, and a device whose uplink still waits polls the eIM after each
acknowledged result: the default 20,000 results take a minute or two to fill on a small machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.core.actions import PostEs9, PostEs11, PostEsipa
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.errors import NetworkError, RemoteProtocolError
from gateway.links.protocol import DeviceStatus, Hello
from gateway.service.runtime import Runtime, RuntimeOptions
from gateway.spec import esipa
from gateway.store import AsyncStore, OutboxLimits, Store, StoreOptions

HERE = Path(__file__).resolve().parent
EIM = EimEndpoint("eim-bench", "127.0.0.1")
PATH = "/gsma/rsp2/asn1"
TARGET_DRAIN_PER_S = 2000.0


def eid_of(n: int) -> bytes:
    return b"\x89" + n.to_bytes(15, "big")


def package(n: int) -> bytes:
    """A package the IPA answers itself (deviceInfo): one result, no eUICC call."""
    return esipa.encode_from_eim("getEimPackageResponse", ("ipaEuiccDataRequest", {
        "tagList": b"\xa9", "eimTransactionId": n.to_bytes(4, "big")}))


class StandInEim:
    """`Backhaul`: down (results refused, polls answered with a package) or up (plain HTTP to
    the receiver process)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}{PATH}"
        self.up = False
        self.counter = 0
        self.delivered = 0
        self.http: aiohttp.ClientSession | None = None

    async def post_esipa(self, action: PostEsipa) -> bytes:
        if not self.up:
            if action.function == "GetEimPackage":
                self.counter += 1
                return package(self.counter)
            raise NetworkError("bench: the eIM is down")
        assert self.http is not None
        async with self.http.post(self.url, data=action.body, headers={
                "Content-Type": "application/x-gsma-rsp-asn1", "X-Admin-Protocol": "gsma/rsp/v2.1.0"}) as resp:
            body = await resp.read()
            if resp.status >= 300:
                raise NetworkError(f"bench: HTTP {resp.status}")
        if action.function == "ProvideEimPackageResult":
            self.delivered += 1
        return body

    async def post_es9(self, action: PostEs9) -> bytes:
        raise RemoteProtocolError("bench: no SM-DP+")

    async def post_es11(self, action: PostEs11) -> bytes:
        raise RemoteProtocolError("bench: no SM-DS")


async def wake_all(runtime: Runtime, devices: int, concurrency: int) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def wake(n: int) -> None:
        async with semaphore:
            eid = eid_of(n)
            await runtime.exchange(eid, Hello(DeviceStatus(eid=eid)))
    await asyncio.gather(*(wake(n) for n in range(devices)))


async def run(workdir: Path, port: int, devices: int, per_device: int, concurrency: int) -> dict[str, Any]:
    path = workdir / "gateway.sqlite3"
    limits = OutboxLimits(max_entries=max(4 * devices * per_device, 1000), max_bytes=1 << 30)
    eim = StandInEim(port)
    async with await AsyncStore.open(path, StoreOptions(outbox_limits=limits)) as astore, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        eim.http = http

        def register(s: Store) -> None:
            with s.transaction():
                for n in range(devices):
                    s.devices.register(eid_of(n), "coap", f"bench-{n}", now=time.time())
        await astore.run(register)
        engine = Engine(EngineConfig(eims=(EIM,), uplink_wait_s=None, notification_check_s=None, seed=1))
        runtime = Runtime(engine, astore, eim, options=RuntimeOptions(exchange_timeout_s=600.0))
        t0 = time.perf_counter()
        for _ in range(per_device):
            await wake_all(runtime, devices, concurrency)
        fill_s = time.perf_counter() - t0
        before = await astore.run(lambda s: s.outbox.usage())
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))

        print(f"filled in {fill_s:.1f} s; draining", file=sys.stderr, flush=True)
        eim.up = True
        groups, units = astore.groups, astore.grouped_units
        t0 = time.perf_counter()
        await wake_all(runtime, devices, concurrency)
        while True:
            usage = await astore.run(lambda s: s.outbox.usage())
            if usage.entries == 0 or time.perf_counter() - t0 > 600:
                break
            await asyncio.sleep(0.05)
        drain_s = time.perf_counter() - t0
        commits, units = astore.groups - groups, astore.grouped_units - units
        await runtime.close()
        async with http.get(f"http://127.0.0.1:{port}/stats") as resp:
            peer = await resp.json()
    return {"devices": devices, "per_device": per_device, "queued": before.entries,
            "fill_per_s": round(before.entries / fill_s), "fill_s": round(fill_s, 2),
            "db_mb": round(size / 1e6, 2), "outbox_level_full": before.level,
            "drained": eim.delivered, "drain_per_s": round(eim.delivered / drain_s), "drain_s": round(drain_s, 2),
            "left_in_outbox": usage.entries, "drain_commits": commits,
            "units_per_commit": round(units / max(commits, 1), 1), "peer_received": peer["received"],
            "drain_target_per_s": TARGET_DRAIN_PER_S,
            "drain_target_met": eim.delivered / drain_s >= TARGET_DRAIN_PER_S and usage.entries == 0,
            "rearm_in_flight": engine.config.rearm_in_flight, "journal": "WAL, synchronous=FULL",
            "peer": "bench/queue.py's receiver on 127.0.0.1 (plain HTTP, 204) standing in for the eIM",
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--devices", type=int, default=2_000, help="10000 for the issue's 100,000 results (slow)")
    parser.add_argument("--per-device", type=int, default=10, help="results waiting per device")
    parser.add_argument("--concurrency", type=int, default=200, help="device wakes in flight")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    from gateway.service.demo import free_tcp
    port = free_tcp()
    receiver = subprocess.Popen([sys.executable, str(HERE / "queue.py"), "--serve-port", str(port)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "READY":
            raise SystemExit("the stand-in eIM did not start")
        with tempfile.TemporaryDirectory(prefix="ipae-backlog-") as tmp:
            out = asyncio.run(run(Path(tmp), port, args.devices, args.per_device, args.concurrency))
    finally:
        if receiver.stdin is not None:
            receiver.stdin.close()
        receiver.wait(timeout=10)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        for key, value in out.items():
            print(f"{key:20} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
