"""Webhook events: the JSON body, its HMAC-SHA256 signature, and how a receiver verifies it.

Theory of operation. An event is POSTed as one JSON object:

    {"id": "<event id>", "type": "fallback.executed", "time": 1767225600.0,
     "time_utc": "2026-01-01T00:00:00Z", "gateway": "<gateway id>", "eid": "<hex>" | null,
     "data": {...}}

`id` is the event's idempotency key: the same event is always sent under the same id (a
retry, or a replay after a crash, never makes a new one), so a receiver that keeps the ids
it has processed sees each event once. The body bytes are fixed when the event is queued.

Each POST carries, besides Content-Type: application/json,
    X-Ipae-Event-Id:   the id
    X-Ipae-Event-Type: the type
    X-Ipae-Signature:  t=<unix seconds of this attempt>,v1=<hex HMAC-SHA256>
where the HMAC key is `webhooks.hmac_secret` of credentials.toml (its UTF-8 bytes) and the
signed message is the ASCII timestamp, a full stop, then the exact body bytes:
HMAC(key, b"<t>." + body). A receiver recomputes it, compares in constant time, and refuses
timestamps too far from its clock (`verify_signature`, 300 s by default) so a captured
request cannot be replayed later. Each retry is signed again with its own timestamp.

Event types: profile.installed / enabled / disabled / deleted, fallback.executed / returned /
failed, device.quarantined / released, roaming.threshold, alarm.raised / cleared.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

from gateway.errors import RemoteProtocolError
from gateway.policy.decisions import EmitEvent

SIGNATURE_HEADER: Final = "X-Ipae-Signature"
EVENT_ID_HEADER: Final = "X-Ipae-Event-Id"
EVENT_TYPE_HEADER: Final = "X-Ipae-Event-Type"
CONTENT_TYPE: Final = "application/json"
DEFAULT_TOLERANCE_S: Final = 300.0

EVENT_TYPES: Final = (
    "profile.installed", "profile.enabled", "profile.disabled", "profile.deleted",
    "fallback.executed", "fallback.returned", "fallback.failed",
    "device.quarantined", "device.released", "roaming.threshold", "alarm.raised", "alarm.cleared",
)
_PROFILE_EVENTS: Final = {"install": "profile.installed", "enable": "profile.enabled",
                          "disable": "profile.disabled", "delete": "profile.deleted"}


class SignatureInvalid(RemoteProtocolError):
    """A webhook request whose signature is missing, malformed, wrong or too old."""


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    event_id: str
    type: str
    time: float
    eid: bytes | None
    data: Mapping[str, Any]

    @classmethod
    def of(cls, decision: EmitEvent) -> WebhookEvent:
        return cls(decision.event_id, decision.type, decision.time, decision.eid, dict(decision.data))

    def body(self, gateway_id: str) -> bytes:
        """The exact bytes POSTed (and signed)."""
        utc = datetime.fromtimestamp(self.time, timezone.utc).isoformat().replace("+00:00", "Z")
        return json.dumps({"id": self.event_id, "type": self.type, "time": self.time, "time_utc": utc,
                           "gateway": gateway_id, "eid": None if self.eid is None else self.eid.hex(),
                           "data": _jsonable(self.data)},
                          sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def profile_event(eid: bytes, operation: str, iccid: str | None, seq: int | None, now: float) -> EmitEvent | None:
    """The webhook event of an eUICC notification (install/enable/disable/delete), or None."""
    kind = _PROFILE_EVENTS.get(operation)
    if kind is None:
        return None
    ident = f"{kind}:{eid.hex()}:{iccid or '-'}:{seq if seq is not None else int(now)}"
    return EmitEvent(ident, kind, now, eid, (("iccid", iccid), ("seq_number", seq)))


def profile_event_from_audit(eid: bytes, operation: str, result: str, detail: str, iccid: str | None,
                             now: float) -> EmitEvent | None:
    """The webhook event of an engine Audit action that records a delivered eUICC notification
    ("deliverNotification", "ok", "<install|enable|disable|delete> to <server>"), or None.
    The notification is delivered once, so this event is emitted once per operation."""
    if operation != "deliverNotification" or result != "ok":
        return None
    return profile_event(eid, detail.split(" ", 1)[0], iccid, None, now)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The X-Ipae-Signature header value for one attempt."""
    mac = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: bytes, header: str | None, body: bytes, *, now: float,
                     tolerance_s: float = DEFAULT_TOLERANCE_S) -> int:
    """Check an X-Ipae-Signature header (for receivers); returns its timestamp."""
    if not header:
        raise SignatureInvalid(f"no {SIGNATURE_HEADER} header")
    parts: dict[str, str] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureInvalid(f"malformed {SIGNATURE_HEADER} item {item!r}")
        parts[key] = value
    try:
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        raise SignatureInvalid(f"{SIGNATURE_HEADER} needs t=<int> and v1=<hex>") from None
    if abs(now - timestamp) > tolerance_s:
        raise SignatureInvalid(f"timestamp {timestamp} is more than {tolerance_s:.0f} s from now")
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, given):
        raise SignatureInvalid("signature does not match the body")
    return timestamp
