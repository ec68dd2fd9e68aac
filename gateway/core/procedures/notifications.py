"""Notifications, eIM results, cancellations: retrieve, deliver, remove after the acknowledgement.

Theory of operation. Everything the eUICC wants a server to know (Profile notifications,
SGP.22 §3.5; EuiccPackageResults, SGP.32 §2.11.1; the signed answer to a CancelSession,
SGP.22 §3.0.2) is a *delivery*: exact signed bytes
posted to an address, retried with backoff until the server acknowledges it, and only then
removed from the eUICC (RemoveNotificationFromList). A delivery runs beside the device's
current procedure, so its removal folds into the next batch instead of costing an
exchange. Each delivery is one small state machine with this one table:

    PENDING  --send-->    SENDING
    SENDING  --ack-->     ACKED (something to remove) | DONE
    SENDING  --retry-->   WAITING        (retryable failure; a timer sends it again)
    SENDING  --fail-->    FAILED         (definitive: kept, audited; an operator may retry)
    WAITING  --send-->    SENDING
    FAILED   --send-->    SENDING
    ACKED    --remove-->  REMOVING       RemoveNotificationFromList is in a batch
    REMOVING --removed--> DONE           (every sequence number it covers is gone)
    REMOVING --not_run--> ACKED          (the batch stopped before some: next batch)
    PENDING | SENDING | WAITING | FAILED --eim_ack--> ACKED   (EimAcknowledgements named it)

ACKED is written to the session blob in the same store transaction that follows the
acknowledgement, before any RemoveNotificationFromList is sent: "acknowledged and recorded".
Routing (SGP.32 §3.6): a notification whose address is one of the device's eIMs goes over
ESipa HandleNotification, and so does every notification of a device whose eIM does its
downloads indirectly (it may have no route to SM-DP+s); any other goes to its SM-DP+ with
ES9+ handleNotification; results go
to their eIM with ProvideEimPackageResult, whose EimAcknowledgements are honoured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.core import es10
from gateway.core.procedures.base import Call, Request
from gateway.errors import LocalProtocolError
from gateway.spec import es9p, signed

PENDING = "PENDING"
SENDING = "SENDING"
WAITING = "WAITING"
FAILED = "FAILED"
ACKED = "ACKED"
REMOVING = "REMOVING"
DONE = "DONE"

TABLE: Mapping[tuple[str, str], frozenset[str]] = {
    (PENDING, "send"): frozenset({SENDING}),
    (SENDING, "ack"): frozenset({ACKED, DONE}),
    (SENDING, "retry"): frozenset({WAITING}),
    (SENDING, "fail"): frozenset({FAILED}),
    (WAITING, "send"): frozenset({SENDING}),
    (FAILED, "send"): frozenset({SENDING}),
    (ACKED, "remove"): frozenset({REMOVING}),
    (REMOVING, "removed"): frozenset({DONE}),
    (REMOVING, "not_run"): frozenset({ACKED}),
    # EimAcknowledgements (SGP.32 §2.11.4): the eIM has it, by whatever path
    (PENDING, "eim_ack"): frozenset({ACKED}),
    (SENDING, "eim_ack"): frozenset({ACKED}),
    (WAITING, "eim_ack"): frozenset({ACKED}),
    (FAILED, "eim_ack"): frozenset({ACKED}),
}
STATES = frozenset({PENDING, SENDING, WAITING, FAILED, ACKED, REMOVING, DONE})
WAITING_FOR_BACKHAUL = frozenset({PENDING, SENDING, WAITING})   # not yet acknowledged by the server

NOTIFICATION = "notification"
RESULT = "result"
CANCELLATION = "cancellation"


def move(item: dict[str, Any], event: str, target: str) -> None:
    allowed = TABLE.get((item["state"], event))
    if allowed is None or target not in allowed:
        raise LocalProtocolError(f"delivery {item['key']}: {item['state']} --{event}--> {target} not allowed")
    item["state"] = target


def notification_delivery(note: es10.Notification, eims: tuple[Mapping[str, Any], ...]) -> dict[str, Any]:
    """A delivery for one pending notification, routed by its notificationAddress."""
    eim = next((e for e in eims if e.get("eimFqdn") and e["eimFqdn"] == note.address), None)
    if eim is None and not note.address and eims:
        eim = eims[0]   # a compact notification (no address) is for the eIM that asked for it
    if eim is None:
        # a device that downloads indirectly may not reach SM-DP+s at all: its eIM relays
        eim = next((e for e in eims if e.get("indirectProfileDownload")), None)
    if eim is not None:
        target, server, function = "esipa", str(eim["eimId"]), "HandleNotification"
        body = signed.handle_notification(note.raw)
    else:
        target, server, function = "es9", note.address, es9p.HANDLE_NOTIFICATION
        body = es9p.HandleNotificationRequest(note.raw).to_json()
    return {"key": f"n{note.seq_number}", "kind": NOTIFICATION, "state": PENDING, "target": target,
            "server": server, "function": function, "body": body, "remove_seqs": [note.seq_number],
            "event": note.event, "iccid": note.iccid, "attempt": 0, "inbox_key": None, "raw": note.raw}


def result_delivery(key: str, eim_id: str, body: bytes, remove_seqs: list[int],
                    inbox_key: str | None) -> dict[str, Any]:
    """A delivery of one ProvideEimPackageResult (already built, exact bytes) to its eIM;
    `remove_seqs`: the result's own sequence number and those of notifications it carries."""
    return {"key": key, "kind": RESULT, "state": PENDING, "target": "esipa", "server": eim_id,
            "function": "ProvideEimPackageResult", "body": body, "remove_seqs": remove_seqs,
            "event": "result", "iccid": None, "attempt": 0, "inbox_key": inbox_key}


def cancellation_delivery(transaction_id: bytes, request: Request) -> dict[str, Any]:
    """A delivery of one CancelSession (SGP.22 §5.6.5 / ESipa, the eUICC's signed answer as
    received) to the server of the cancelled download; nothing to remove from the eUICC."""
    return {"key": "c" + transaction_id.hex(), "kind": CANCELLATION, "state": PENDING, "target": request.target,
            "server": request.server, "function": request.function, "body": request.body, "remove_seqs": [],
            "event": "cancel", "iccid": None, "attempt": 0, "inbox_key": None}


def request_of(item: dict[str, Any]) -> Request:
    return Request(item["key"], item["target"], item["server"], item["function"], item["body"])


def removal_calls(item: dict[str, Any]) -> list[tuple[int, Call]]:
    return [(int(seq), Call("RemoveNotificationFromList", es10.remove_notification_from_list(int(seq))))
            for seq in item["remove_seqs"]]


def acknowledged_seqs(body: bytes) -> tuple[bool, list[int]]:
    """(accepted, acknowledged sequence numbers) of a ProvideEimPackageResultResponse; an empty
    body (HTTP 204) is an acceptance without acknowledgements."""
    if not body:
        return True, []
    from gateway.spec import esipa

    value = esipa.decode_response("ProvideEimPackageResult", body)
    kind, inner = value
    if kind == "eimAcknowledgements":
        return True, [int(s) for s in inner]
    if kind == "emptyResponse":
        return True, []
    return False, []
