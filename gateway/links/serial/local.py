"""A modem on the gateway's own serial port: the gateway is the device agent for that device.

Theory of operation. A sensor wired to the gateway (or a modem in the gateway itself) has no
agent and no link to wake up on: `LocalModemDevice.run_session()` plays the agent's part in
process. It reports the device's status (EID given, IMEI / PLMN / signal read from the modem)
to the same `UplinkHandler` the network links call, and runs each Batch the handler answers
directly on the modem, with the semantics of the device-link protocol (docs/device-link.md):
the batch's AID is opened with AT+CCHO (or MANAGE CHANNEL + SELECT through AT+CSIM) and
closed at the end; 61xx/6Cxx are chained per command; inside a step an APDU whose SW is not in
`continue_sw`, or that answers data before the step's last APDU, ends the step; after a step a
SW outside `continue_sw` stops the batch ("unexpected-sw"), as does data from a stop_if_data
step ("data"); a modem or card failure stops it with "card-error"; the refresh instruction
is applied last. Frozen dataclasses go to the handler as they are: nothing to encode locally.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gateway.errors import GatewayError
from gateway.links.base import UplinkHandler
from gateway.links.protocol import (
    STOPPED_CARD,
    STOPPED_DATA,
    STOPPED_SW,
    Batch,
    BatchMsg,
    BatchResult,
    DeviceStatus,
    ErrorMsg,
    Hello,
    Idle,
    Result,
    Step,
    StepResult,
    Uplink,
)
from gateway.links.serial.modem import AsyncModemEuicc
from gateway.spec.apdu import with_channel

log = logging.getLogger(__name__)

LOCAL_AGENT_VERSION = "ipae-gateway-serial/1"


@dataclass
class LocalSession:
    exchanges: int = 0
    results: list[BatchResult] = field(default_factory=list)
    idle_after_s: int | None = None
    error: ErrorMsg | None = None


@dataclass
class LocalModemDevice:
    modem: AsyncModemEuicc
    handler: UplinkHandler
    eid: bytes
    max_exchanges: int = 1000
    attach_failures: int = 0

    async def status(self) -> DeviceStatus:
        info = await self.modem.device_info()
        return DeviceStatus(eid=self.eid, imei=info.imei, plmn=info.plmn, signal_dbm=info.signal_dbm,
                            attach_failures=self.attach_failures, agent_version=LOCAL_AGENT_VERSION,
                            buffer_size=1 << 20)

    async def run_session(self) -> LocalSession:
        """Hello, then one batch after another until the handler answers Idle or ErrorMsg."""
        session = LocalSession()
        uplink: Uplink = Hello(await self.status())
        while session.exchanges < self.max_exchanges:
            session.exchanges += 1
            downlink = await self.handler.exchange(self.eid, uplink)
            if isinstance(downlink, BatchMsg):
                result = await self.run_batch(downlink.batch)
                session.results.append(result)
                uplink = Result(result)
            elif isinstance(downlink, Idle):
                session.idle_after_s = downlink.retry_after_s
                return session
            else:
                session.error = downlink
                return session
        return session

    async def run_batch(self, batch: Batch) -> BatchResult:
        results: list[StepResult] = []
        stopped: str | None = None
        channel = 0
        try:
            if batch.aid is not None:
                channel = await self.modem.open_channel(batch.aid)
            for step in batch.steps:
                result = await self._step(step, channel)
                results.append(result)
                if result.sw not in step.continue_sw:
                    stopped = STOPPED_SW
                    break
                if step.stop_if_data and result.data:
                    stopped = STOPPED_DATA
                    break
        except GatewayError as exc:
            log.warning("local batch %d on %s: %s", batch.batch_id, self.eid.hex(), exc)
            stopped = STOPPED_CARD
        if channel:
            try:
                await self.modem.close_channel(channel)
            except GatewayError as exc:
                log.warning("closing channel %d: %s", channel, exc)
        if batch.refresh is not None:
            try:
                await self.modem.refresh(batch.refresh)
            except GatewayError as exc:
                log.warning("refresh %s: %s", batch.refresh, exc)
                self.attach_failures += 1
        return BatchResult(batch.batch_id, tuple(results), stopped)

    async def _step(self, step: Step, channel: int) -> StepResult:
        data, sw = b"", 0
        last = len(step.apdus) - 1
        for i, apdu in enumerate(step.apdus):
            data, sw = await self.modem.send(with_channel(apdu, channel))
            if i < last and (sw not in step.continue_sw or data):
                break
        return StepResult(data, sw)
