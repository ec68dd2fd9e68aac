"""Run one Hello through the real engine and runtime and die between the commit and the I/O.

Usage: python runtime_crash_worker.py DB_PATH. Exits with status 9 from inside the runtime's
after-commit hook (os._exit: no cleanup, no flush, as a power cut or SIGKILL would), so the
process never performs the PostEsipa the engine asked for.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime_support import EID, RecordingBackhaul  # noqa: E402

from gateway.core.engine import EimEndpoint, Engine, EngineConfig  # noqa: E402
from gateway.links.protocol import DeviceStatus, Hello  # noqa: E402
from gateway.service.runtime import Runtime  # noqa: E402
from gateway.store import AsyncStore  # noqa: E402


async def main(db: Path) -> None:
    astore = await AsyncStore.open(db)
    await astore.run(lambda s: s.devices.register(EID, "coap", "dev1", now=1000.0))
    engine = Engine(EngineConfig(eims=(EimEndpoint("eim.test", "eim.test:8443"),), seed=1))
    runtime = Runtime(engine, astore, RecordingBackhaul(), clock=lambda: 1000.0,
                      after_commit=lambda actions: os._exit(9))
    await runtime.exchange(EID, Hello(DeviceStatus(eid=EID)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
