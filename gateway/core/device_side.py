"""The device side of a turn: uplinks in, results shared out, the next downlink planned.

Theory of operation. A Hello or a Result makes the device's uplink *pending*. A Result's
replies are cut along the batch's owners: the delivery track's part first (removals done,
notifications retrieved, the eIM configuration read), then the procedure's, which gets its
replies once its whole part has come back (a part split over exchanges by the device's
byte budget is gathered first) or as soon as the batch stopped inside it. A Hello while a
batch is in flight means the device lost that batch: its owners are told so. `settle`
answers the pending uplink once nothing the next batch depends on is outstanding on the
backhaul: one batch folding the procedure's calls and the delivery track's (planner), or
Idle until the next timer. A slow backhaul does not hold a device beyond `uplink_wait_s`:
the "uplink" timer answers it with what is ready, and what arrives later waits for its next
wake.

Exchanges are idempotent. An agent that could not deliver a Result, or did not get its
downlink, sends the same Result again (docs/device-link.md §1): its replies are applied once
only. While the downlink that answers it is being decided (`answering`, kept across a
restart), the repeat just becomes the pending uplink; once it was decided (`last_reply`: the
encoded downlink, in the session blob), the repeat gets that same batch again; a repeat whose
first answer was Idle is a wake like a Hello (that Idle may be what was lost, and new work
may have come since: a device must not sleep a cycle for a lost Idle), and whatever answers
it then answers a further copy. A Hello or the Result of the next batch ends that window: a
Result older than that is refused.

Device limits: each step must fit the agent's `buffer_size` and each batch its
`max_batch_bytes` (planner): the device's own report, else the operator's value for it
(EngineConfig.max_batch_bytes_of); STORE DATA blocks are cut at the operator's segment size
for the device (EngineConfig.segment_size_of). A call of the procedure that cannot fit at all fails the
procedure (its FAILURE row cancels the eUICC's RSP session where one is open) with an audit
note naming the call and the limit. `next_size_hint` is set wherever the next downlink can
be foreseen: exactly for the rest of a part cut by the byte budget, else the procedure's
estimate (gateway.core.procedures.base.Procedure.next_downlink_hint), never above what the
device's budget lets one batch carry. A wrong hint only costs the agent a few speculative
block requests or one round trip (docs/device-link.md §5).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

from gateway.core import actions as A
from gateway.core import es10
from gateway.core.events import DeviceResult
from gateway.core.planner import Part, batch_budget, downlink_size, oversize, plan
from gateway.core.procedures import notifications as N
from gateway.core.procedures.base import DEVICE, FAILED, Call, DeviceAnswer, Failure, Reply
from gateway.core.procedures.discovery import Discovery, eim_summary
from gateway.core.procedures.eim_package import EimPackage
from gateway.core.turn import NOTIF, PROC, RETRY_PREFIX, UPLINK_TIMER, Turn, removed_ok
from gateway.errors import GatewayError
from gateway.links.protocol import (
    MAX_MESSAGE,
    STOPPED_CARD,
    BatchMsg,
    BatchResult,
    DeviceStatus,
    ErrorCode,
    ErrorMsg,
    Idle,
    decode_downlink,
    encode_downlink,
)


LOST = "lost"   # the stop reason given to owners of a batch the device never answered
DEVICE_LIMIT = "DeviceLimit"   # failure class: a call that cannot fit the device's buffer or budget


def result_digest(result: BatchResult) -> bytes:
    """Identifies a Result's content, to tell a faithful repeat from a different one."""
    h = hashlib.sha256(str(result.stopped).encode())
    for r in result.results:
        h.update(len(r.data).to_bytes(4, "big") + r.data + r.sw.to_bytes(2, "big"))
    return h.digest()[:8]


def replayed(eid: bytes, encoded: bytes) -> A.SendBatch | A.ReplyIdle | A.ReplyError:
    """The downlink action for a downlink the session kept (encoded as on the wire)."""
    down = decode_downlink(encoded)
    if isinstance(down, BatchMsg):
        return A.SendBatch(eid, down.batch)
    if isinstance(down, Idle):
        return A.ReplyIdle(eid, down.retry_after_s)
    assert isinstance(down, ErrorMsg)
    return A.ReplyError(eid, down.code, down.text)


