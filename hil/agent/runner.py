"""Apply a device-link batch to an eUICC, step by step, as its items stream in.

Theory of operation. `BatchRunner` receives the batch header, then each Step as soon as it has
been decoded, and sends the step's APDUs to the eUICC backend:

- channel: when the header names an AID, MANAGE CHANNEL opens a logical channel, SELECT puts
  the AID on it, every APDU gets the channel bits in its CLA, and the channel is closed at
  the end whatever happened;
- responses: 61xx is chained with GET RESPONSE and 6Cxx resent with the right Le on the
  same channel (gateway.spec.apdu.ResponseAssembler), so the gateway sees one (data, SW)
  per step;
- stop rules: inside a step, an APDU whose SW is not in continue_sw, or that answers data
  before the step's last APDU, ends the step; after a step, a SW outside continue_sw stops
  the batch (``unexpected-sw``), as does data from a stop_if_data step (``data``: a BPP
  segment answering before the last one is an error result); a backend failure stops it
  with ``card-error``;
- refresh: after the steps, "modem-reset" / "uicc-reset" is passed to the backend.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable
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

    def transmit(self, apdu: bytes) -> bytes | Awaitable[bytes]: ...


class CardFailure(Exception):
    """The backend could not carry a command (no card, channel refused)."""


async def transmit(backend: Backend, apdu: bytes) -> bytes:
    try:
        result = backend.transmit(apdu)
        if inspect.isawaitable(result):
            result = await result
    except (OSError, GatewayError) as exc:
        raise CardFailure(f"backend failed on {apdu[:4].hex()}: {exc}") from exc
    assert isinstance(result, bytes)
    return result


async def send_command(backend: Backend, apdu: bytes) -> tuple[bytes, int]:
    """One command with its 61xx/6Cxx follow-ups: (data, final SW)."""
    assembler = ResponseAssembler(apdu)
    step = assembler.feed(await transmit(backend, apdu))
    while not isinstance(step, Done):
        step = assembler.feed(await transmit(backend, step.apdu))
    return step.data, step.sw


@dataclass
class BatchRunner:
    backend: Backend
    header: BatchHeader
    channel: int = 0
    results: list[StepResult] = field(default_factory=list)
    stopped: str | None = None
    apdus_sent: int = 0

    async def open(self) -> None:
        if self.header.aid is None:
            return
        try:
            data, sw = await send_command(self.backend, manage_channel_open())
            if sw != 0x9000:
                raise CardFailure(f"MANAGE CHANNEL open answered {sw:04X}")
            self.channel = opened_channel(data)
            _, sw = await send_command(self.backend, with_channel(select(self.header.aid), self.channel))
            if sw != 0x9000:
                raise CardFailure(f"SELECT {self.header.aid.hex()} answered {sw:04X}")
        except (CardFailure, GatewayError) as exc:
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
        except (CardFailure, GatewayError) as exc:
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

    async def close(self) -> BatchResult:
        if self.channel:
            try:
                await send_command(self.backend, manage_channel_close(self.channel))
            except (CardFailure, GatewayError) as exc:
                log.warning("closing channel %d: %s", self.channel, exc)
            self.channel = 0
        if self.header.refresh is not None:
            refresh = getattr(self.backend, "refresh", None)
            if callable(refresh):
                outcome = refresh(self.header.refresh)
                if inspect.isawaitable(outcome):
                    await outcome
        return BatchResult(self.header.batch_id, tuple(self.results), self.stopped)
