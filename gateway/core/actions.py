"""The engine's outputs: frozen dataclasses the runtime performs, in list order.

Theory of operation. `Engine.handle` returns a list of actions for one event. The runtime
applies the store actions of one list (SaveSession, BackhaulWaiting, MarkInbox, Audit) in ONE store
transaction *before* it performs any I/O action of the same list (SendBatch, ReplyIdle,
ReplyError, PostEsipa, PostEs9, PostEs11, timers): the session blob is a write-ahead record of what
the engine is about to do, so a crash after the commit re-sends (the engine re-emits its
outstanding requests on `Engine.restore`) and a crash before it loses nothing the servers
or the eUICC saw.

The device's uplink is answered by exactly one downlink action (SendBatch, ReplyIdle or
ReplyError) for that EID. A list may hold none: the engine is waiting for the backhaul, and
the downlink comes in the list of a later event for the same device. When a device sends a
new uplink while one is pending, the engine answers the newest; the runtime answers the
older one with an error or drops it. A Result the device sends again is never applied twice:
it gets the batch its first copy got, or, when that was Idle, is handled as a Hello
(gateway.core.device_side).

Backhaul requests carry a `request_id` unique per device and attempt; the answer comes back
as BackhaulAnswered/BackhaulFailed with the same id; one for a request the engine let go of
in the meantime gets a StaleAnswer naming why (no Audit: nothing changed). Bodies are exact bytes: DER of
EsipaMessageFromIpaToEim for ESipa (ASN.1 binding), the JSON body for ES9+ (SGP.22 §6.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from gateway.core import serial
from gateway.links.protocol import Batch


@serial.register
@dataclass(frozen=True, slots=True)
class SendBatch:
    """The downlink for the device's pending uplink: run this batch."""

    eid: bytes
    batch: Batch


@serial.register
@dataclass(frozen=True, slots=True)
class ReplyIdle:
    """The downlink for the device's pending uplink: nothing to do, come back later."""

    eid: bytes
    retry_after_s: int


@serial.register
@dataclass(frozen=True, slots=True)
class ReplyError:
    eid: bytes
    code: int
    text: str


@serial.register
@dataclass(frozen=True, slots=True)
class PostEsipa:
    """POST one ESipa message (ASN.1 binding, SGP.32 §6.3) to the device's eIM."""

    eid: bytes
    request_id: str
    eim_id: str
    eim_fqdn: str
    function: str       # ESipa function name, e.g. "GetEimPackage"
    body: bytes         # DER of EsipaMessageFromIpaToEim
    # how the eUICC says to trust the eIM's TLS (EimConfigurationData.trustedPublicKeyDataTls):
    # ("certificate", DER) or ("publicKey", SubjectPublicKeyInfo DER); None: the configured trust
    tls_trust: tuple[str, bytes] | None = None


@serial.register
@dataclass(frozen=True, slots=True)
class PostEs9:
    """POST one ES9+ function (SGP.22 §6.5.2) to an SM-DP+."""

    eid: bytes
    request_id: str
    smdp_address: str
    function: str       # gateway.spec.es9p function name, e.g. "initiateAuthentication"
    body: bytes         # the JSON request body (gateway.spec.es9p dataclass .to_json())


@serial.register
@dataclass(frozen=True, slots=True)
class PostEs11:
    """POST one ES11 function (SGP.22 §6.6.2) to an SM-DS: event retrieval."""

    eid: bytes
    request_id: str
    smds_address: str
    function: str       # gateway.spec.es11 function name
    body: bytes         # the JSON request body


@serial.register
@dataclass(frozen=True, slots=True)
class SaveSession:
    """Persist the device's session: state name (for queries) and the blob to resume from."""

    eid: bytes
    state_name: str
    blob: bytes


@serial.register
@dataclass(frozen=True, slots=True)
class Waiting:
    """One delivery of a device waiting for the backhaul: a result, notification or
    cancellation not yet acknowledged by its server. `key` is the delivery's key in the
    device's session (its idempotency key with the EID); `attempts` how often it failed;
    `next_at` when its backoff timer sends it again (None: being sent, or not yet)."""

    key: str
    kind: str           # "result" | "notification" | "cancellation"
    server: str         # eIM id or SM-DP+ address
    function: str
    size: int           # bytes of the request body
    state: str          # the delivery's state (gateway.core.procedures.notifications)
    attempts: int
    next_at: float | None


