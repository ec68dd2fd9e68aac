"""Apply a device-link batch to an eUICC, step by step, as its items stream in.

Theory of operation. Whoever plays the device agent -- the reference agent on a sensor
(hil.agent) or the gateway itself for a modem on its own serial port
(gateway.links.serial.local) -- applies a Batch with the semantics of docs/device-link.md
section 3, here and nowhere else. `BatchRunner` receives the batch header, then each Step as
soon as it has been decoded (a streaming agent never holds more than one step item), and sends
the step's APDUs to the eUICC backend, anything with `transmit(apdu) -> response` (sync or
async):

- channel: when the header names an AID, MANAGE CHANNEL opens a logical channel, SELECT puts
  the AID on it (or a `ChannelControl`, such as a modem's AT+CCHO, does both), every APDU gets
  the channel bits in its CLA, and the channel is closed at the end whatever happened;
- responses: 61xx is chained with GET RESPONSE and 6Cxx resent with the right Le on the
  same channel (gateway.spec.apdu.ResponseAssembler), so the gateway sees one (data, SW)
  per step;
- stop rules: inside a step, an APDU whose SW is not in continue_sw, or that answers data
  before the step's last APDU, ends the step; after a step, a SW outside continue_sw stops
  the batch (``unexpected-sw``), as does data from a stop_if_data step (``data``: a BPP
  segment answering before the last one is an error result); a backend failure stops it
  with ``card-error``;
- refresh: after the steps and the channel close, "modem-reset" / "uicc-reset" is passed to
  the backend's `refresh(kind)` if it has one; a failed refresh does not lose the Result (it
  is logged and flagged in `refresh_failed`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import GatewayError
from gateway.links.protocol import (
    STOPPED_CARD,
    STOPPED_DATA,
    STOPPED_SW,
    BatchHeader,
    BatchResult,
    Step,
    StepResult,
)
from gateway.spec.apdu import (
    Done,
    ResponseAssembler,
    manage_channel_close,
    manage_channel_open,
    opened_channel,
    select,
    with_channel,
)

log = logging.getLogger(__name__)


class Backend(Protocol):
    """An eUICC: the software eUICC, a modem on a serial port, a PC/SC reader."""

    def transmit(self, apdu: bytes, /) -> bytes | Awaitable[bytes]: ...


class ChannelControl(Protocol):
    """Opens a logical channel with an AID selected, for backends that cannot take MANAGE CHANNEL."""

    async def open_channel(self, aid: bytes, /) -> int: ...

    async def close_channel(self, channel: int, /) -> None: ...


class _BackendFailure(Exception):
    """The backend could not carry a command (no card, channel refused)."""


async def _transmit(backend: Backend, apdu: bytes) -> bytes:
    try:
        result = backend.transmit(apdu)
        if type(result) is not bytes and inspect.isawaitable(result):  # a sync card answers bytes
            result = await result
    except (OSError, GatewayError) as exc:
        raise _BackendFailure(f"backend failed on {apdu[:4].hex()}: {exc}") from exc
    if not isinstance(result, bytes):
        raise _BackendFailure(f"backend answered {type(result).__name__} to {apdu[:4].hex()}")
    return result


async def send_command(backend: Backend, apdu: bytes) -> tuple[bytes, int]:
    """One command with its 61xx/6Cxx follow-ups: (data, final SW)."""
    assembler = ResponseAssembler(apdu)
    step = assembler.feed(await _transmit(backend, apdu))
    while not isinstance(step, Done):
        step = assembler.feed(await _transmit(backend, step.apdu))
    return step.data, step.sw


@dataclass
class BatchRunner:
    """One batch on one backend: `open()`, `run_step()` per step until `done`, then `close()`."""

    backend: Backend
    header: BatchHeader
    channels: ChannelControl | None = None
    channel: int = 0
    results: list[StepResult] = field(default_factory=list)
    stopped: str | None = None
    apdus_sent: int = 0
    refresh_failed: bool = False

    async def open(self) -> None:
        aid = self.header.aid
        if aid is None:
            return
        try:
            if self.channels is not None:
                self.channel = await self.channels.open_channel(aid)
                return
            data, sw = await send_command(self.backend, manage_channel_open())
            if sw != 0x9000:
                raise _BackendFailure(f"MANAGE CHANNEL open answered {sw:04X}")
            self.channel = opened_channel(data)
            _, sw = await send_command(self.backend, with_channel(select(aid), self.channel))
            if sw != 0x9000:
                raise _BackendFailure(f"SELECT {aid.hex()} answered {sw:04X}")
        except (_BackendFailure, OSError, GatewayError) as exc:
            log.warning("batch %d: %s", self.header.batch_id, exc)
            self.stopped = STOPPED_CARD

    @property
    def done(self) -> bool:
        return self.stopped is not None or len(self.results) >= self.header.step_count

    async def run_step(self, step: Step) -> None:
        """Run one step; sets `stopped` when the batch must not go on."""
        if self.done:
            return
        try:
            result = await self._step(step)
        except (_BackendFailure, GatewayError) as exc:
            log.warning("batch %d step %d: %s", self.header.batch_id, len(self.results), exc)
            self.stopped = STOPPED_CARD
            return
        self.results.append(result)
        if result.sw not in step.continue_sw:
            self.stopped = STOPPED_SW
        elif step.stop_if_data and result.data:
            self.stopped = STOPPED_DATA

    async def _step(self, step: Step) -> StepResult:
        data, sw = b"", 0
        last = len(step.apdus) - 1
        for i, apdu in enumerate(step.apdus):
            data, sw = await send_command(self.backend, with_channel(apdu, self.channel))
            self.apdus_sent += 1
            if i < last and (sw not in step.continue_sw or data):
                break
        return StepResult(data, sw)

    async def close_channel(self) -> None:
        """Close the batch's logical channel if one is open (best effort; also for a broken downlink)."""
        channel, self.channel = self.channel, 0
        if not channel:
            return
        try:
            if self.channels is not None:
                await self.channels.close_channel(channel)
            else:
                await send_command(self.backend, manage_channel_close(channel))
        except (_BackendFailure, OSError, GatewayError) as exc:
            log.warning("closing channel %d: %s", channel, exc)

    async def close(self) -> BatchResult:
        """Close the channel, apply the refresh, and give the Result of the steps that ran."""
        await self.close_channel()
        if self.header.refresh is not None:
            await self._refresh(self.header.refresh)
        return BatchResult(self.header.batch_id, tuple(self.results), self.stopped)

    async def _refresh(self, kind: str) -> None:
        refresh = getattr(self.backend, "refresh", None)
        if not callable(refresh):
            return
        try:
            outcome = refresh(kind)
            if inspect.isawaitable(outcome):
                await outcome
        except (OSError, GatewayError) as exc:
            log.warning("batch %d: refresh %s failed: %s", self.header.batch_id, kind, exc)
            self.refresh_failed = True

    async def run(self, steps: Iterable[Step]) -> BatchResult:
        """The whole batch at once, for a caller that holds every step already."""
        await self.open()
        if not self.done:
            for step in steps:
                await self.run_step(step)
                if self.done:
                    break
        return await self.close()
