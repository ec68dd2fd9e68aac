"""One device's IPA session: its procedures, deliveries, polls and the batch in flight.

Theory of operation. A device wakes and sends an uplink; the runtime must answer it with
exactly one downlink. The session keeps that uplink *pending* while the decisions the next
batch depends on are in flight on the backhaul (a procedure's ES9+/ESipa call, a
GetEimPackage poll, a delivery whose acknowledgement lets a notification be removed), and
answers it (`settle`) as soon as nothing it waits for is outstanding: with one batch that
folds the running procedure's ES10b calls and the delivery track's removals/retrieval
(gateway.core.planner), or Idle.

At most one procedure runs (download, eIM package, eIM data, discovery); packages wait in
`queue` in arrival order; a package whose key (eimId + eimTransactionId, else a hash of
its exact bytes) was already run or queued is refused as a duplicate. Deliveries (results
to the eIM, notifications to their servers) run beside the procedure
(procedures/notifications.py). Retryable backhaul failures are retried with
gateway/core/retry.py timing through timers; definitive ones go to the procedure.

Everything is plain data (`to_blob`/`from_blob`, CBOR): after a restart, `resume` re-sends
the requests that were in flight and re-arms the timers; a Result for the batch that was in
flight is still accepted; a Hello while a batch is in flight means the device lost it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from gateway.core import actions as A
from gateway.core import es10, serial
from gateway.core import packages as P
from gateway.core.config import EngineConfig
from gateway.core.events import (
    OPERATOR_CANCEL,
    OPERATOR_POLL,
    OPERATOR_REREAD_EIM,
    OPERATOR_RETRY,
    BackhaulAnswered,
    BackhaulFailed,
    DeviceHello,
    DeviceResult,
    EimPackageReceived,
    Event,
    OperatorAction,
    TimerFired,
)
from gateway.core.planner import Part, plan
from gateway.core.procedures import notifications as N
from gateway.core.procedures.base import (
    ANSWER,
    DEVICE,
    FAILED,
    START,
    Answer,
    Call,
    DeviceAnswer,
    DeviceWork,
    Env,
    Failure,
    Finish,
    Note,
    Output,
    Procedure,
    Reply,
    Request,
    Retry,
)
from gateway.core.procedures.discovery import Discovery, eim_summary
from gateway.core.procedures.download import Download
from gateway.core.procedures.eim_data import EimData
from gateway.core.procedures.eim_package import EimPackage
from gateway.errors import DecodeError, GatewayError
from gateway.links.protocol import STOPPED_CARD, DeviceStatus, ErrorCode
from gateway.spec import esipa

PROCEDURES: dict[str, type[Procedure]] = {p.KIND: p for p in (Download, EimPackage, EimData, Discovery)}

PROC = "proc"
NOTIF = "notif"
POLL = "poll"
DELIVERY = "delivery"
RETRY_PREFIX = "retry:"
POLL_TIMER = "poll"


class DeviceSession:
    def __init__(self, eid: bytes) -> None:
        self.eid = eid
        self.queue: list[dict[str, Any]] = []
        self.proc: Procedure | None = None
        self.pkg: dict[str, Any] | None = None          # the package the procedure runs (None: internal)
        self.work: Part | None = None                   # the procedure's calls not yet sent
        self.replies: list[Reply] = []                  # replies gathered over split batches
        self.deliveries: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}   # request id -> request record
        self.retries: dict[str, dict[str, Any]] = {}    # timer name -> request record waiting
        self.eims: list[dict[str, Any]] | None = None
        self.eims_read = False
        self.want_discover = False
        self.want_retrieve = False
        self.uplink_pending = False
        self.in_flight: dict[str, Any] | None = None
        self.cancel_requested = False
        self.resend_once = False
        self.counter = 0
        self.done_keys: list[str] = []
        self.plmn: str | None = None
        self.imei: str | None = None
        self.max_batch_bytes: int | None = None
        self.timers: dict[str, float] = {}
        self.retrieved_at: float | None = None

    # -- persistence -------------------------------------------------------------------------

    @property
    def state_name(self) -> str:
        if self.proc is not None:
            return f"{self.proc.KIND}:{self.proc.state}"
        if self.in_flight is not None:
            return "batch"
        return "idle"

    def to_blob(self) -> bytes:
        proc = None if self.proc is None else {"kind": self.proc.KIND, "state": self.proc.state,
                                                "ctx": self.proc.ctx}
        work = None if self.work is None else {"owner": self.work.owner, "refresh": self.work.refresh,
                                                "calls": [[c.name, c.request, c.segment] for c in self.work.calls]}
        data = {
            "v": 1, "queue": self.queue, "proc": proc, "pkg": self.pkg, "work": work,
            "replies": [[r.data, r.sw] for r in self.replies], "deliveries": self.deliveries,
            "requests": self.requests, "retries": self.retries, "eims": self.eims,
            "eims_read": self.eims_read, "want_discover": self.want_discover,
            "want_retrieve": self.want_retrieve, "in_flight": self.in_flight, "counter": self.counter,
            "cancel_requested": self.cancel_requested, "resend_once": self.resend_once,
            "done_keys": self.done_keys, "plmn": self.plmn, "imei": self.imei,
            "max_batch_bytes": self.max_batch_bytes, "timers": self.timers,
            "retrieved_at": self.retrieved_at,
        }
        return serial.dumps(data)

    @classmethod
    def from_blob(cls, eid: bytes, blob: bytes) -> DeviceSession:
        """The session `to_blob` saved; DecodeError for anything else."""
        try:
            return cls._from_blob(eid, blob)
        except DecodeError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise DecodeError(f"malformed session blob: {type(exc).__name__}: {exc}",
                              type_name="session blob") from None

    @classmethod
    def _from_blob(cls, eid: bytes, blob: bytes) -> DeviceSession:
        d = serial.loads(blob)
        if not isinstance(d, dict) or d.get("v") != 1:
            raise DecodeError("not a version 1 session blob", type_name="session blob")
        s = cls(eid)
        s.queue = [dict(q) for q in d["queue"]]
        if d["proc"] is not None:
            kind = d["proc"]["kind"]
            if kind not in PROCEDURES:
                raise DecodeError(f"unknown procedure {kind!r}", type_name="session blob")
            s.proc = PROCEDURES[kind](d["proc"]["state"], _thaw(d["proc"]["ctx"]))
        s.pkg = _thaw(d["pkg"]) if d["pkg"] is not None else None
        if d["work"] is not None:
            w = d["work"]
            s.work = Part(w["owner"], tuple(Call(n, r, g) for n, r, g in w["calls"]), w["refresh"])
        s.replies = [Reply(data, sw) for data, sw in d["replies"]]
        s.deliveries = {k: _thaw(v) for k, v in d["deliveries"].items()}
        s.requests = {k: _thaw(v) for k, v in d["requests"].items()}
        s.retries = {k: _thaw(v) for k, v in d["retries"].items()}
        s.eims = [_thaw(e) for e in d["eims"]] if d["eims"] is not None else None
        s.eims_read = d["eims_read"]
        s.want_discover = d["want_discover"]
        s.want_retrieve = d["want_retrieve"]
        s.in_flight = _thaw(d["in_flight"]) if d["in_flight"] is not None else None
        s.counter = d["counter"]
        s.cancel_requested = d["cancel_requested"]
        s.resend_once = d["resend_once"]
        s.done_keys = list(d["done_keys"])
        s.plmn, s.imei, s.max_batch_bytes = d["plmn"], d["imei"], d["max_batch_bytes"]
        s.timers = dict(d["timers"])
        s.retrieved_at = d["retrieved_at"]
        return s

    # -- entry point -------------------------------------------------------------------------

    def handle(self, event: Event, config: EngineConfig, rand: Callable[[], float]) -> list[A.Action]:
        out: list[A.Action] = []
        ctx = _Step(self, config, rand, event.now, out)
        if isinstance(event, DeviceHello):
            ctx.on_hello(event.status)
        elif isinstance(event, DeviceResult):
            ctx.on_result(event)
        elif isinstance(event, EimPackageReceived):
            ctx.on_package(event.eim_id, event.raw, event.via, event.key)
        elif isinstance(event, BackhaulAnswered):
            ctx.on_answer(event.request_id, event.body)
        elif isinstance(event, BackhaulFailed):
            ctx.on_failed(event)
        elif isinstance(event, TimerFired):
            ctx.on_timer(event.name)
        elif isinstance(event, OperatorAction):
            ctx.on_operator(event.kind, dict(event.args))
        ctx.settle()
        store = [a for a in out if isinstance(a, A.STORE_ACTIONS)]
        rest = [a for a in out if not isinstance(a, A.STORE_ACTIONS)]
        return store + [A.SaveSession(self.eid, self.state_name, self.to_blob())] + rest

    def resume(self, now: float) -> list[A.Action]:
        """After a restart: send again what was in flight, arm the timers again."""
        out: list[A.Action] = []
        self.uplink_pending = False
        for rid, rec in self.requests.items():
            out.append(_post(self, rid, rec))
        for name, at in self.timers.items():
            out.append(A.StartTimer(self.eid, name, at))
        return out


def _removed(data: bytes) -> bool:
    """Did RemoveNotificationFromList leave the notification gone (ok, or nothing to delete)?"""
    try:
        return es10.remove_status(data) in (0, 1)
    except GatewayError:
        return False


def _thaw(value: Any) -> Any:
    """Blobs come back with tuples for lists; the session mutates them, so make them lists."""
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _post(s: DeviceSession, rid: str, rec: dict[str, Any]) -> A.Action:
    if rec["target"] == "es9":
        return A.PostEs9(s.eid, rid, rec["server"], rec["function"], rec["body"])
    if rec["target"] == "es11":
        return A.PostEs11(s.eid, rid, rec["server"], rec["function"], rec["body"])
    fqdn = next((str(e.get("eimFqdn", "")) for e in (s.eims or []) if e.get("eimId") == rec["server"]), "")
    return A.PostEsipa(s.eid, rid, rec["server"], fqdn, rec["function"], rec["body"])


class _Step:
    """The processing of one event for one session (holds the event's time and output list)."""

    def __init__(self, s: DeviceSession, config: EngineConfig, rand: Callable[[], float], now: float,
                 out: list[A.Action]) -> None:
        self.s, self.config, self.rand, self.now, self.out = s, config, rand, now, out
        self.last_request: dict[str, Any] | None = None

    def env(self) -> Env:
        return Env(self.s.eid, self.now, self.config, tuple(self.s.eims or ()), self.s.imei)

    def audit(self, operation: str, result: str, detail: str = "", iccid: bytes | None = None,
              origin: str = "engine") -> None:
        self.out.append(A.Audit(self.s.eid, iccid, operation, origin, result, detail))

    # -- device ----------------------------------------------------------------------------

    def on_hello(self, status: DeviceStatus) -> None:
        s = self.s
        if s.uplink_pending:
            self.audit("deviceLink", "superseded", "a new uplink replaced the pending one")
        if s.in_flight is not None:
            self.audit("deviceLink", "lost", f"batch {s.in_flight['batch_id']} not answered")
            self.apply_results((), "lost")
        s.uplink_pending = True
        due = self.config.notification_check_s
        if s.retrieved_at is None or (due is not None and self.now - s.retrieved_at >= due):
            s.want_retrieve = True       # notifications left by anything else (first contact, daily)
        changed = s.plmn is not None and status.plmn is not None and status.plmn != s.plmn
        self.note_status(status)
        if s.eims is None:
            if self.config.eims:
                s.eims = [e.summary() for e in self.config.eims]
                s.want_discover = True
            else:
                self.start_internal(Discovery())
        for eim in s.eims or []:
            self.poll(str(eim["eimId"]), changed)

    def note_status(self, status: DeviceStatus | None) -> None:
        if status is None:
            return
        s = self.s
        s.plmn = status.plmn if status.plmn is not None else s.plmn
        s.imei = status.imei if status.imei is not None else s.imei
        s.max_batch_bytes = status.max_batch_bytes

    def on_result(self, event: DeviceResult) -> None:
        s = self.s
        self.note_status(event.status)
        if s.in_flight is None or event.result.batch_id != s.in_flight["batch_id"]:
            self.out.append(A.ReplyError(s.eid, int(ErrorCode.UNEXPECTED),
                                         f"no batch {event.result.batch_id} in flight"))
            return
        s.uplink_pending = True
        self.apply_results(tuple(Reply(r.data, r.sw) for r in event.result.results), event.result.stopped)

    def apply_results(self, replies: tuple[Reply, ...], stopped: str | None) -> None:
        s = self.s
        flight = s.in_flight
        assert flight is not None
        s.in_flight = None
        index = 0
        slices: dict[str, tuple[tuple[Reply, ...], int]] = {}
        ends: dict[str, int] = {}
        for owner, count in flight["owners"]:
            slices[owner] = (replies[index:index + count], count)
            index += count
            ends[owner] = index
        # the delivery track first: what it learnt (the eIM configuration, new notifications)
        # is then known to the procedure reacting to the same batch
        if NOTIF in slices:
            self.notif_results(flight["notif"], slices[NOTIF][0])
        if PROC in slices:
            got, count = slices[PROC]
            if not replies and stopped == STOPPED_CARD and flight.get("proc_part") and not flight.get("resent"):
                # the agent could not reach the ISD-R (channel, SELECT): nothing ran; send it again once
                name_req_seg, refresh = flight["proc_part"]
                again = Part(PROC, tuple(Call(n, r, g) for n, r, g in name_req_seg), refresh)
                s.work = again if s.work is None else Part(PROC, again.calls + s.work.calls, s.work.refresh)
                s.resend_once = True
                self.audit("deviceLink", "resend", "the eUICC was not reached; batch sent again")
                return
            s.replies.extend(got)
            # the batch stopped inside (or right after the last call of) the procedure's part
            stopped_here = stopped is not None and len(replies) <= ends[PROC]
            if len(got) < count or s.work is None or stopped_here:
                answer = DeviceAnswer(tuple(s.replies), stopped if stopped_here or len(got) < count else None)
                s.replies, s.work = [], None
                self.feed(DEVICE, answer)
        self.release_held()
        if PROC in slices:
            if s.cancel_requested and s.proc is not None:
                s.cancel_requested = False
                self.feed(FAILED, Failure("operator", "OperatorCancel", "cancelled by the operator"))

    def notif_results(self, items: list[list[Any]], got: tuple[Reply, ...]) -> None:
        s = self.s
        removing: set[str] = set()
        for i, item in enumerate(items):
            reply = got[i] if i < len(got) else None
            ok = reply is not None and reply.sw == 0x9000
            if item[0] == "remove":
                d = s.deliveries.get(item[1])
                if d is None:
                    continue
                removing.add(item[1])
                if ok and reply is not None and _removed(reply.data):
                    seq = int(item[2])
                    d["remove_seqs"] = [q for q in d["remove_seqs"] if q != seq]
                    self.audit("removeNotification", "ok", f"seq {seq} ({d['event']})", d.get("iccid"))
            elif item[0] == "retrieve":
                if ok and reply is not None:
                    s.want_retrieve = False
                    s.retrieved_at = self.now
                    self.retrieved(reply.data)
            elif item[0] == "discover":
                if ok and reply is not None:
                    s.want_discover = False
                    try:
                        found = [eim_summary(c) for c in es10.eim_configurations(reply.data)]
                    except GatewayError as exc:
                        self.audit("eimDiscovery", "failed", str(exc))
                        continue
                    self.discovered(found, may_add=True)
        for key in removing:
            d = s.deliveries[key]
            if d["remove_seqs"]:
                N.move(d, "not_run", N.ACKED)
            else:
                N.move(d, "removed", N.DONE)
                del s.deliveries[key]

    def retrieved(self, data: bytes) -> None:
        s = self.s
        try:
            notes, _ = es10.retrieved_list(data)
        except GatewayError as exc:
            self.audit("retrieveNotifications", "failed", str(exc))
            return
        known = {q for d in s.deliveries.values() for q in d["remove_seqs"]}
        hold = self.config.epr_and_notifications and isinstance(s.proc, EimPackage)
        for note in notes:
            if note.seq_number in known:
                continue
            d = N.notification_delivery(note, tuple(s.eims or ()))
            s.deliveries[d["key"]] = d
            if hold:
                d["held"] = True    # may travel with the package's result (ePRAndNotifications)
            else:
                self.send_delivery(d)

    def release_held(self) -> None:
        for d in self.s.deliveries.values():
            if d.pop("held", False) and d["state"] == N.PENDING:
                self.send_delivery(d)

    def discovered(self, eims: list[dict[str, Any]], *, may_add: bool = False) -> None:
        """The eIMs the eUICC holds. An eUICC without any gets the configured initial eIM
        (the Discovery procedure adds it) unless this is what that procedure found."""
        s = self.s
        s.eims_read = True
        if not eims and may_add and self.config.initial_eim is not None:
            self.start_internal(Discovery())
            return
        before = {e["eimId"] for e in s.eims or []}
        s.eims = eims
        for eim in eims:
            if eim["eimId"] not in before:
                self.poll(eim["eimId"], False)

    # -- packages ----------------------------------------------------------------------------

    def on_package(self, eim_id: str, raw: bytes, via: str, key: str) -> None:
        s = self.s
        try:
            kind, package = P.classify(raw)
            seqs = P.acknowledged_seqs(package) if kind == P.ACKNOWLEDGEMENTS else []
        except DecodeError as exc:
            self.audit("eimPackage", "refused", f"malformed package: {exc}", origin=eim_id)
            if key:
                self.out.append(A.MarkInbox(s.eid, key, "refused"))
            return
        if kind == P.ACKNOWLEDGEMENTS:
            self.acknowledged(seqs)
            if key:
                self.out.append(A.MarkInbox(s.eid, key, "done"))
            return
        pkg_key = P.package_key(eim_id, package)
        queued = {q["key"] for q in s.queue} | ({s.pkg["key"]} if s.pkg else set())
        if pkg_key in s.done_keys or pkg_key in queued:
            self.audit("eimPackage", "duplicate", pkg_key, origin=eim_id)
            self.out.append(A.MarkInbox(s.eid, key or pkg_key, "duplicate"))
            return
        s.queue.append({"key": pkg_key, "inbox_key": key or pkg_key, "eim_id": eim_id, "kind": kind,
                        "raw": package, "via": via})
        self.audit("eimPackage", "queued", f"{kind} {pkg_key} via {via}", origin=eim_id)

    def acknowledged(self, seqs: list[int]) -> None:
        """EimAcknowledgements (SGP.32 §2.11.4): the eIM has these; remove them from the eUICC."""
        s = self.s
        for seq in seqs:
            d = next((d for d in s.deliveries.values() if seq in d["remove_seqs"]), None)
            if d is None:
                d = {"key": f"a{seq}", "kind": "ack", "state": N.ACKED, "remove_seqs": [seq], "event": "ack",
                     "iccid": None, "attempt": 0, "inbox_key": None}
                s.deliveries[d["key"]] = d
            elif d["state"] in (N.SENDING, N.WAITING, N.FAILED, N.PENDING):
                N.move(d, "eim_ack", N.ACKED)
                self.cancel_request_of(d["key"])

    def cancel_request_of(self, key: str) -> None:
        s = self.s
        for rid in [r for r, rec in s.requests.items() if rec["owner"] == DELIVERY and rec["tag"] == key]:
            del s.requests[rid]
        name = RETRY_PREFIX + DELIVERY + ":" + key
        if s.retries.pop(name, None) is not None:
            s.timers.pop(name, None)
            self.out.append(A.CancelTimer(s.eid, name))

    def start_internal(self, proc: Procedure) -> None:
        s = self.s
        if s.proc is not None and s.proc.KIND == proc.KIND:
            return
        s.queue.insert(0, {"key": "", "inbox_key": "", "eim_id": "", "kind": proc.KIND, "raw": b"",
                           "via": "internal"})

    def start_next(self) -> None:
        s = self.s
        while s.proc is None and s.queue:
            item = s.queue.pop(0)
            proc = PROCEDURES[item["kind"]]()
            proc.ctx.update(request=item["raw"], eim_id=item["eim_id"])
            s.proc, s.pkg = proc, (item if item["key"] else None)
            if item["key"]:
                self.out.append(A.MarkInbox(s.eid, item["inbox_key"], "running"))
            self.feed(START, None)

    # -- procedure plumbing --------------------------------------------------------------------

    def feed(self, kind: str, payload: object) -> None:
        s = self.s
        proc = s.proc
        assert proc is not None
        outputs = proc.feed(self.env(), kind, payload)
        self.run_outputs(outputs)

    def run_outputs(self, outputs: list[Output]) -> None:
        s = self.s
        for o in outputs:
            if isinstance(o, Note):
                self.audit(o.operation, o.result, o.detail, o.iccid,
                           origin=s.pkg["eim_id"] if s.pkg else "engine")
            elif isinstance(o, Request):
                self.send(PROC, o, self.config.request_backoff.max_attempts)
            elif isinstance(o, DeviceWork):
                if o.calls:
                    s.work, s.replies = Part(PROC, o.calls, o.refresh), []
                else:
                    self.feed(DEVICE, DeviceAnswer(()))
            elif isinstance(o, Finish):
                self.finished(o)
            elif isinstance(o, Retry):
                rec = self.last_request
                assert rec is not None and rec["tag"] == o.tag
                if not self.retry(rec, True, o.error_class, o.detail, None):
                    self.feed(FAILED, Failure(o.tag, o.error_class, o.detail, True))

    def finished(self, finish: Finish) -> None:
        s = self.s
        proc, pkg = s.proc, s.pkg
        assert proc is not None
        s.proc, s.pkg, s.work, s.replies = None, None, None, []
        self.drop_requests(PROC)
        if isinstance(proc, Discovery):
            if finish.outcome == "ok":
                self.discovered(list(finish.result["eims"]))
            return
        if isinstance(proc, Download):
            pir = finish.result.get("pir")
            if isinstance(pir, bytes):
                d = N.notification_delivery(es10.notification_of(pir), tuple(s.eims or ()))
                s.deliveries[d["key"]] = d
                self.send_delivery(d)
            s.want_retrieve = True
        if isinstance(proc, EimPackage):
            s.want_retrieve = True
        if pkg is None:
            return
        s.done_keys = (s.done_keys + [pkg["key"]])[-self.config.recent_packages:]
        body, seqs = self.result_message(proc, finish)
        d = N.result_delivery("r" + pkg["key"], pkg["eim_id"], body, seqs, pkg["inbox_key"])
        s.deliveries[d["key"]] = d
        self.out.append(A.MarkInbox(s.eid, pkg["inbox_key"], "done"))
        self.send_delivery(d)

    def result_message(self, proc: Procedure, finish: Finish) -> tuple[bytes, list[int]]:
        """The ProvideEimPackageResult; notifications held for ePRAndNotifications go with it."""
        s = self.s
        held: list[dict[str, Any]] = []
        if isinstance(proc, EimPackage) and isinstance(finish.result.get("epr"), bytes):
            held = [d for d in s.deliveries.values() if d.get("held") and d["state"] == N.PENDING]
            for d in held:
                del s.deliveries[d["key"]]
        return P.result_message(s.eid, proc, finish, [(d["raw"], q) for d in held for q in d["remove_seqs"]])

    # -- backhaul ----------------------------------------------------------------------------

    def send(self, owner: str, request: Request, max_attempts: int | None, attempt: int = 0) -> None:
        s = self.s
        s.counter += 1
        rid = str(s.counter)
        rec = {"owner": owner, "tag": request.tag, "target": request.target, "server": request.server,
               "function": request.function, "body": request.body, "attempt": attempt,
               "max_attempts": max_attempts}
        s.requests[rid] = rec
        self.out.append(_post(s, rid, rec))

    def send_delivery(self, d: dict[str, Any]) -> None:
        N.move(d, "send", N.SENDING)
        self.send(DELIVERY, N.request_of(d), self.config.delivery_backoff.max_attempts, int(d["attempt"]))

    def poll(self, eim_id: str, state_changed: bool) -> None:
        s = self.s
        if any(r["owner"] == POLL and r["server"] == eim_id for r in s.requests.values()):
            return
        body = P.get_eim_package_request(s.eid, s.plmn, state_changed)
        self.send(POLL, Request("poll", "esipa", eim_id, "GetEimPackage", body),
                  self.config.poll_backoff.max_attempts)

    def drop_requests(self, owner: str) -> None:
        s = self.s
        for rid in [r for r, rec in s.requests.items() if rec["owner"] == owner]:
            del s.requests[rid]
        for name in [n for n, rec in s.retries.items() if rec["owner"] == owner]:
            del s.retries[name]
            s.timers.pop(name, None)
            self.out.append(A.CancelTimer(s.eid, name))

    def on_answer(self, rid: str, body: bytes) -> None:
        rec = self.s.requests.pop(rid, None)
        if rec is None:
            self.audit("backhaul", "ignored", f"answer to unknown request {rid}")
            return
        owner = rec["owner"]
        if owner == PROC and self.s.proc is not None:
            self.last_request = rec
            self.feed(ANSWER, Answer(rec["tag"], body))
        elif owner == POLL:
            self.polled(rec["server"], body)
        elif owner == DELIVERY:
            self.delivered(rec["tag"], body)

    def schedule_poll(self) -> None:
        s = self.s
        interval = self.config.poll_interval_s
        if interval is not None and POLL_TIMER not in s.timers:
            s.timers[POLL_TIMER] = self.now + interval
            self.out.append(A.StartTimer(s.eid, POLL_TIMER, self.now + interval))

    def polled(self, eim_id: str, body: bytes) -> None:
        self.schedule_poll()
        try:
            kind, value = esipa.decode_response("GetEimPackage", body)
        except GatewayError as exc:
            self.audit("getEimPackage", "failed", str(exc), origin=eim_id)
            return
        if kind == "eimPackageError":
            return
        self.on_package(eim_id, body, "poll", "")

    def delivered(self, key: str, body: bytes) -> None:
        s = self.s
        d = s.deliveries.get(key)
        if d is None:
            return
        acked_seqs: list[int] = []
        if d["kind"] == N.RESULT:
            try:
                accepted, acked_seqs = N.acknowledged_seqs(body)
            except GatewayError as exc:
                accepted = False
                self.audit("provideEimPackageResult", "failed", str(exc), origin=d["server"])
            if not accepted:
                N.move(d, "fail", N.FAILED)
                self.audit("provideEimPackageResult", "refused", "", origin=d["server"])
                return
        else:
            try:
                if d["target"] == "es9" and body:
                    from gateway.spec import es9p
                    es9p.parse_header_only(body, es9p.HANDLE_NOTIFICATION)
            except GatewayError as exc:
                self.delivery_failed(d, type(exc).__name__, str(exc), getattr(exc, "retryable", False), None)
                return
        N.move(d, "ack", N.ACKED if d["remove_seqs"] else N.DONE)
        self.audit("deliver" + d["kind"].capitalize(), "ok", f"{d['event']} to {d['server']}", d.get("iccid"))
        if d["state"] == N.DONE:
            del s.deliveries[key]
        self.acknowledged(acked_seqs)
        if d["kind"] == N.RESULT and s.uplink_pending:
            self.poll(d["server"], False)   # the eIM may have the next package ready

    def on_failed(self, event: BackhaulFailed) -> None:
        s = self.s
        rec = s.requests.pop(event.request_id, None)
        if rec is None:
            return
        if self.retry(rec, event.retryable, event.error_class, event.detail, event.retry_after_s):
            return
        failure = Failure(rec["tag"], event.error_class, event.detail, event.retryable, event.reason_code)
        if rec["owner"] == PROC and s.proc is not None:
            self.feed(FAILED, failure)
        elif rec["owner"] == DELIVERY and rec["tag"] in s.deliveries:
            self.delivery_failed(s.deliveries[rec["tag"]], event.error_class, event.detail, False, None)
        elif rec["owner"] == POLL:
            self.audit("getEimPackage", "failed", f"{event.error_class}: {event.detail}", origin=rec["server"])
            self.schedule_poll()

    def retry(self, rec: dict[str, Any], retryable: bool, error_class: str, detail: str,
              retry_after_s: float | None) -> bool:
        """Schedule `rec` again if its error allows and attempts remain (gateway/core/retry.py)."""
        s = self.s
        attempt = int(rec["attempt"])
        limit = rec["max_attempts"]
        if not retryable or (limit is not None and attempt >= limit):
            return False
        policy = {PROC: self.config.request_backoff, POLL: self.config.poll_backoff}.get(
            rec["owner"], self.config.delivery_backoff)
        wait = policy.delay(attempt, self.rand)
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, policy.cap_s))
        name = f"{RETRY_PREFIX}{rec['owner']}:{rec['tag']}"
        rec["attempt"] = attempt + 1
        s.retries[name] = rec
        s.timers[name] = self.now + wait
        self.out.append(A.StartTimer(s.eid, name, self.now + wait))
        self.audit("backhaul", "retry", f"{rec['function']} to {rec['server']}: {error_class} "
                                        f"{detail} (attempt {attempt + 1} in {wait:.1f} s)")
        if rec["owner"] == DELIVERY and rec["tag"] in s.deliveries:
            d = s.deliveries[rec["tag"]]
            d["attempt"] = attempt + 1
            N.move(d, "retry", N.WAITING)
        return True

    def delivery_failed(self, d: dict[str, Any], error_class: str, detail: str, retryable: bool,
                        _: object) -> None:
        if d["state"] == N.SENDING:
            N.move(d, "fail", N.FAILED)
        self.audit("deliver" + d["kind"].capitalize(), "failed", f"{error_class}: {detail}", d.get("iccid"))

    def on_timer(self, name: str) -> None:
        s = self.s
        s.timers.pop(name, None)
        if name == POLL_TIMER:
            for eim in s.eims or []:
                self.poll(str(eim["eimId"]), False)
            return
        rec = s.retries.pop(name, None)
        if rec is None:
            return
        if rec["owner"] == DELIVERY:
            d = s.deliveries.get(rec["tag"])
            if d is None or d["state"] != N.WAITING:
                return
            N.move(d, "send", N.SENDING)
        elif rec["owner"] == PROC and s.proc is None:
            return
        request = Request(rec["tag"], rec["target"], rec["server"], rec["function"], rec["body"])
        self.send(rec["owner"], request, rec["max_attempts"], int(rec["attempt"]))

    def on_operator(self, kind: str, args: dict[str, str]) -> None:
        s = self.s
        self.audit("operator", kind, ",".join(f"{k}={v}" for k, v in sorted(args.items())), origin="operator")
        if kind == OPERATOR_RETRY:
            for d in s.deliveries.values():
                if d["state"] == N.FAILED:
                    d["attempt"] = 0
                    self.send_delivery(d)
        elif kind == OPERATOR_REREAD_EIM:
            s.want_discover = True
        elif kind == OPERATOR_POLL:
            for eim in s.eims or []:
                self.poll(str(eim["eimId"]), False)
        elif kind == OPERATOR_CANCEL and s.proc is not None:
            if s.in_flight is not None and any(o == PROC for o, _ in s.in_flight["owners"]):
                s.cancel_requested = True   # its batch is on the device: cancel when it answers
            else:
                s.work = None
                self.drop_requests(PROC)
                self.feed(FAILED, Failure("operator", "OperatorCancel", "cancelled by the operator"))

    # -- answering the device ------------------------------------------------------------------

    def blocked(self) -> bool:
        return bool(self.s.requests)

    def notif_part(self) -> tuple[Part | None, list[list[Any]]]:
        s = self.s
        calls: list[Call] = []
        items: list[list[Any]] = []
        for key, d in s.deliveries.items():
            if d["state"] == N.ACKED:
                for seq, call in N.removal_calls(d):
                    calls.append(call)
                    items.append(["remove", key, seq])
        if s.want_retrieve:
            calls.append(Call("RetrieveNotificationsList", es10.retrieve_notifications_list()))
            items.append(["retrieve"])
        if s.want_discover:
            calls.append(Call("GetEimConfigurationData", es10.get_eim_configuration_data()))
            items.append(["discover"])
        return (Part(NOTIF, tuple(calls)) if calls else None), items

    def settle(self) -> None:
        s = self.s
        self.start_next()
        if not s.uplink_pending or self.blocked():
            return
        parts: list[Part] = []
        if s.work is not None:
            parts.append(s.work)
        notif, items = self.notif_part()
        if notif is not None:
            parts.append(notif)
        if not parts:
            self.out.append(A.ReplyIdle(s.eid, self.idle_for()))
            s.uplink_pending = False
            return
        s.counter += 1
        planned = plan(parts, s.counter & 0xFFFFFFFF, segment_size=self.config.segment_size,
                       max_batch_bytes=s.max_batch_bytes or self.config.max_batch_bytes)
        owners = [[o, n] for o, n in planned.owners]
        if s.work is not None:
            rest = next((p for p in planned.leftover if p.owner == PROC), None)
            s.work = rest
        sent_notif = any(o == NOTIF for o, _ in planned.owners)
        if sent_notif:
            for item in items:
                if item[0] == "remove" and s.deliveries[item[1]]["state"] == N.ACKED:
                    N.move(s.deliveries[item[1]], "remove", N.REMOVING)
        proc_count = next((n for o, n in planned.owners if o == PROC), 0)
        proc_part = None
        if proc_count and parts[0].owner == PROC:
            sent = parts[0].calls[:proc_count]
            proc_part = [[[c.name, c.request, c.segment] for c in sent],
                         parts[0].refresh if proc_count == len(parts[0].calls) else None]
        batch = planned.batch
        if s.proc is not None and proc_count and not s.work:
            hint = s.proc.next_downlink_hint(self.config)
            if hint is not None:
                batch = dataclasses.replace(batch, next_size_hint=hint)
        s.in_flight = {"batch_id": planned.batch.batch_id, "owners": owners,
                       "notif": items if sent_notif else [], "proc_part": proc_part,
                       "resent": s.resend_once}
        s.resend_once = False
        s.uplink_pending = False
        self.out.append(A.SendBatch(s.eid, batch))

    def idle_for(self) -> int:
        due = [at - self.now for at in self.s.timers.values()]
        wait = min([float(self.config.idle_retry_s)] + [d for d in due if d > 0])
        return max(1, math.ceil(wait))
