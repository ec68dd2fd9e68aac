"""The gateway's own IPA, driving the rig's card through the reference device agent.

Theory of operation. State-changing scenarios must run the *same* flows the tests run, so the
rig does not carry an IPA of its own: it builds the daemon's parts (gateway.core's Engine,
gateway.service's Runtime, the SQLite store, the HTTPS backhaul to the eIM and SM-DP+) in a
temporary directory, joins them to the reference device agent (hil.agent) through the
in-memory device link (gateway.links.memory, the same encode/decode/EID-check path as
CoAP/MQTT), and gives the agent the rig's card backend (in a worker thread, one APDU at a
time). Each `wake()` is one sensor wake-up: Hello, the batches the engine decides (after
polling the eIM), the refresh after an enable/disable, until Idle.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.backhaul.http import BackhaulHttp, HttpLimits, TlsTrust
from gateway.core.config import EimEndpoint, EngineConfig
from gateway.core.engine import Engine
from gateway.links.memory import MemoryLink
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


class RigGateway:
    """`async with RigGateway(...) as gw: await gw.wake()`; `gw.totals` counts what the link carried."""

    def __init__(self, backend: RigBackend, eid: bytes, *, tls_ca_file: str, eim_id: str, eim_fqdn: str,
                 initial_eim: dict[str, Any] | None = None, segment_size: int = 255,
                 workdir: Path | None = None) -> None:
        self.backend = AsyncBackend(backend)
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

    async def wake(self) -> SessionReport:
        report = await self.agent.run_session()
        self.totals.add(report)
        return report

    @property
    def refreshes(self) -> list[str]:
        return self.backend.refreshes