@serial.register
@dataclass(frozen=True, slots=True)
class BackhaulWaiting:
    """Every delivery of the device now waiting for the backhaul (replaces the set last
    given; empty: none). Emitted when that set changed, in the same list as the SaveSession
    that records it, so the store's one accounting of what waits for the backhaul (the
    outbox bound and alarm) matches the session blobs across any crash. `previous` is the set
    this session last named, so the store writes only what changed; None (a new or restored
    session, which cannot know what the store holds): replace whatever is there."""

    eid: bytes
    waiting: tuple[Waiting, ...]
    previous: tuple[Waiting, ...] | None = None


@serial.register
@dataclass(frozen=True, slots=True)
class MarkInbox:
    """Move an inbox entry: "running" when its procedure starts, "done" when its result is
    recorded, "duplicate" when it was refused as a replay of a package already run."""

    eid: bytes
    key: str
    state: str


@serial.register
@dataclass(frozen=True, slots=True)
class Audit:
    """One audit record. The records of a profile state change reaching its server carry it
    in structured form as well: `event` is the notification's profileManagementOperation
    ("install", "enable", "disable", "delete"; SGP.22 §5.7.10) on "deliverNotification" and
    "removeNotification" records whose result is "ok", else None; `seq` is the sequence
    number removed ("removeNotification" ok, any kind) or delivered ("deliverNotification"
    ok), else None."""

    eid: bytes
    iccid: bytes | None
    operation: str
    origin: str
    result: str
    detail: str = ""
    event: str | None = None
    seq: int | None = None


PROFILE_EVENTS = frozenset({"install", "enable", "disable", "delete"})


def profile_event(event: object) -> str | None:
    """`event` if it names a profile state change (an Audit's `event` field), else None."""
    return event if isinstance(event, str) and event in PROFILE_EVENTS else None


# why an answer came for a request the engine no longer waits for (StaleAnswer.reason)
STALE_ACKNOWLEDGED = "acknowledged"         # EimAcknowledgements named its delivery first (a push, another result)
STALE_PROCEDURE_ENDED = "procedure-ended"   # its procedure finished or failed while it was in flight
STALE_CANCELLED = "cancelled"               # the operator cancelled its procedure
STALE_FORGOTTEN = "forgotten"               # the device was forgotten (operator) while it was in flight
STALE_UNKNOWN = "unknown"                   # never sent by this session (answered twice, or sent before a restart)


@serial.register
@dataclass(frozen=True, slots=True)
class StaleAnswer:
    """An answer or failure (BackhaulAnswered/BackhaulFailed) for a request the engine let go of
    while it was in flight: harmless, nothing is done with it and nothing is stored. The runtime
    logs it at debug level and counts it by `reason` (one of the STALE_* names)."""

    eid: bytes
    request_id: str
    reason: str


@serial.register
@dataclass(frozen=True, slots=True)
class StartTimer:
    eid: bytes
    name: str
    at: float


@serial.register
@dataclass(frozen=True, slots=True)
class CancelTimer:
    eid: bytes
    name: str


Action: TypeAlias = (SendBatch | ReplyIdle | ReplyError | PostEsipa | PostEs9 | PostEs11 | SaveSession
                     | BackhaulWaiting | MarkInbox | Audit | StartTimer | CancelTimer | StaleAnswer)
DOWNLINKS = (SendBatch, ReplyIdle, ReplyError)
STORE_ACTIONS = (SaveSession, BackhaulWaiting, MarkInbox, Audit)


def to_bytes(action: Action) -> bytes:
    return serial.dumps(action)


def from_bytes(data: bytes) -> Action:
    value = serial.loads(data)
    if not isinstance(value, (SendBatch, ReplyIdle, ReplyError, PostEsipa, PostEs9, PostEs11, SaveSession,
                              BackhaulWaiting, MarkInbox, Audit, StartTimer, CancelTimer, StaleAnswer)):
        from gateway.errors import DecodeError
        raise DecodeError(f"not an action: {type(value).__name__}", type_name="engine action")
    return value
