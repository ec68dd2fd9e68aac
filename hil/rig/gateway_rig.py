"""The gateway's own IPA, driving the rig's card through the reference device agent.

Theory of operation. State-changing scenarios must run the *same* flows the tests run, so the
rig does not carry an IPA of its own: it builds the daemon's parts (gateway.core's Engine,
gateway.service's Runtime, the SQLite store, the HTTPS backhaul to the eIM and SM-DP+) in a
temporary directory, joins them to the reference device agent (hil.agent) through the
in-memory device link (gateway.links.memory, the same encode/decode/EID-check path as
CoAP/MQTT), and gives the agent the rig's card backend (in a worker thread, one APDU at a
time). Each `wake()` is one sensor wake-up: Hello, the batches the engine decides (after
polling the eIM), the refresh after an enable/disable, until Idle.

With `local_modem` (a modem on the rig's serial port) the device side is instead the gateway's
own serial device (gateway.links.serial.LocalModemDevice), as the daemon runs a modem wired to
the gateway itself: no agent, no link encoding, the batches go to the modem's AT driver.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.backhaul.http import BackhaulHttp, HttpLimits, TlsTrust
from gateway.core.config import EimEndpoint, EngineConfig
from gateway.core.engine import Engine
from gateway.links.memory import MemoryLink
from gateway.links.serial.local import LocalModemDevice
from gateway.links.serial.modem import AsyncModemEuicc
from gateway.service.runtime import HttpBackhaul, Runtime, RuntimeOptions
from gateway.store import AsyncStore
from hil.agent.agent import Agent, SessionReport
from hil.agent.memory_transport import MemoryAgentTransport
from hil.rig.backends import AsyncBackend, RigBackend

RIG_IMEI = "353290611234567"


@dataclass
class WakeTotals:
    wakeups: int = 0
    exchanges: int = 0
    batches: int = 0
    apdus: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, report: SessionReport) -> None:
        self.wakeups += 1
        self.exchanges += report.exchanges
        self.batches += report.batches
        self.apdus += report.apdus
        problem = report.transport_error or (f"gateway error {report.error.code}: {report.error.text}"
                                             if report.error is not None else None)
        if problem and problem not in self.problems:
            self.problems.append(problem)


class _Problems(logging.Handler):
    """The gateway's own warnings (an unreachable peer, a refused request) into the rig's totals."""

    def __init__(self, totals: WakeTotals) -> None:
        super().__init__(logging.WARNING)
        self.totals = totals

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()[:300]
        if text not in self.totals.problems:
            self.totals.problems.append(text)


@dataclass
class CountingModem:
    """The gateway-side modem API (AsyncModemEuicc) counting each command APDU for the step log."""

    modem: Any                    # gateway.links.serial.AsyncModemEuicc
    counter: Any                  # hil.rig.backends.Counting
    refreshes: list[str] = field(default_factory=list)

    async def send(self, apdu: bytes) -> tuple[bytes, int]:
        started = time.monotonic()
        try:
            return await self.modem.send(apdu)  # type: ignore[no-any-return]
        finally:
            self.counter.apdus += 1
            self.counter.seconds += time.monotonic() - started

    async def open_channel(self, aid: bytes) -> int:
        self.counter.apdus += 2      # MANAGE CHANNEL + SELECT (one AT+CCHO on most modems)
        return await self.modem.open_channel(aid)  # type: ignore[no-any-return]

    async def close_channel(self, channel: int) -> None:
        self.counter.apdus += 1
        await self.modem.close_channel(channel)

    async def refresh(self, kind: str) -> None:
        self.refreshes.append(kind)
        await self.modem.refresh(kind)

    async def device_info(self) -> Any:
        return await self.modem.device_info()


class RigGateway:
    """`async with RigGateway(...) as gw: await gw.wake()`; `gw.totals` counts what the link carried."""

    def __init__(self, backend: RigBackend, eid: bytes, *, tls_ca_file: str, eim_id: str, eim_fqdn: str,
                 initial_eim: dict[str, Any] | None = None, segment_size: int = 255,
                 workdir: Path | None = None, local_modem: Any = None) -> None:
        self.backend = AsyncBackend(backend)
        self.counter = backend
        self.local_modem = local_modem        # a ModemEuicc: the gateway drives it itself
        self.eid = eid
        self.config = EngineConfig(segment_size=segment_size, eims=(EimEndpoint(eim_id, eim_fqdn),),
                                   initial_eim=initial_eim, idle_retry_s=60, uplink_wait_s=20.0)
        self.tls_ca_file = tls_ca_file
        self._workdir = workdir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.totals = WakeTotals()
        self.runtime: Runtime
        self.agent: Agent

    async def __aenter__(self) -> RigGateway:
        if self._workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ipae-rig-")
            self._workdir = Path(self._tmp.name)
        self.astore = await AsyncStore.open(self._workdir / "gateway.db")
        self.http = BackhaulHttp(HttpLimits(request_timeout_s=30.0, connect_timeout_s=10.0))
        backhaul = HttpBackhaul(self.http, trust=TlsTrust(ca_file=self.tls_ca_file))
        self.runtime = Runtime(Engine(self.config), self.astore, backhaul,
                               options=RuntimeOptions(exchange_timeout_s=45.0))
        self.link = MemoryLink(self.runtime)
        self.agent = Agent(Agent.make_status(self.eid, imei=RIG_IMEI), self.backend,
                           MemoryAgentTransport(self.link, self.eid))
        self.local: LocalModemDevice | None = None
        self.local_api: CountingModem | None = None
        if self.local_modem is not None:
            self.local_api = CountingModem(AsyncModemEuicc(self.local_modem), self.counter)
            self.local = LocalModemDevice(self.local_api, self.runtime, self.eid)  # type: ignore[arg-type]
        self._problems = _Problems(self.totals)
        logging.getLogger("gateway").addHandler(self._problems)
        return self

    async def __aexit__(self, *exc: object) -> None:
        logging.getLogger("gateway").removeHandler(self._problems)
        try:
            await self.runtime.drain(5.0)
            await self.runtime.close()
            await self.http.close()
        finally:
            await self.astore.close()
            if self._tmp is not None:
                self._tmp.cleanup()

    async def wake(self) -> None:
        """One wake-up of the device (the agent's session, or the gateway's own modem session)."""
        if self.local is not None:
            session = await self.local.run_session()
            self.totals.add(SessionReport(exchanges=session.exchanges, batches=len(session.results),
                                          results=session.results, error=session.error))
            return
        self.totals.add(await self.agent.run_session())

    @property
    def refreshes(self) -> list[str]:
        return self.local_api.refreshes if self.local_api is not None else self.backend.refreshes
