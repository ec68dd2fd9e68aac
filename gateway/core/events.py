"""The engine's inputs: frozen dataclasses, one per thing that can happen to a device.

Theory of operation. Every event names the device (`eid`) and carries the time it happened
(`now`, seconds from any monotonic origin, injected by the runtime: DESIGN principle 5).
The runtime builds them from the device link (DeviceHello, DeviceResult), the eIM push
endpoint or a poll answer (EimPackageReceived), the backhaul (BackhaulAnswered,
BackhaulFailed: `request_id` is the id the engine put in its PostEsipa/PostEs9 action),
its timers (TimerFired) and the management API (OperatorAction). All are serialisable
(`gateway.core.serial`), so a queue can persist them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from gateway.core import serial
from gateway.links.protocol import Batch, BatchResult, DeviceStatus, Step, StepResult

for _cls in (Step, Batch, StepResult, BatchResult, DeviceStatus):
    serial.register(_cls)


@serial.register
@dataclass(frozen=True, slots=True)
class DeviceHello:
    """The device woke and said hello (device-link Hello): it waits for one downlink."""

    eid: bytes
    now: float
    status: DeviceStatus


@serial.register
@dataclass(frozen=True, slots=True)
class DeviceResult:
    """The device answered the last batch (device-link Result): it waits for one downlink."""

    eid: bytes
    now: float
    result: BatchResult
    status: DeviceStatus | None = None


@serial.register
@dataclass(frozen=True, slots=True)
class EimPackageReceived:
    """An eIM package for this device: the exact bytes of a TransferEimPackageRequest (push,
    already persisted in the inbox under `key`) or of a GetEimPackageResponse."""

    eid: bytes
    now: float
    eim_id: str
    raw: bytes
    via: str = "push"   # "push" | "poll"
    key: str = ""       # the inbox key the runtime stored it under ("" = let the engine derive it)


@serial.register
@dataclass(frozen=True, slots=True)
class BackhaulAnswered:
    """A backhaul request the engine asked for got an answer: the exact response body
    (DER for ESipa ASN.1, JSON for ES9+/ES11, empty for HTTP 204)."""

    eid: bytes
    now: float
    request_id: str
    body: bytes


@serial.register
@dataclass(frozen=True, slots=True)
class BackhaulFailed:
    """A backhaul request failed. `retryable` is `gateway.errors.is_retryable` of the error
    the adapter raised; `retry_after_s` is the server's Retry-After or a breaker's wait."""

    eid: bytes
    now: float
    request_id: str
    error_class: str
    retryable: bool
    detail: str = ""
    subject_code: str | None = None
    reason_code: str | None = None
    retry_after_s: float | None = None


@serial.register
@dataclass(frozen=True, slots=True)
class TimerFired:
    eid: bytes
    now: float
    name: str


OPERATOR_RETRY = "retry"              # retry what failed (a delivery given up, a poll)
OPERATOR_CANCEL = "cancel"            # abort the running procedure (CancelSession where needed)
OPERATOR_FORGET = "forget"            # drop the device's session (after a card swap)
OPERATOR_REREAD_EIM = "reread-eim"    # read the eIM configuration again on next wake
OPERATOR_POLL = "poll"                # poll the eIM(s) on next wake


@serial.register
@dataclass(frozen=True, slots=True)
class OperatorAction:
    eid: bytes
    now: float
    kind: str
    args: tuple[tuple[str, str], ...] = ()


@serial.register
@dataclass(frozen=True, slots=True)
class StateReportPending:
    """The edge policies owe the eIM this device's state-change report (a gateway.policy
    ReportStateChange, posted by the runtime): `pending` from the decision until the report
    is over. Meanwhile the engine adds no notifyStateChange of its own for the PLMN change the
    switch causes: one report per switch.

    `pending` False with `answered`: the eIM answered the report (`Policies.report_sent`). The
    eIM may have been told before the device woke on its new network, so the hold lasts until
    the device next names its serving PLMN, which the engine records as reported. Without
    `answered` (the report was given up), the hold ends at once."""

    eid: bytes
    now: float
    pending: bool
    answered: bool = False


Event: TypeAlias = (DeviceHello | DeviceResult | EimPackageReceived | BackhaulAnswered
                    | BackhaulFailed | TimerFired | OperatorAction | StateReportPending)


def to_bytes(event: Event) -> bytes:
    return serial.dumps(event)


def from_bytes(data: bytes) -> Event:
    value = serial.loads(data)
    if not isinstance(value, (DeviceHello, DeviceResult, EimPackageReceived, BackhaulAnswered,
                              BackhaulFailed, TimerFired, OperatorAction, StateReportPending)):
        from gateway.errors import DecodeError
        raise DecodeError(f"not an event: {type(value).__name__}", type_name="engine event")
    return value
