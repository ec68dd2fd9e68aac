"""Outbox benchmark (not part of the test run): `python bench/queue.py [--json]`.

Enqueues `--count` (100,000) messages into the outbox of a fresh SQLite file (WAL,
synchronous=FULL, as the daemon runs it), then drains them through the real path: the
AsyncStore thread leases a batch, an aiohttp client POSTs every message as its own HTTP
request (one message per request, as ESipa does) to a local aiohttp receiver on 127.0.0.1 in a
separate process, and the batch is acknowledged in one transaction.

The receiver is a stand-in for the eIM peer: it answers 204 and counts messages and distinct
idempotency keys. The real eIM peer (hil/peers) comes later; the output says so.

Figures:
- enqueue_per_s: messages per second with `--enqueue-batch` messages per transaction;
  enqueue_single_per_s: with one transaction (one fsync) per message, on a sample.
- drain_per_s: messages per second from the first lease to the last ack, received and
  acknowledged (target >= 2,000).
- db_mb: database + WAL size with all messages queued.
"""

from __future__ import annotations

import os
import sys

# This file is named like the stdlib `queue` module, which asyncio and concurrent.futures
# import: take the script's own directory off the import path before anything imports it.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import asyncio
import functools
import json
import platform
import random
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.service.demo import free_tcp
from gateway.store import AsyncStore, OutboxEntry, OutboxLimits, Store, StoreOptions

SERVER = "eim.bench"
TARGET_DRAIN_PER_S = 2000.0
PATH = "/gsma/rsp2/asn1"


# --- the stand-in eIM peer (runs in its own process) ---------------------------------------

def serve(port: int) -> None:
    received = 0
    keys: set[str] = set()

    async def message(request: web.Request) -> web.Response:
        nonlocal received
        await request.read()
        received += 1
        keys.add(request.headers.get("X-Idempotency-Key", ""))
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"received": received, "unique_keys": len(keys)})

    app = web.Application()
    app.router.add_post(PATH, message)
    app.router.add_get("/stats", stats)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        await runner.cleanup()

    asyncio.run(main())


# --- enqueue ---------------------------------------------------------------------------------

def enqueue(path: Path, count: int, batch: int, payload_size: int) -> dict[str, Any]:
    rng = random.Random(1)
    limits = OutboxLimits(max_entries=max(count * 2, 1000), max_bytes=max(count * payload_size * 2, 1 << 20))
    with Store.open(path, StoreOptions(outbox_limits=limits)) as store:
        payloads = [rng.randbytes(payload_size) for _ in range(256)]
        eids = [b"\x89" + i.to_bytes(15, "big") for i in range(1000)]
        t0 = time.perf_counter()
        for start in range(0, count, batch):
            with store.transaction():
                for i in range(start, min(start + batch, count)):
                    store.outbox.enqueue(SERVER, f"eim1/tx{i:08d}/result", "ProvideEimPackageResult",
                                         payloads[i % 256], eid=eids[i % 1000], now=1.0)
        elapsed = time.perf_counter() - t0
        queued = store.outbox.usage().entries
        level = store.outbox.usage().level
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return {"queued": queued, "enqueue_per_s": round(count / elapsed), "enqueue_batch": batch,
            "db_mb": round(size / 1e6, 2), "outbox_level": level}


def enqueue_single(path: Path, count: int, payload_size: int) -> float:
    with Store.open(path) as store:
        payload = bytes(payload_size)
        t0 = time.perf_counter()
        for i in range(count):
            store.outbox.enqueue(SERVER, f"single{i}", "r", payload, now=1.0)
        return count / (time.perf_counter() - t0)


# --- drain -----------------------------------------------------------------------------------

