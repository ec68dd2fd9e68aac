"""The backhaul side of a turn: requests out, answers and failures in, retries on timers.

Theory of operation. Every backhaul request is recorded in the session (owner, tag, target,
body, attempt) under a fresh request id before its PostEsipa/PostEs9/PostEs11 action is
emitted, so a restart re-sends it. An answer goes back to its owner: the procedure, a poll
(a package to queue), or a delivery (acknowledged: ACKED, or refused). A retryable failure
(gateway.errors.is_retryable, decided by the adapter) is retried after the owner's
BackoffPolicy wait (gateway/core/retry.py: jittered, Retry-After as a floor) while
attempts remain; a definitive one goes to the owner at once. Scheduled polls run on the
"poll" timer.

A server that answers is reachable again: deliveries of this device waiting on their backoff
timers for that server (eIM id or SM-DP+ address) are re-armed at once, oldest first, with
at most `rearm_in_flight` deliveries of the device in flight, so a queue left by an outage
drains as soon as a poll (or anything else) gets through, and each delivery acknowledged
re-arms the next. An answer is any response body, or a definitive function-level refusal
(FunctionFailed); a transport failure or a transient refusal re-arms nothing. Only WAITING
deliveries are re-armed, and their timer and retry record go with it: never two attempts of
one delivery in flight.

A request can be let go of while it is in flight: its delivery acknowledged by
EimAcknowledgements (pushed, or in another result's answer) before its own answer, its
procedure ended or cancelled. Its answer still comes and is then stale: a StaleAnswer action
names the reason (kept for the last LET_GO_KEPT such requests; "unknown" beyond, or for an
id never sent), and nothing else happens.
"""

from __future__ import annotations

from typing import Any

from gateway.core import actions as A
from gateway.core import packages as P
from gateway.core.events import BackhaulFailed
from gateway.core.procedures import notifications as N
from gateway.core.procedures.base import ANSWER, FAILED, Answer, Failure, Request
from gateway.core.turn import DELIVERY, POLL, POLL_TIMER, PROC, RETRY_PREFIX, UPLINK_TIMER, Turn, post_action
from gateway.errors import GatewayError
from gateway.spec import esipa

LET_GO_KEPT = 32    # requests let go of in flight whose reason is kept for their late answer
FUNCTION_REFUSAL = "FunctionFailed"   # a BackhaulFailed error class that proves the server answered
FIRST_SENT = "first_sent"   # delivery field: request counter of its first attempt (blob keys are sorted)


