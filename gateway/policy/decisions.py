"""What the policies decide: frozen dataclasses the engine and the runtime carry out.

Theory of operation. A policy never does anything itself (DESIGN principle 1): it reads a
device's reported status and the injected time and returns a list of decisions, in the
order they must be applied. The runtime applies the store-side ones (`SetQuarantine`,
`BindImei`, `SavePolicyState`, `AuditPolicy`, `EmitEvent`) in ONE store transaction
together with the engine actions of the same uplink, then performs the rest: `RunEs10` and
`ReportStateChange` go to the engine, `RaiseAlarm`/`ClearAlarm` to the alarm table
(metrics, API) and, as events, to the webhooks. See gateway/policy/__init__.py for the
full wiring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

EXECUTE_FALLBACK = "ExecuteFallbackMechanism"   # ES10b BF5D, SGP.32 §5.9.x; no eIM signature
RETURN_FROM_FALLBACK = "ReturnFromFallback"     # ES10b BF5E


@dataclass(frozen=True, slots=True)
class RunEs10:
    """Run one ES10b function on the device's eUICC, in the next batch it is sent.

    `request` is the DER of the ES10b request. `refresh` is what the device does after the
    batch ("uicc-reset" | "modem-reset" | None). `token` identifies the call: the engine
    hands the response back with it (`Policies.on_es10_result`).
    """

    eid: bytes
    function: str
    request: bytes
    refresh: str | None
    token: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReportStateChange:
    """At the device's next GetEimPackage to each of its eIMs, not before `at`: set
    notifyStateChange, stateChangeCause (SGP.32 StateChangeCause value) and rPLMN.
    Exactly one report per state change; the runtime keeps it (timer) until `at`."""

    eid: bytes
    cause: int
    rplmn: bytes | None
    at: float
    token: str


@dataclass(frozen=True, slots=True)
class SetQuarantine:
    eid: bytes
    quarantined: bool
    reason: str | None


@dataclass(frozen=True, slots=True)
class BindImei:
    eid: bytes
    imei: str | None


@dataclass(frozen=True, slots=True)
class Alarm:
    """One alarm: `key` is unique while it is raised (raising it again is a no-op)."""

    key: str
    kind: str            # "carrier-outage" | "imei-mismatch" | "roaming-exposure" | "queue"
    severity: str        # "critical" | "major" | "minor" | "warning"
    text: str
    eid: bytes | None = None
    detail: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class RaiseAlarm:
    alarm: Alarm


@dataclass(frozen=True, slots=True)
class ClearAlarm:
    key: str
    text: str


@dataclass(frozen=True, slots=True)
class AuditPolicy:
    """One audit record (gateway.store AuditLog.append): operation, result, JSON detail."""

    eid: bytes | None
    operation: str
    result: str
    detail: tuple[tuple[str, Any], ...] = ()
    iccid: str | None = None


@dataclass(frozen=True, slots=True)
class EmitEvent:
    """A webhook event (gateway.policy.events.WebhookEvent fields); `event_id` is its
    idempotency key, stable across a replay of the same decision."""

    event_id: str
    type: str
    time: float
    eid: bytes | None
    data: tuple[tuple[str, Any], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class SavePolicyState:
    """Persist a policy's state (`kind` "fallback" | "roaming" | "wave") for `eid`
    (b"" for gateway-wide state). `blob` is JSON (UTF-8), the format documented by the
    policy that owns `kind`."""

    eid: bytes
    kind: str
    blob: bytes


PolicyDecision: TypeAlias = (RunEs10 | ReportStateChange | SetQuarantine | BindImei | RaiseAlarm | ClearAlarm
                             | AuditPolicy | EmitEvent | SavePolicyState)
STORE_DECISIONS = (SetQuarantine, BindImei, AuditPolicy, EmitEvent, SavePolicyState)