async def drain(path: Path, port: int, lease_batch: int, concurrency: int, count: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}{PATH}"
    headers = {"Content-Type": "application/x-gsma-rsp-asn1", "X-Admin-Protocol": "gsma/rsp/v2.1.0"}
    limits = OutboxLimits(max_entries=max(count * 2, 1000))
    clock = time.time
    failures = 0
    async with await AsyncStore.open(path, StoreOptions(outbox_limits=limits)) as astore, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        semaphore = asyncio.Semaphore(concurrency)

        async def post(entry: OutboxEntry) -> bool:
            async with semaphore:
                try:
                    async with http.post(url, data=entry.payload,
                                         headers={**headers, "X-Idempotency-Key": entry.key}) as resp:
                        await resp.read()
                        return 200 <= resp.status < 300
                except aiohttp.ClientError:
                    return False

        def lease(s: Store) -> list[OutboxEntry]:
            return s.outbox.lease(SERVER, now=clock(), limit=lease_batch, lease_s=60.0)

        def settle_and_lease(s: Store, acked: list[int], failed: list[int]) -> list[OutboxEntry]:
            now = clock()
            with s.transaction():
                s.outbox.ack(acked, now=now)
                for i in failed:
                    s.outbox.nack(i, now=now, error="bench: POST failed")
            return lease(s)

        t0 = time.perf_counter()
        sent = 0
        batch = await astore.run(lease)
        while batch:
            results = await asyncio.gather(*(post(e) for e in batch))
            acked = [e.id for e, ok in zip(batch, results) if ok]
            failed = [e.id for e, ok in zip(batch, results) if not ok]
            failures += len(failed)
            sent += len(acked)
            # settle this batch and lease the next in one trip to the store thread
            batch = await astore.run(functools.partial(settle_and_lease, acked=acked, failed=failed))
        elapsed = time.perf_counter() - t0
        remaining = await astore.run(lambda s: s.outbox.usage().entries)
        async with http.get(f"http://127.0.0.1:{port}/stats") as resp:
            peer = await resp.json()
    return {"drained": sent, "drain_per_s": round(sent / elapsed), "drain_s": round(elapsed, 2),
            "failed_posts": failures, "left_in_outbox": remaining, "peer_received": peer["received"],
            "peer_unique_keys": peer["unique_keys"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--payload-size", type=int, default=256, help="bytes per message")
    parser.add_argument("--enqueue-batch", type=int, default=100, help="messages per enqueue transaction")
    parser.add_argument("--lease-batch", type=int, default=500, help="messages per lease/ack transaction")
    parser.add_argument("--concurrency", type=int, default=64, help="HTTP requests in flight")
    parser.add_argument("--db", type=Path, help="directory for the database (default: a temporary one)")
    parser.add_argument("--serve-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_port:
        serve(args.serve_port)
        return 0

    with tempfile.TemporaryDirectory(prefix="ipae-bench-", dir=args.db) as tmp:
        path = Path(tmp) / "gateway.db"
        result: dict[str, Any] = enqueue(path, args.count, args.enqueue_batch, args.payload_size)
        result["enqueue_single_per_s"] = round(enqueue_single(Path(tmp) / "single.db", 1000, args.payload_size))
        port = free_tcp()
        peer = subprocess.Popen([sys.executable, __file__, "--serve-port", str(port)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert peer.stdout is not None and peer.stdout.readline().strip() == "READY"
            result.update(asyncio.run(drain(path, port, args.lease_batch, args.concurrency, args.count)))
        finally:
            assert peer.stdin is not None
            peer.stdin.close()
            peer.wait(timeout=10)
            if peer.stdout is not None:
                peer.stdout.close()
        result.update({
            "payload_bytes": args.payload_size, "lease_batch": args.lease_batch,
            "http_concurrency": args.concurrency, "messages_per_request": 1,
            "drain_target_per_s": TARGET_DRAIN_PER_S,
            "drain_target_met": result["drain_per_s"] >= TARGET_DRAIN_PER_S,
            "peer": "local aiohttp receiver on 127.0.0.1 standing in for the eIM peer "
                    "(the real eIM peer comes later)",
            "sqlite": sqlite3.sqlite_version, "journal": "WAL, synchronous=FULL",
            "python": platform.python_version(), "cpus": os.cpu_count(),
        })
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k, v in sorted(result.items()):
            print(f"{k:24} {v}")
    return 0 if result["left_in_outbox"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
