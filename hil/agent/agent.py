"""The reference device agent: what a sensor runs to let the gateway reach its eUICC.

Theory of operation. A *session* starts when the sensor wakes: the agent sends Hello with its
status (or the Result it could not deliver last time) and then loops: each downlink is either a
Batch, applied on the eUICC while it streams in (gateway.links.batch_runner.BatchRunner, the
same runner the gateway uses for a modem on its own port), whose Result is the next
uplink; or Idle / ErrorMsg, which ends the session. Every uplink gets exactly one downlink, so a
session of k batches costs k + 1 round trips. The transport (CoAP/DTLS, MQTT, in-memory) only
moves one uplink and yields the downlink's bytes in order; the agent decodes them with a bounded
buffer (`DownlinkStream(max_item=buffer_size)`) and stops reading once a stop rule fires.

Many agents can run in one event loop (load tests): an agent holds no global state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Protocol

from gateway.errors import DecodeError, TransportError
from gateway.links.batch_runner import Backend, BatchRunner
from gateway.links.protocol import (
    BatchHeader,
    BatchResult,
    DeviceStatus,
    DownlinkStream,
    ErrorMsg,
    Hello,
    Idle,
    Result,
    Step,
    Uplink,
    encode_uplink,
)

log = logging.getLogger(__name__)

AGENT_VERSION = "ipae-agent/1"


class AgentTransport(Protocol):
    def exchange(self, payload: bytes, buffer_size: int, size_hint: int | None = None) -> AsyncIterator[bytes]:
        """Send one uplink; yield the downlink's bytes in order, holding at most buffer_size.

        `size_hint` is the gateway's estimate of the downlink's size (from the previous batch).
        """
        ...

    async def close(self) -> None: ...


@dataclass
class SessionReport:
    exchanges: int = 0
    batches: int = 0
    apdus: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    results: list[BatchResult] = field(default_factory=list)
    idle_after_s: int | None = None
    error: ErrorMsg | None = None
    transport_error: str | None = None
    exchange_s: list[float] = field(default_factory=list)  # duration of each exchange


@dataclass
class Agent:
    status: DeviceStatus
    backend: Backend
    transport: AgentTransport
    max_exchanges: int = 10_000
    _pending: Result | None = None
    _size_hint: int | None = None

    @classmethod
    def make_status(cls, eid: bytes, *, buffer_size: int = 4096, imei: str | None = None,
                    plmn: str | None = None, signal_dbm: int | None = None) -> DeviceStatus:
        return DeviceStatus(eid=eid, imei=imei, plmn=plmn, signal_dbm=signal_dbm, attach_failures=0,
                            agent_version=AGENT_VERSION, buffer_size=buffer_size)

    async def run_session(self) -> SessionReport:
        """One wake-up: exchanges until the gateway answers Idle or ErrorMsg."""
        report = SessionReport()
        uplink: Uplink = self._pending or Hello(self.status)
        while report.exchanges < self.max_exchanges:
            started = time.monotonic()
            try:
                outcome = await self._exchange(uplink, report)
            except (TransportError, DecodeError) as exc:
                log.warning("agent %s: %s", self.status.eid.hex(), exc)
                report.transport_error = f"{type(exc).__name__}: {exc}"
                if isinstance(uplink, Result):
                    self._pending = uplink
                self.status = replace(self.status, attach_failures=self.status.attach_failures + 1)
                return report
            self._pending = None
            report.exchange_s.append(time.monotonic() - started)
            if isinstance(outcome, BatchResult):
                report.results.append(outcome)
                uplink = Result(outcome)
            elif isinstance(outcome, Idle):
                report.idle_after_s = outcome.retry_after_s
                return report
            else:
                report.error = outcome
                return report
        return report

    async def _exchange(self, uplink: Uplink, report: SessionReport) -> BatchResult | Idle | ErrorMsg:
        payload = encode_uplink(uplink)
        report.exchanges += 1
        report.uplink_bytes += len(payload)
        stream = DownlinkStream(max_item=self.status.buffer_size)
        runner: BatchRunner | None = None
        size_hint, self._size_hint = self._size_hint, None
        try:
            async with aclosing(self.transport.exchange(payload, self.status.buffer_size, size_hint)) as chunks:
                async for chunk in chunks:
                    report.downlink_bytes += len(chunk)
                    for event in stream.feed(chunk):
                        if isinstance(event, BatchHeader):
                            runner = BatchRunner(self.backend, event)
                            await runner.open()
                        elif isinstance(event, Step):
                            assert runner is not None
                            await runner.run_step(event)
                    if runner is not None and runner.done:
                        break  # a stop rule fired or all steps ran: the rest is not needed
                else:
                    stream.close()
        except BaseException:
            if runner is not None:
                # the downlink broke mid-batch: no Result will go up, but the card's logical
                # channel must not stay open (an eUICC has few of them)
                await runner.close_channel()
            raise
        head = stream.header
        if isinstance(head, BatchHeader):
            assert runner is not None
            report.batches += 1
            report.apdus += runner.apdus_sent
            self._size_hint = head.next_size_hint
            outcome = await runner.close()
            if runner.refresh_failed:
                self.status = replace(self.status, attach_failures=self.status.attach_failures + 1)
            return outcome
        if head is None:
            raise DecodeError("empty downlink", type_name="Downlink")
        return head
