"""A modem on the gateway's own serial port: the gateway is the device agent for that device.

Theory of operation. A sensor wired to the gateway (or a modem in the gateway itself) has no
agent and no link to wake up on: `LocalModemDevice.run_session()` plays the agent's part in
process. It reports the device's status (EID given, IMEI / PLMN / signal read from the modem)
to the same `UplinkHandler` the network links call, and runs each Batch the handler answers
directly on the modem with the batch runner the reference agent uses (gateway.links.batch_runner: the
device-link semantics of docs/device-link.md, section 3), the modem opening the batch's
channel itself (AT+CCHO, or MANAGE CHANNEL + SELECT through AT+CSIM). A refresh the modem
fails counts as an attach failure in the next status. Frozen dataclasses go to the handler as
they are: nothing to encode locally.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.links.base import UplinkHandler
from gateway.links.batch_runner import BatchRunner
from gateway.links.protocol import (
    Batch,
    BatchMsg,
    BatchResult,
    DeviceStatus,
    ErrorMsg,
    Hello,
    Idle,
    Result,
    Uplink,
    batch_header,
)
from gateway.links.serial.modem import AsyncModemEuicc


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
        runner = BatchRunner(_ModemBackend(self.modem), batch_header(batch), channels=self.modem)
        result = await runner.run(batch.steps)
        if runner.refresh_failed:
            self.attach_failures += 1
        return result


@dataclass
class _ModemBackend:
    """The modem as the batch runner's backend: commands by their class byte's host channel."""

    modem: AsyncModemEuicc

    async def transmit(self, apdu: bytes) -> bytes:
        data, sw = await self.modem.send(apdu)
        return data + sw.to_bytes(2, "big")

    async def refresh(self, kind: str) -> None:
        await self.modem.refresh(kind)
