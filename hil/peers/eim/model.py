"""What the eIM keeps: packages, received results and notifications, devices, relayed sessions.

A `Package` is one entry of an EID's queue (an EuiccPackageRequest signed at queueing time,
an IpaEuiccDataRequest or a ProfileDownloadTriggerRequest) and ends done or failed when its
result arrives. A `Record` is one result or notification exactly as received, whether its
signature verified and why not. `Device.seen` maps what was already received to the
acknowledgements given for it, so a retrying IPA is answered the same without a second copy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from gateway.backhaul.http import Server
from gateway.errors import GatewayError
from gateway.spec import esipa_json
from hil.peers import common
from hil.peers.eim.wire import Embedded


@dataclass
class Package:
    package_id: int
    eid: bytes
    kind: str                    # euiccPackageRequest | ipaEuiccDataRequest | profileDownloadTriggerRequest
    eim_transaction_id: bytes
    request: dict[str, Any]      # what the admin asked for
    payload: Any                 # the GetEimPackageResponse alternative's value (Embedded for signed)
    counter: int | None = None
    state: str = "queued"        # queued -> delivered -> done | failed
    deliveries: int = 0
    pushed: str | None = None
    result: dict[str, Any] | None = None

    @property
    def pending(self) -> bool:
        return self.state in ("queued", "delivered")

    def to_json(self) -> dict[str, Any]:
        der = self.payload.raw if isinstance(self.payload, Embedded) else None
        return {"packageId": self.package_id, "kind": self.kind,
                "eimTransactionId": self.eim_transaction_id.hex().upper(), "counterValue": self.counter,
                "request": self.request, "state": self.state, "deliveries": self.deliveries,
                "pushed": self.pushed, "result": self.result, "der": der.hex() if der else None}


@dataclass
class Record:
    """One result or notification as received."""

    received_at: float
    kind: str
    verified: bool
    detail: str
    seq_number: int | None
    package_id: int | None
    der: bytes
    decoded: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"receivedAt": self.received_at, "kind": self.kind, "verified": self.verified,
                "detail": self.detail, "seqNumber": self.seq_number, "packageId": self.package_id,
                "der": self.der.hex(), "decoded": self.decoded}


@dataclass
class Device:
    eid: bytes
    counter: int = 0
    association_token: int | None = None
    certs: common.EuiccCertificates | None = None
    packages: list[Package] = field(default_factory=list)
    results: list[Record] = field(default_factory=list)
    notifications: list[Record] = field(default_factory=list)
    state_changes: list[dict[str, Any]] = field(default_factory=list)
    seen: dict[str, list[int]] = field(default_factory=dict)    # digest -> acknowledgements given
    pending_acks: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"eid": self.eid.hex(), "counterValue": self.counter,
                "associationToken": self.association_token,
                "certificateKnown": self.certs is not None,
                "packages": [p.to_json() for p in self.packages],
                "results": [r.to_json() for r in self.results],
                "notifications": [n.to_json() for n in self.notifications],
                "stateChanges": self.state_changes, "pendingAcknowledgements": self.pending_acks}


@dataclass
class ProxiedSession:
    transaction_id: bytes
    server: Server
    eim_transaction_id: bytes | None
    expires_at: float
    smdp_oid: str | None = None      # from the SM-DP+'s CERT.DPauth; None: unreadable or none named
    eid: bytes | None = None
    package: Package | None = None


def stable_digest(value: Any) -> str:
    def plain(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray)):
            return {"b": bytes(v).hex()}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in sorted(v.items())}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return hashlib.sha256(json.dumps(plain(value), sort_keys=True).encode()).hexdigest()


def readable(type_name: str, value: Any) -> Any:
    """A JSON view of a decoded value, every field mapped (for the admin API)."""
    try:
        return esipa_json.to_json(type_name, value, binary="hex", opaque=frozenset())
    except (GatewayError, ValueError, TypeError, KeyError) as exc:
        return {"unreadable": str(exc)}
