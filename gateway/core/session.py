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

This module holds the session's state and its persistence; what one event does to it is a
*turn* (gateway.core.turn, split into device_side, package_side and backhaul_side).
Everything is plain data (`to_blob`/`from_blob`, CBOR): after a restart, `resume` re-sends
the requests that were in flight and re-arms the timers; a Result for the batch that was in
flight is still accepted, and a repeated Result is answered as the first one was
(gateway.core.device_side); a Hello while a batch is in flight means the device lost it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.core import actions as A
from gateway.core import serial
from gateway.core.backhaul_side import BackhaulSide
from gateway.core.config import EngineConfig
from gateway.core.device_side import DeviceSide
from gateway.core.events import (
    BackhaulAnswered,
    BackhaulFailed,
    DeviceHello,
    DeviceResult,
    EimPackageReceived,
    Event,
    OperatorAction,
    StateReportPending,
    TimerFired,
)
from gateway.core.package_side import PackageSide
from gateway.core.planner import Part
from gateway.core.procedures.base import Call, Procedure, Reply
from gateway.core.procedures import notifications as N
from gateway.core.turn import DELIVERY, PROCEDURES, RETRY_PREFIX, post_action
from gateway.errors import DecodeError


class DeviceSession:
    def __init__(self, eid: bytes) -> None:
        self.eid = eid
        self.queue: list[dict[str, Any]] = []
        self.proc: Procedure | None = None
        self.pkg: dict[str, Any] | None = None          # the package the procedure runs (None: internal)
        self.work: Part | None = None                   # the procedure's calls not yet sent
        self.replies: list[Reply] = []                  # replies gathered over split batches
        self.deliveries: dict[str, dict[str, Any]] = {}
        self.named: tuple[A.Waiting, ...] | None = None   # the set last named in BackhaulWaiting (not in the blob)
        self.requests: dict[str, dict[str, Any]] = {}   # request id -> request record
        self.let_go: dict[str, str] = {}                # request id let go of in flight -> why
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
        self.duplicates_noted: list[str] = []           # package keys whose re-offer was audited
        self.plmn: str | None = None
        self.imei: str | None = None
        self.max_batch_bytes: int | None = None
        self.buffer_size: int | None = None             # the agent's DeviceStatus.buffer_size
        self.answering: dict[str, Any] | None = None    # the Result whose downlink is being decided
        self.last_reply: dict[str, Any] | None = None   # the last Result answered, and its downlink
        self.timers: dict[str, float] = {}
        self.retrieved_at: float | None = None
        self.state_change_cause: str | None = None      # to report with the next poll
        self.policy_report_pending = False              # the policies report the PLMN change (StateReportPending)
        self.policy_report_answered = False             # ... and the eIM has it: the next PLMN named is reported

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
            "retrieved_at": self.retrieved_at, "state_change_cause": self.state_change_cause,
            "policy_report_pending": self.policy_report_pending,
            "policy_report_answered": self.policy_report_answered, "buffer_size": self.buffer_size,
            "answering": self.answering, "last_reply": self.last_reply,
            "duplicates_noted": self.duplicates_noted, "let_go": self.let_go,
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
        s.state_change_cause = d["state_change_cause"]
        s.policy_report_pending = bool(d.get("policy_report_pending", False))   # absent in older blobs
        s.policy_report_answered = bool(d.get("policy_report_answered", False))
        s.buffer_size = d.get("buffer_size")
        s.answering = _thaw(d["answering"]) if d.get("answering") is not None else None
        s.last_reply = _thaw(d["last_reply"]) if d.get("last_reply") is not None else None
        s.duplicates_noted = [str(k) for k in d.get("duplicates_noted", ())]
        s.let_go = {str(k): str(v) for k, v in d.get("let_go", {}).items()}
        return s

    # -- entry point -------------------------------------------------------------------------

    def waiting(self) -> tuple[A.Waiting, ...]:
        """The deliveries waiting for the backhaul (not yet acknowledged by their server; a
        delivery the server refused for good, FAILED, waits for an operator, not the backhaul)."""
        return tuple(
            A.Waiting(key, d["kind"], d["server"], d["function"], len(d["body"]), d["state"], int(d["attempt"]),
                      self.timers.get(f"{RETRY_PREFIX}{DELIVERY}:{key}"))
            for key, d in self.deliveries.items() if d["state"] in N.WAITING_FOR_BACKHAUL)

    def handle(self, event: Event, config: EngineConfig, rand: Callable[[], float], *,
               hold: bool = False) -> list[A.Action]:
        """One event. `hold`: take no new work that would add to what waits for the backhaul
        (see Turn.hold)."""
        out: list[A.Action] = []
        ctx = _Turn(self, config, rand, event.now, out, hold)
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
        elif isinstance(event, StateReportPending):
            ctx.on_state_report(event.pending, event.answered)
        ctx.settle()
        store = [a for a in out if isinstance(a, A.STORE_ACTIONS)]
        rest = [a for a in out if not isinstance(a, A.STORE_ACTIONS)]
        now_waiting = self.waiting()
        if now_waiting != self.named:
            # a new or restored session names its set once with no `previous`: whatever the store
            # held for this EID before (a session dropped after a failed step, an older schema) is replaced
            store.append(A.BackhaulWaiting(self.eid, now_waiting, self.named))
            self.named = now_waiting
        return store + [A.SaveSession(self.eid, self.state_name, self.to_blob())] + rest

    def resume(self, now: float) -> list[A.Action]:
        """After a restart: send again what was in flight, arm the timers again."""
        self.named = self.waiting()
        out: list[A.Action] = [A.BackhaulWaiting(self.eid, self.named)]
        self.uplink_pending = False
        for rid, rec in self.requests.items():
            out.append(post_action(self, rid, rec))
        for name, at in self.timers.items():
            out.append(A.StartTimer(self.eid, name, at))
        return out


def _thaw(value: Any) -> Any:
    """Blobs come back with tuples for lists; the session mutates them, so make them lists."""
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


class _Turn(DeviceSide, PackageSide, BackhaulSide):
    """A turn with all three sides (see gateway.core.turn)."""