class DeviceSide(Turn):
    def on_hello(self, status: DeviceStatus | None) -> None:
        """The device woke (a Hello, or a repeated Result whose Idle was lost: see on_result)."""
        s = self.s
        s.answering, s.last_reply = None, None      # the device started over: no repeat expected
        if s.uplink_pending:
            self.audit("deviceLink", "superseded", "a new uplink replaced the pending one")
        if s.in_flight is not None:
            self.audit("deviceLink", "lost", f"batch {s.in_flight['batch_id']} not answered")
            self.apply_results((), LOST)
        s.uplink_pending = True
        due = self.config.notification_check_s
        if s.retrieved_at is None or (due is not None and self.now - s.retrieved_at >= due):
            s.want_retrieve = True       # notifications left by anything else (first contact, daily)
        # a PLMN change is the eIM's to hear (notifyStateChange, rPLMN), unless the policies
        # that caused it report it themselves (StateReportPending, see on_state_report)
        changed = (status is not None and s.plmn is not None and status.plmn is not None
                   and status.plmn != s.plmn and not s.policy_report_pending)
        self.note_status(status)
        if s.eims is None:
            if self.config.eims:
                s.eims = [e.summary() for e in self.config.eims]
                s.want_discover = True
            else:
                self.start_internal(Discovery())
        for eim in s.eims or []:
            self.poll(str(eim["eimId"]), changed, s.state_change_cause)

    def on_state_report(self, pending: bool, answered: bool) -> None:
        """The policies' state-change report is owed (`pending`), answered by the eIM, or given up.
        An answer may come before the device wakes on its new network: the hold then lasts until
        the device names its serving PLMN (note_status), which counts as reported."""
        s = self.s
        s.policy_report_pending = pending or (answered and s.policy_report_pending)
        s.policy_report_answered = not pending and answered and s.policy_report_pending

    def note_status(self, status: DeviceStatus | None) -> None:
        if status is None:
            return
        s = self.s
        if s.policy_report_answered and status.plmn is not None:
            s.policy_report_pending = s.policy_report_answered = False
        s.plmn = status.plmn if status.plmn is not None else s.plmn
        s.imei = status.imei if status.imei is not None else s.imei
        s.max_batch_bytes = status.max_batch_bytes
        s.buffer_size = status.buffer_size

    def on_result(self, event: DeviceResult) -> None:
        s = self.s
        batch_id = event.result.batch_id
        if s.in_flight is not None and batch_id == s.in_flight["batch_id"]:
            self.note_status(event.status)
            s.answering = {"to": batch_id, "digest": result_digest(event.result)}
            s.last_reply = None
            s.uplink_pending = True
            self.apply_results(tuple(Reply(r.data, r.sw) for r in event.result.results), event.result.stopped)
            return
        if s.answering is not None and batch_id == s.answering["to"]:
            # its downlink is still being decided (or was lost in a restart): it answers this one
            self.repeated(event.result, s.answering["digest"], "answered when ready")
            s.uplink_pending = True
            return
        if s.last_reply is not None and batch_id == s.last_reply["to"]:
            kept = s.last_reply
            if isinstance(decode_downlink(kept["down"]), Idle):
                # its Idle may be lost and new work may have come since: a wake like a Hello,
                # and what answers it now answers a further copy of this Result
                self.repeated(event.result, kept["digest"], "its Idle was not received: handled as a Hello")
                self.on_hello(event.status)
                s.answering = {"to": batch_id, "digest": kept["digest"]}
                return
            self.repeated(event.result, kept["digest"], "same downlink again")
            self.out.append(replayed(s.eid, kept["down"]))
            return
        self.out.append(A.ReplyError(s.eid, int(ErrorCode.UNEXPECTED), f"no batch {batch_id} in flight"))

    def repeated(self, result: BatchResult, digest: bytes, what: str) -> None:
        differs = "" if result_digest(result) == digest else "; it differs from the first, which stands"
        self.audit("deviceLink", "repeat", f"Result for batch {result.batch_id} received again: {what}{differs}")

    def reply(self, action: A.SendBatch | A.ReplyIdle) -> None:
        """Answer the pending uplink; the answer to a Result is kept to answer a repeat of it."""
        s = self.s
        if s.answering is not None:
            down = BatchMsg(action.batch) if isinstance(action, A.SendBatch) else Idle(action.retry_after_s)
            s.last_reply = {"to": s.answering["to"], "digest": s.answering["digest"],
                            "down": encode_downlink(down)}
            s.answering = None
        s.uplink_pending = False
        self.out.append(action)

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
            unreached = stopped == STOPPED_CARD   # no channel or SELECT: nothing ran
            repeatable = stopped == LOST and s.proc is not None and s.proc.state in s.proc.REPEATABLE
            if not replies and (unreached or repeatable) and flight.get("proc_part") and not flight.get("resent"):
                # nothing ran, or only reads that may run twice: send the same calls again once
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
                if ok and reply is not None and removed_ok(reply.data):
                    seq = int(item[2])
                    d["remove_seqs"] = [q for q in d["remove_seqs"] if q != seq]
                    self.audit("removeNotification", "ok", f"seq {seq} ({d['event']})", d.get("iccid"),
                               event=A.profile_event(d["event"]), seq=seq)
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
            found = es10.retrieved_list(data)
        except GatewayError as exc:
            self.audit("retrieveNotifications", "failed", str(exc))
            return
        for item in found.unreadable:
            self.audit("retrieveNotifications", "unreadable", item[:64].hex())
        notes = found.notifications
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
        if s.want_retrieve and not self.hold:     # held: the notifications wait on the eUICC
            calls.append(Call("RetrieveNotificationsList", es10.retrieve_notifications_list()))
            items.append(["retrieve"])
        if s.want_discover:
            calls.append(Call("GetEimConfigurationData", es10.get_eim_configuration_data()))
            items.append(["discover"])
        fits = [i for i, c in enumerate(calls) if self.oversize(c) is None]
        if len(fits) < len(calls):
            self.audit("deviceLink", "deferred", "; ".join(str(self.oversize(calls[i]))
                                                         for i in range(len(calls)) if i not in fits))
            calls, items = [calls[i] for i in fits], [items[i] for i in fits]
        return (Part(NOTIF, tuple(calls)) if calls else None), items

    def settle(self, force: bool = False) -> None:
        """Answer the pending uplink when nothing it depends on is outstanding, or at once when
        `force`d (the device has waited `uplink_wait_s`): then with what is ready, and a short
        Idle when nothing is."""
        s = self.s
        self.start_next()
        if not s.uplink_pending:
            self.stop_uplink_timer()
            return
        if self.blocked() and not force:
            wait = self.config.uplink_wait_s
            if wait is not None and UPLINK_TIMER not in s.timers:
                s.timers[UPLINK_TIMER] = self.now + wait
                self.out.append(A.StartTimer(s.eid, UPLINK_TIMER, self.now + wait))
            return
        self.stop_uplink_timer()
        self.refuse_oversize()
        parts: list[Part] = []
        if s.work is not None:
            parts.append(s.work)
        notif, items = self.notif_part()
        if notif is not None:
            parts.append(notif)
        if not parts:
            busy = self.blocked() and self.config.busy_retry_s
            self.reply(A.ReplyIdle(s.eid, int(busy) if busy else self.idle_for()))
            return
        s.counter += 1
        planned = plan(parts, s.counter & 0xFFFFFFFF, segment_size=self.segment_size(),
                       max_batch_bytes=self.max_batch_bytes(), buffer_size=s.buffer_size)
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
        hint = self.next_size_hint() if proc_count else None
        if hint is not None:
            batch = dataclasses.replace(batch, next_size_hint=hint)
        s.in_flight = {"batch_id": planned.batch.batch_id, "owners": owners,
                       "notif": items if sent_notif else [], "proc_part": proc_part,
                       "resent": s.resend_once}
        s.resend_once = False
        self.reply(A.SendBatch(s.eid, batch))

    def segment_size(self) -> int:
        return self.config.segment_size_of(self.s.eid)

    def max_batch_bytes(self) -> int | None:
        return self.s.max_batch_bytes or self.config.max_batch_bytes_of(self.s.eid)

    def next_size_hint(self) -> int | None:
        """The size of the downlink that will answer this batch's Result, when foreseeable."""
        s = self.s
        if s.work is not None:
            # the rest of a part cut by the byte budget: the next batch starts with it
            rest = plan([s.work], (s.counter + 1) & 0xFFFFFFFF, segment_size=self.segment_size(),
                        max_batch_bytes=self.max_batch_bytes(), buffer_size=s.buffer_size)
            if rest.leftover:       # that batch will carry a hint of its own, about as large
                return downlink_size(dataclasses.replace(rest.batch, next_size_hint=downlink_size(rest.batch)))
            return downlink_size(rest.batch)
        if s.proc is None:
            return None
        hint = s.proc.next_downlink_hint(self.config)
        if hint is None:
            return None
        return min(hint, batch_budget(self.max_batch_bytes()), MAX_MESSAGE)

    def refuse_oversize(self) -> None:
        """A procedure call that cannot fit this device fails the procedure (which cancels an open
        RSP session); the delivery track's calls are small, one that cannot fit waits."""
        s = self.s
        for _ in range(3):      # the cleanup's calls (CancelSession) in turn; a second failure ends in ERROR
            if s.work is None or s.proc is None:
                return
            why = next((w for c in s.work.calls if (w := self.oversize(c)) is not None), None)
            if why is None:
                return
            self.audit("deviceLink", "refused", f"{why}: {s.proc.KIND} cannot run on this device")
            s.work, s.replies = None, []
            self.feed(FAILED, Failure("device", DEVICE_LIMIT, why))

    def oversize(self, call: Call) -> str | None:
        return oversize(call, segment_size=self.segment_size(), buffer_size=self.s.buffer_size,
                        max_batch_bytes=self.max_batch_bytes())

    def stop_uplink_timer(self) -> None:
        if self.s.timers.pop(UPLINK_TIMER, None) is not None:
            self.out.append(A.CancelTimer(self.s.eid, UPLINK_TIMER))

    def idle_for(self) -> int:
        """Seconds until the device should come back: the configured idle time, or sooner when a
        procedure waits to retry a server (its eUICC session should not wait for the next
        ordinary wake). Polls and deliveries retry without the device."""
        due = [at - self.now for name, at in self.s.timers.items() if name.startswith(f"{RETRY_PREFIX}{PROC}:")]
        wait = min([float(self.config.idle_retry_s_of(self.s.eid))] + [d for d in due if d > 0])
        return max(1, math.ceil(wait))