class BackhaulSide(Turn):
    def send(self, owner: str, request: Request, max_attempts: int | None, attempt: int = 0) -> None:
        s = self.s
        s.counter += 1
        rid = str(s.counter)
        rec = {"owner": owner, "tag": request.tag, "target": request.target, "server": request.server,
               "function": request.function, "body": request.body, "attempt": attempt,
               "max_attempts": max_attempts}
        s.requests[rid] = rec
        self.out.append(post_action(s, rid, rec))

    def send_delivery(self, d: dict[str, Any]) -> None:
        N.move(d, "send", N.SENDING)
        d.setdefault(FIRST_SENT, self.s.counter + 1)     # the id of its first request: its age
        self.send(DELIVERY, N.request_of(d), self.config.delivery_backoff.max_attempts, int(d["attempt"]))

    def poll(self, eim_id: str, state_changed: bool, cause: str | None = None) -> None:
        s = self.s
        if self.hold:
            return      # a package now would add its result to the backlog: the eIM keeps it
        if any(r["owner"] == POLL and r["server"] == eim_id for r in s.requests.values()):
            return
        tag = f"poll:{eim_id}"
        waiting = f"{RETRY_PREFIX}{POLL}:{tag}"
        if s.retries.pop(waiting, None) is not None:     # polling now replaces the retry
            s.timers.pop(waiting, None)
            self.out.append(A.CancelTimer(s.eid, waiting))
        body = P.get_eim_package_request(s.eid, s.plmn, state_changed, cause)
        self.send(POLL, Request(tag, "esipa", eim_id, "GetEimPackage", body),
                  self.config.poll_backoff.max_attempts)

    def drop_requests(self, owner: str, reason: str) -> None:
        s = self.s
        for rid in [r for r, rec in s.requests.items() if rec["owner"] == owner]:
            self.let_go(rid, reason)
        for name in [n for n, rec in s.retries.items() if rec["owner"] == owner]:
            del s.retries[name]
            s.timers.pop(name, None)
            self.out.append(A.CancelTimer(s.eid, name))

    def let_go(self, rid: str, reason: str) -> None:
        """Stop waiting for request `rid` (in flight); its answer, when it comes, is stale."""
        s = self.s
        del s.requests[rid]
        s.let_go[rid] = reason
        while len(s.let_go) > LET_GO_KEPT:
            del s.let_go[next(iter(s.let_go))]

    def stale(self, rid: str) -> None:
        reason = self.s.let_go.pop(rid, A.STALE_UNKNOWN)
        self.out.append(A.StaleAnswer(self.s.eid, rid, reason))

    def on_answer(self, rid: str, body: bytes) -> None:
        rec = self.s.requests.pop(rid, None)
        if rec is None:
            self.stale(rid)
            return
        owner = rec["owner"]
        if owner == PROC and self.s.proc is not None:
            self.last_request = rec
            self.feed(ANSWER, Answer(rec["tag"], body))
        elif owner == POLL:
            self.polled(rec["server"], body)
        elif owner == DELIVERY:
            self.delivered(rec, body)
            d = self.s.deliveries.get(rec["tag"])
            if d is not None and d["state"] == N.WAITING:
                return      # a transient refusal (Failed header): the server asked for patience
        self.rearm(rec["server"])

    def rearm(self, server: str) -> None:
        """`server` answered: send its waiting deliveries now, oldest first, within the bound."""
        s = self.s
        room = self.config.rearm_in_flight - sum(1 for r in s.requests.values() if r["owner"] == DELIVERY)
        waiting = [(key, d) for key, d in s.deliveries.items() if d["state"] == N.WAITING and d["server"] == server]
        waiting.sort(key=lambda kd: int(kd[1].get(FIRST_SENT, 0)))     # oldest first
        for key, d in waiting:
            if room <= 0:
                return
            name = f"{RETRY_PREFIX}{DELIVERY}:{key}"
            rec = s.retries.pop(name, None)
            if rec is None:
                continue
            if s.timers.pop(name, None) is not None:
                self.out.append(A.CancelTimer(s.eid, name))
            N.move(d, "send", N.SENDING)
            self.send(DELIVERY, Request(rec["tag"], rec["target"], rec["server"], rec["function"], rec["body"]),
                      rec["max_attempts"], int(rec["attempt"]))
            room -= 1

    def schedule_poll(self) -> None:
        s = self.s
        interval = self.config.poll_interval_s
        if interval is not None and POLL_TIMER not in s.timers:
            s.timers[POLL_TIMER] = self.now + interval
            self.out.append(A.StartTimer(s.eid, POLL_TIMER, self.now + interval))

    def polled(self, eim_id: str, body: bytes) -> None:
        self.schedule_poll()
        self.s.state_change_cause = None            # the eIM has been told
        try:
            kind, value = esipa.decode_response("GetEimPackage", body)
        except GatewayError as exc:
            self.audit("getEimPackage", "failed", str(exc), origin=eim_id)
            return
        if kind == "eimPackageError":
            return
        self.on_package(eim_id, body, "poll", "")

    def delivered(self, rec: dict[str, Any], body: bytes) -> None:
        s = self.s
        key = rec["tag"]
        d = s.deliveries.get(key)
        if d is None or d["state"] != N.SENDING:
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
                    es9p.parse_header_only(body, d["function"])
            except GatewayError as exc:
                # a Failed header: a transient reason is retried like a network error
                if not self.retry(rec, exc.retryable, type(exc).__name__, str(exc), None):
                    self.delivery_failed(d, type(exc).__name__, str(exc))
                return
        N.move(d, "ack", N.ACKED if d["remove_seqs"] else N.DONE)
        seq = d["remove_seqs"][0] if d["kind"] == N.NOTIFICATION and d["remove_seqs"] else None
        self.audit("deliver" + d["kind"].capitalize(), "ok", f"{d['event']} to {d['server']}", d.get("iccid"),
                   event=A.profile_event(d["event"]), seq=seq)
        if d["state"] == N.DONE:
            del s.deliveries[key]
        self.acknowledged(acked_seqs, d["server"])
        if d["kind"] == N.RESULT and s.uplink_pending:
            self.poll(d["server"], False)   # the eIM may have the next package ready

    def on_failed(self, event: BackhaulFailed) -> None:
        s = self.s
        rec = s.requests.pop(event.request_id, None)
        if rec is None:
            self.stale(event.request_id)
            return
        if self.retry(rec, event.retryable, event.error_class, event.detail, event.retry_after_s):
            return
        failure = Failure(rec["tag"], event.error_class, event.detail, event.retryable, event.reason_code)
        if rec["owner"] == PROC and s.proc is not None:
            self.feed(FAILED, failure)
        elif rec["owner"] == DELIVERY and rec["tag"] in s.deliveries:
            self.delivery_failed(s.deliveries[rec["tag"]], event.error_class, event.detail)
        elif rec["owner"] == POLL:
            self.audit("getEimPackage", "failed", f"{event.error_class}: {event.detail}", origin=rec["server"])
            self.schedule_poll()
        if event.error_class == FUNCTION_REFUSAL:
            self.rearm(rec["server"])

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
        wait = policy.wait(attempt, self.rand, retry_after_s)
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

    def delivery_failed(self, d: dict[str, Any], error_class: str, detail: str) -> None:
        """Definitive: the delivery stays (FAILED) with its notification kept on the eUICC."""
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
        if name == UPLINK_TIMER:
            self.settle(force=True)     # answer the device with what is ready; the rest waits
            return
        rec = s.retries.pop(name, None)
        if rec is None or (rec["owner"] == POLL and self.hold):   # held: the next wake after the hold polls
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
