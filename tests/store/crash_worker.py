"""Child process for the crash tests: plays the engine + service over a real store file.

For every inbox entry of every device it runs the two units of work of one eIM package:
  1. start:  inbox entry in_progress, session "running" (blob = the entry key)
  2. finish: inbox entry done, result into the outbox, session "idle", audit record
and between them simulates the device round trip. With the argument `hang-in-transaction` it
writes half of unit 2, says "IN-TX" on stdout and waits to be killed; with `slow` it pauses
briefly inside unit 2, so that random kills often land inside a transaction.
"""

from __future__ import annotations

import sys
import time

from gateway.store import Store

SERVER = "eim.test"


def result_for(key: str) -> bytes:
    return b"result:" + key.encode()


def main(path: str, mode: str) -> None:
    store = Store.open(path)
    print("READY", flush=True)
    now = time.time()
    while True:
        eids = store.inbox.eids_with_work()
        if not eids:
            break
        for eid in eids:
            entry = store.inbox.next_for(eid)
            assert entry is not None
            with store.transaction():
                store.inbox.start(entry.id, now=now)
                store.sessions.put(eid, "running", entry.key.encode(), now=now)
            with store.transaction():
                store.inbox.finish(entry.id, now=now)
                store.outbox.enqueue(SERVER, "result/" + entry.key, "ProvideEimPackageResult",
                                     result_for(entry.key), eid=eid, now=now)
                if mode == "hang-in-transaction":
                    print("IN-TX", flush=True)
                    time.sleep(60)
                elif mode == "slow":  # widen the window in which a kill lands mid-transaction
                    time.sleep(0.0005)
                store.sessions.put(eid, "idle", b"", now=now)
                store.audit.append(time=now, operation="ProvideEimPackageResult", result="ok", eid=eid,
                                   origin_eim="eim1", origin_tx=entry.key.encode(), detail={"entry": entry.id})
    store.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "run")
