"""The package side of a turn: eIM packages queued, run one at a time, results built.

Theory of operation. A package (polled, pushed, or an internal discovery) is classified and
keyed (gateway.core.packages); a key already run or queued is a duplicate: never run again,
audited once per key however often the eIM offers it. One procedure runs at a time: `start_next` starts the first queued, `feed`
hands it its inputs and `run_outputs` turns its outputs into device work, backhaul requests
(retried by the backhaul side), audit records and, at the end, the result delivery for the
eIM (exactly one per package) and the notification deliveries the procedure caused.
EimAcknowledgements mark the deliveries they name as acknowledged so their removal folds
into the next batch.
"""

from __future__ import annotations

from typing import Any

from gateway.core import actions as A
from gateway.core import es10
from gateway.core import packages as P
from gateway.core.events import OPERATOR_CANCEL, OPERATOR_POLL, OPERATOR_REREAD_EIM, OPERATOR_RETRY
from gateway.core.planner import Part
from gateway.core.procedures import notifications as N
from gateway.core.procedures.base import (
    DEVICE,
    FAILED,
    START,
    DeviceAnswer,
    DeviceWork,
    Failure,
    Finish,
    Note,
    Output,
    Procedure,
    Request,
    Retry,
)
from gateway.core.procedures.discovery import Discovery
from gateway.core.procedures.download import CANCEL_RELAY_KEY, Download
from gateway.core.procedures.eim_package import EimPackage
from gateway.core.turn import DELIVERY, PROC, PROCEDURES, RETRY_PREFIX, Turn
from gateway.errors import DecodeError


class PackageSide(Turn):
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
            self.acknowledged(seqs, eim_id)
            if key:
                self.out.append(A.MarkInbox(s.eid, key, "done"))
            return
        pkg_key = P.package_key(eim_id, package)
        waiting = s.queue + ([s.pkg] if s.pkg else [])
        if pkg_key in s.done_keys or pkg_key in {q["key"] for q in waiting}:
            self.duplicate(pkg_key, key, eim_id, {q["inbox_key"] for q in waiting})
            return
        s.queue.append({"key": pkg_key, "inbox_key": key or pkg_key, "eim_id": eim_id, "kind": kind,
                        "raw": package, "via": via})
        self.audit("eimPackage", "queued", f"{kind} {pkg_key} via {via}", origin=eim_id)

    def duplicate(self, pkg_key: str, inbox_key: str, eim_id: str, inbox_keys_waiting: set[str]) -> None:
        """A package already run or queued, offered again. An eIM whose result did not get
        through (refused, or still being delivered) hands the same package out on every poll:
        that is audited once per package key, and it never runs again nor gets another result.
        Only an inbox entry of its own is marked: a re-poll has none, and the entry a queued
        or running package shares its key with is its original's."""
        s = self.s
        if pkg_key not in s.duplicates_noted:
            s.duplicates_noted = (s.duplicates_noted + [pkg_key])[-self.config.recent_packages:]
            self.audit("eimPackage", "duplicate", pkg_key, origin=eim_id)
        if inbox_key and inbox_key not in inbox_keys_waiting:
            self.out.append(A.MarkInbox(s.eid, inbox_key, "duplicate"))

    def acknowledged(self, seqs: list[int], eim_id: str) -> None:
        """EimAcknowledgements (SGP.32 §2.11.4): eIM `eim_id` has these; remove them from the eUICC.

        A delivery still owed to another server (a direct download's installation result,
        which the eIM also got in its ProfileDownloadTriggerResult, is addressed to the SM-DP+)
        is not cut short: it is removed once its own server acknowledges it."""
        s = self.s
        for seq in seqs:
            d = next((d for d in s.deliveries.values() if seq in d["remove_seqs"]), None)
            if d is not None and d["kind"] == N.NOTIFICATION and (d["target"], d["server"]) != ("esipa", eim_id):
                continue
            if d is None:
                d = {"key": f"a{seq}", "kind": "ack", "state": N.ACKED, "remove_seqs": [seq], "event": "ack",
                     "iccid": None, "attempt": 0, "inbox_key": None}
                s.deliveries[d["key"]] = d
            elif d["state"] in (N.SENDING, N.WAITING, N.FAILED, N.PENDING):
                N.move(d, "eim_ack", N.ACKED)
                self.cancel_request_of(d["key"])
                # delivered by whatever path: recorded as its own delivery's ack would be
                self.audit("deliver" + d["kind"].capitalize(), "ok", f"{d['event']} acknowledged by {eim_id}",
                           d.get("iccid"), event=A.profile_event(d["event"]),
                           seq=seq if d["kind"] == N.NOTIFICATION else None)

    def cancel_request_of(self, key: str) -> None:
        s = self.s
        for rid in [r for r, rec in s.requests.items() if rec["owner"] == DELIVERY and rec["tag"] == key]:
            self.let_go(rid, A.STALE_ACKNOWLEDGED)
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
            if s.queue[0]["via"] != "internal" and not s.eims_read and self.config.initial_eim is not None:
                # polled before the eUICC was read: it may still need the initial eIM (and its
                # key, to verify the package), which the read decides
                return
            if self.hold and s.queue[0]["via"] != "internal":
                return      # its result would add to the backlog: it waits in the queue (and inbox)
            item = s.queue.pop(0)
            proc = PROCEDURES[item["kind"]]()
            proc.ctx.update(request=item["raw"], eim_id=item["eim_id"])
            s.proc, s.pkg = proc, (item if item["key"] else None)
            if item["key"]:
                self.out.append(A.MarkInbox(s.eid, item["inbox_key"], "running"))
            self.feed(START, None)

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
        self.drop_requests(PROC, A.STALE_PROCEDURE_ENDED)
        if isinstance(proc, Discovery):
            if finish.outcome == "ok":
                self.discovered(list(finish.result["eims"]))
            return
        if isinstance(proc, Download):
            pir = finish.result.get("pir")
            if isinstance(pir, bytes):
                note = es10.notification_of(pir)
                if not any(note.seq_number in d["remove_seqs"] for d in s.deliveries.values()):
                    d = N.notification_delivery(note, tuple(s.eims or ()))
                    s.deliveries[d["key"]] = d
                    self.send_delivery(d)
            relay = finish.result.get(CANCEL_RELAY_KEY)
            if isinstance(relay, Request):
                d = N.cancellation_delivery(bytes(finish.result["transaction_id"]), relay)
                if d["key"] not in s.deliveries:
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
            # args "cause": a state change the eIM did not order (SGP.32 stateChangeCause); it is
            # reported until a poll gets through
            s.state_change_cause = args.get("cause") or s.state_change_cause
            for eim in s.eims or []:
                self.poll(str(eim["eimId"]), False, s.state_change_cause)
        elif kind == OPERATOR_CANCEL and s.proc is not None:
            if s.in_flight is not None and any(o == PROC for o, _ in s.in_flight["owners"]):
                s.cancel_requested = True   # its batch is on the device: cancel when it answers
            else:
                s.work = None
                self.drop_requests(PROC, A.STALE_CANCELLED)
                self.feed(FAILED, Failure("operator", "OperatorCancel", "cancelled by the operator"))
