"""The runtime: feeds events to the pure engine and performs the actions it returns.

Theory of operation. The runtime is the device links' `UplinkHandler`. A device uplink
becomes a DeviceHello/DeviceResult event; the uplink then waits (bounded by
`exchange_timeout_s`) for the downlink the engine decides, which may come at once or only
after backhaul round trips (Hello -> GetEimPackage -> batch). Every event goes through
`feed()`:

1. `engine.handle(event)` (pure, synchronous) returns a list of actions;
2. the store actions of that list (SaveSession, BackhaulWaiting, MarkInbox, Audit) and the device's contact
   record commit in ONE store transaction (`AsyncStore.atomic`) -- a failure there rolls all
   of them back and performs none of the I/O actions;
3. only then the I/O actions, in list order: a downlink resolves the device's pending
   uplink, PostEsipa/PostEs9 start a backhaul task whose answer or failure comes back as
   BackhaulAnswered/BackhaulFailed, StartTimer/CancelTimer arm and disarm timers that come
   back as TimerFired.

Events of one device are fed one at a time (a lock per EID) so the engine sees them in
order and their transactions commit in that order. The clock is injected (DESIGN
principle 5, gateway.clock): every event's `now`, every stored time and every engine timer
(StartTimer, armed with `clock.call_at`) comes from it; only the exchange timeout, a bound on
a real wait for the device, runs on the event loop's time.

An eIM push (`on_transfer`, the inject endpoint's callback) is persisted in the device's
inbox before it is acknowledged, then fed to the engine as EimPackageReceived. Pushed
EimAcknowledgements name no EID: the engine says which devices they belong to.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from gateway.backhaul import esipa_client
from gateway.clock import Clock, SystemClock, Timer, as_clock
from gateway.backhaul.http import BackhaulHttp, Server, TlsTrust, require_content_type
from gateway.core.actions import (
    STORE_ACTIONS,
    Action,
    Audit,
    BackhaulWaiting,
    CancelTimer,
    MarkInbox,
    PostEs9,
    PostEs11,
    PostEsipa,
    ReplyError,
    ReplyIdle,
    SaveSession,
    SendBatch,
    StaleAnswer,
    StartTimer,
)
from gateway.core.events import (
    BackhaulAnswered,
    BackhaulFailed,
    DeviceHello,
    DeviceResult,
    EimPackageReceived,
    Event,
    OperatorAction,
    TimerFired,
)
from gateway.errors import DecodeError, FunctionFailed, GatewayError, RemoteProtocolError, UnknownDevice, is_retryable
from gateway.links.protocol import (
    BatchMsg,
    Downlink,
    ErrorCode,
    ErrorMsg,
    Hello,
    Idle,
    Uplink,
    encode_downlink,
    encode_uplink,
)
from gateway.service import esipa_binding
from gateway.service.logging import log_fields
from gateway.service.metrics import GatewayMetrics
from gateway.spec import codec, es9p, es11, esipa, tlv
from gateway.store import AsyncStore, OutboxFull, OutboxUsage, Store, package_key, transaction_key

log = logging.getLogger(__name__)

INBOX_KIND_EIM_PACKAGE = "eim-package"
DOWNLOAD_OPERATIONS = ("download", "profiledownload")   # the engine's audit name of a finished download


class Engine(Protocol):
    """What the runtime needs of gateway.core's engine: a pure step function, and where pushed
    EimAcknowledgements belong (gateway.core.engine.Engine.route_acknowledgements)."""

    hold_new_work: bool   # set while what waits for the backhaul is at its bound (note_backlog)

    def handle(self, event: Event) -> list[Action]: ...

    def route_acknowledgements(self, seqs: Sequence[int]) -> tuple[dict[tuple[bytes, str], list[int]], list[int]]: ...


class Backhaul(Protocol):
    """Posts one engine request northbound; the exact answer body (b"" for none)."""

    async def post_esipa(self, action: PostEsipa) -> bytes: ...

    async def post_es9(self, action: PostEs9) -> bytes: ...

    async def post_es11(self, action: PostEs11) -> bytes: ...


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    exchange_timeout_s: float = 50.0   # longest an uplink waits for the engine's downlink (under the
                                       # reference agent's 60 s MQTT timeout: it gets Idle, not silence)
    busy_retry_s: int = 30             # Idle the device gets when that wait runs out
    stopping_retry_s: int = 60         # Idle the device gets while the daemon drains


class Runtime:
    def __init__(self, engine: Engine, astore: AsyncStore, backhaul: Backhaul, *,
                 clock: Clock | Callable[[], float] = SystemClock(), options: RuntimeOptions = RuntimeOptions(),
                 metrics: GatewayMetrics | None = None,
                 after_commit: Callable[[list[Action]], None] | None = None,
                 on_audit: Callable[[Store, Audit, float], int] | None = None) -> None:
        self.engine = engine
        self.astore = astore
        self.backhaul = backhaul
        self.clock = as_clock(clock)
        self.options = options
        self.metrics = metrics or GatewayMetrics()
        self._after_commit = after_commit   # test hook: runs between the commit and the I/O
        self.on_audit = on_audit            # inside the transaction, per Audit (webhook events); > 0: queued
        self.on_queued: Callable[[], None] | None = None   # after a commit that queued something
        self.on_backlog: Callable[[OutboxUsage], None] | None = None   # the outbox level changed
        self.backlog: OutboxUsage | None = None   # what waits for the backhaul, as of the last commit
        self._locks: dict[bytes, asyncio.Lock] = {}
        self._pending: dict[bytes, asyncio.Future[Downlink]] = {}
        self._timers: dict[tuple[bytes, str], Timer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        self._holding = False
        # deliveries named by steps decided but not yet committed (entries, bytes): the engine
        # decides the next device's step before this one's commit returns, so the hold looks ahead
        self._uncommitted = (0, 0)

    # --- device links --------------------------------------------------------------------

    async def exchange(self, eid: bytes, uplink: Uplink) -> Downlink:
        """UplinkHandler: one uplink in, exactly one downlink out."""
        if self.draining:
            return self._count(Idle(self.options.stopping_retry_s), uplink)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Downlink] = loop.create_future()
        previous = self._pending.get(eid)
        if previous is not None and not previous.done():
            previous.set_result(ErrorMsg(int(ErrorCode.UNEXPECTED), "superseded by a newer uplink"))
        self._pending[eid] = future
        self._begin()
        try:
            now = self.clock()
            event: Event
            if isinstance(uplink, Hello):
                event = DeviceHello(eid=eid, now=now, status=uplink.status)
            else:
                event = DeviceResult(eid=eid, now=now, result=uplink.result, status=uplink.status)
            status = uplink.status
            await self.feed(event, contact=(eid, None if status is None else _status_json(status)))
            try:
                downlink = await asyncio.wait_for(asyncio.shield(future), self.options.exchange_timeout_s)
            except TimeoutError:
                self.metrics.errors.inc(kind="exchange-timeout")
                log.warning("no downlink for %s within %.0f s: Idle", eid.hex(), self.options.exchange_timeout_s,
                            extra=log_fields(eid=eid))
                downlink = Idle(self.options.busy_retry_s)
        except GatewayError as exc:
            self.metrics.errors.inc(kind=type(exc).__name__)
            log.error("exchange with %s failed: %s", eid.hex(), exc, extra=log_fields(eid=eid))
            downlink = ErrorMsg(int(ErrorCode.INTERNAL), type(exc).__name__)
        except Exception:
            self.metrics.errors.inc(kind="engine-bug")
            log.exception("exchange with %s failed", eid.hex(), extra=log_fields(eid=eid))
            downlink = ErrorMsg(int(ErrorCode.INTERNAL), "internal error")
        finally:
            if self._pending.get(eid) is future:
                del self._pending[eid]
            self._end()
        return self._count(downlink, uplink)

    def _count(self, downlink: Downlink, uplink: Uplink) -> Downlink:
        m = self.metrics
        m.round_trips.inc(downlink=type(downlink).__name__)
        m.uplink_bytes.inc(len(encode_uplink(uplink)))
        m.downlink_bytes.inc(len(encode_downlink(downlink)))
        if isinstance(downlink, BatchMsg):
            m.apdus.inc(sum(len(s.apdus) for s in downlink.batch.steps))
        return downlink

    # --- the eIM push (inject endpoint callback) -----------------------------------------

    async def on_transfer(self, body: bytes, binding: str) -> bytes:
        """Persist a pushed eIM package, then acknowledge it (eimPackageReceived)."""
        if binding != "asn1":
            raise RemoteProtocolError("the JSON binding of TransferEimPackage is not supported by this gateway")
        seqs = _pushed_acknowledgements(body)
        if seqs is not None:
            return await self._on_pushed_acknowledgements(seqs)
        eid, eim_id, key = _pushed_package_identity(body)
        if self.holding:
            usage = self.backlog
            assert usage is not None
            raise OutboxFull(f"eIM package for {eid.hex()} refused: the outbox is full ({usage.entries} entries, "
                             f"{usage.payload_bytes} bytes waiting for the backhaul); the eIM keeps it and pushes "
                             "it again", entries=usage.entries, payload_bytes=usage.payload_bytes)
        now = self.clock()

        def persist(s: Store) -> bool:
            s.devices.require(eid)
            return s.inbox.enqueue(eid, key, INBOX_KIND_EIM_PACKAGE, body, origin=eim_id, now=now).new

        try:
            new = await self.astore.atomic(persist)
        except UnknownDevice as exc:
            raise RemoteProtocolError(str(exc)) from None
        if new:
            self.spawn(self.feed(EimPackageReceived(eid=eid, now=now, eim_id=eim_id, raw=body, via="push", key=key)),
                       f"push for {eid.hex()}")
        else:
            log.info("eIM package %s for %s pushed again: already in the inbox", key, eid.hex())
        return codec.encode("TransferEimPackageResponse", ("eimPackageReceived", None))

    async def _on_pushed_acknowledgements(self, seqs: list[int]) -> bytes:
        """EimAcknowledgements name no EID: each device the engine places some of them with gets
        its own EimAcknowledgements, persisted in its inbox, then fed; the rest are logged."""
        routes, unplaced = self.engine.route_acknowledgements(seqs)
        if unplaced:
            log.warning("pushed EimAcknowledgements: sequence numbers %s match no single device's delivery "
                        "to an eIM; left to those deliveries' own answers", unplaced)
        now = self.clock()
        entries = []
        for (eid, eim_id), own in routes.items():
            raw = codec.encode("EimAcknowledgements", own)
            entries.append((eid, eim_id, raw, package_key(raw)))

        def persist(s: Store) -> list[bool]:
            return [s.inbox.enqueue(eid, key, INBOX_KIND_EIM_PACKAGE, raw, origin=eim_id, now=now).new
                    for eid, eim_id, raw, key in entries]

        for (eid, eim_id, raw, key), new in zip(entries, await self.astore.atomic(persist), strict=True):
            if new:
                self.spawn(self.feed(EimPackageReceived(eid=eid, now=now, eim_id=eim_id, raw=raw, via="push",
                                                        key=key)), f"acknowledgements for {eid.hex()}")
        return codec.encode("TransferEimPackageResponse", ("eimPackageReceived", None))

    # --- operator actions ----------------------------------------------------------------

    async def operator(self, eid: bytes, kind: str, args: Iterable[tuple[str, str]] = ()) -> None:
        await self.astore.run(lambda s: s.devices.require(eid))
        self.metrics.operator_actions.inc(kind=kind)
        await self.feed(OperatorAction(eid=eid, now=self.clock(), kind=kind, args=tuple(args)))

    # --- the step: engine, one transaction, then I/O -------------------------------------

    async def feed(self, event: Event, *, contact: tuple[bytes, dict[str, Any] | None] | None = None) -> None:
        lock = self._locks.setdefault(event.eid, asyncio.Lock())
        async with lock:
            actions = self.engine.handle(event)
            try:
                await self.apply(actions, event.now, contact=contact)
            except GatewayError:
                await self._rewind(event.eid)
                raise

    async def _rewind(self, eid: bytes) -> None:
        """The step's transaction failed, so none of its actions happened: put the engine's session
        back to what the store holds (the engine already moved on in memory)."""
        restore = getattr(self.engine, "restore", None)
        forget = getattr(self.engine, "forget", None)
        try:
            session = await self.astore.run(lambda s: s.sessions.get(eid))
        except GatewayError as exc:
            log.error("session of %s cannot be re-read after a failed step (%s): dropped from memory",
                      eid.hex(), exc, extra=log_fields(eid=eid))
            session = None
        if session is not None and restore is not None:
            restore(eid, session.blob)
        elif forget is not None:
            forget(eid)

    async def apply(self, actions: list[Action], now: float, *,
                    contact: tuple[bytes, dict[str, Any] | None] | None = None) -> None:
        """Store actions (and the contact record) in one transaction, then the I/O actions."""
        stored = [a for a in actions if isinstance(a, STORE_ACTIONS)]
        queued = 0
        if stored or contact is not None:
            growth = _growth(stored)
            self._look_ahead(growth)
            try:
                queued, usage = await self.astore.atomic(lambda s: self._apply_store(s, stored, now, contact))
            finally:
                self._look_ahead((-growth[0], -growth[1]))
            self.note_backlog(usage)
        if queued and self.on_queued is not None:
            self.on_queued()
        for a in stored:
            if isinstance(a, Audit):
                self._count_audit(a)
        if self._after_commit is not None:
            self._after_commit(actions)
        for action in actions:
            self._perform(action)

    def _apply_store(self, s: Store, actions: list[SaveSession | BackhaulWaiting | MarkInbox | Audit], now: float,
                     contact: tuple[bytes, dict[str, Any] | None] | None) -> tuple[int, OutboxUsage]:
        queued = 0
        if contact is not None:
            eid, status = contact
            if s.devices.get(eid) is not None:
                s.devices.record_contact(eid, now=now, status=status)
        for a in actions:
            if isinstance(a, SaveSession):
                s.sessions.put(a.eid, a.state_name, a.blob, now=now)
            elif isinstance(a, BackhaulWaiting):
                s.deliveries.replace(a.eid, a.waiting, now=now, previous=a.previous)
            elif isinstance(a, MarkInbox):
                _mark_inbox(s, a, now)
            else:
                eim, tx = _origin(a.origin)
                s.audit.append(time=now, eid=a.eid, iccid=None if a.iccid is None else iccid_digits(a.iccid),
                               operation=a.operation, result=a.result, origin_eim=eim, origin_tx=tx,
                               detail={"detail": a.detail} if a.detail else None)
                if self.on_audit is not None:
                    queued += self.on_audit(s, a, now)
        usage = s.outbox.usage()
        s.outbox.note(usage)
        return queued, usage

    # --- the bound on what waits for the backhaul ------------------------------------------

    def note_backlog(self, usage: OutboxUsage) -> None:
        """What waits for the backhaul (the outbox usage, the engine's deliveries included) as just
        read. At the bound the engine takes no new work (Engine.hold_new_work: no eIM poll, no
        notification read from an eUICC, no queued package started) and eIM pushes are refused
        with a retryable error (503 Retry-After): the eIM and the eUICCs keep what is new, and
        nothing stored is dropped. Work already running finishes and its messages are kept, so
        the backlog may pass the bound by what was in progress. New work is taken again once the
        backlog is back under the alarm ratio (not merely under the bound: no flapping). The hold
        looks ahead: what steps decided but not yet committed add (never subtract: an
        acknowledgement counts once committed) is counted as if already there, so the devices
        stepping while a group commit waits for the disk cannot all start new work on a stale
        count."""
        before = self.backlog
        self.backlog = usage
        level = usage.level
        self._hold()
        m = self.metrics
        m.queue_depth.set(usage.entries, queue="outbox")
        m.queue_bytes.set(usage.payload_bytes)
        m.outbox_level.set({"ok": 0, "alarm": 1, "full": 2}[level])
        if (before is None or before.level != level) and self.on_backlog is not None:
            self.on_backlog(usage)

    def _look_ahead(self, growth: tuple[int, int]) -> None:
        """Count a step's growth of the backlog from its decision to its commit (see note_backlog):
        the steps of other devices decided meanwhile see the bound the commits will reach."""
        self._uncommitted = (self._uncommitted[0] + growth[0], self._uncommitted[1] + growth[1])
        self._hold()

    def _hold(self) -> None:
        if self.backlog is None:
            return
        ahead = OutboxUsage(self.backlog.entries + self._uncommitted[0],
                            self.backlog.payload_bytes + self._uncommitted[1], self.backlog.limits).level
        holding = ahead == "full" or (ahead == "alarm" and self._holding)
        self.engine.hold_new_work = holding
        self._holding = holding
        self.metrics.holding_new_work.set(1 if holding else 0)

    @property
    def holding(self) -> bool:
        """New work is refused: what waits for the backhaul reached its bound (note_backlog)."""
        return self._holding

    def _count_audit(self, a: Audit) -> None:
        log.info("%s %s%s", a.operation, a.result, f": {a.detail}" if a.detail else "",
                 extra=log_fields(eid=a.eid, iccid=None if a.iccid is None else iccid_digits(a.iccid),
                                  operation=a.operation, transaction=_origin(a.origin)[1]))
        self.metrics.audit.inc(operation=a.operation, result=a.result)
        if a.operation.lower() in DOWNLOAD_OPERATIONS:
            self.metrics.downloads.inc(result=a.result)

    def _perform(self, action: Action) -> None:
        if isinstance(action, (SendBatch, ReplyIdle, ReplyError)):
            self._downlink(action)
        elif isinstance(action, PostEsipa):
            self.spawn(self._post(action.eid, action.request_id, "esipa", action.function,
                                  self.backhaul.post_esipa(action)), f"ESipa {action.function}")
        elif isinstance(action, PostEs9):
            self.spawn(self._post(action.eid, action.request_id, "es9", action.function,
                                  self.backhaul.post_es9(action)), f"ES9+ {action.function}")
        elif isinstance(action, PostEs11):
            self.spawn(self._post(action.eid, action.request_id, "es11", action.function,
                                  self.backhaul.post_es11(action)), f"ES11 {action.function}")
        elif isinstance(action, StartTimer):
            self._start_timer(action)
        elif isinstance(action, CancelTimer):
            handle = self._timers.pop((action.eid, action.name), None)
            if handle is not None:
                handle.cancel()
        elif isinstance(action, StaleAnswer):
            self.metrics.stale_answers.inc(reason=action.reason)
            log.debug("answer to request %s of %s ignored: %s", action.request_id, action.eid.hex(),
                      action.reason, extra=log_fields(eid=action.eid))

    def _downlink(self, action: SendBatch | ReplyIdle | ReplyError) -> None:
        downlink: Downlink
        if isinstance(action, SendBatch):
            downlink = BatchMsg(action.batch)
        elif isinstance(action, ReplyIdle):
            downlink = Idle(action.retry_after_s)
        else:
            downlink = ErrorMsg(action.code, action.text)
        future = self._pending.get(action.eid)
        if future is None or future.done():
            self.metrics.errors.inc(kind="downlink-without-uplink")
            log.warning("%s for %s dropped: the device is not waiting for a downlink",
                        type(action).__name__, action.eid.hex(), extra=log_fields(eid=action.eid))
            return
        future.set_result(downlink)

    async def _post(self, eid: bytes, request_id: str, target: str, function: str,
                    call: Awaitable[bytes]) -> None:
        event: Event
        try:
            body = await call
        except GatewayError as exc:
            self.metrics.backhaul_requests.inc(target=target, function=function, outcome="failed")
            self.metrics.errors.inc(kind=type(exc).__name__)
            log.warning("%s %s for %s failed: %s", target, function, eid.hex(), exc,
                        extra=log_fields(eid=eid, operation=function))
            subject = reason = None
            if isinstance(exc, FunctionFailed):
                subject, reason = exc.subject_code, exc.reason_code
            retry_after = getattr(exc, "retry_after_s", None)
            if retry_after is None and hasattr(exc, "retry_at"):
                retry_after = max(0.0, float(exc.retry_at) - self.clock())
            event = BackhaulFailed(eid=eid, now=self.clock(), request_id=request_id,
                                   error_class=type(exc).__name__, retryable=is_retryable(exc), detail=str(exc),
                                   subject_code=subject, reason_code=reason,
                                   retry_after_s=None if retry_after is None else float(retry_after))
        else:
            self.metrics.backhaul_requests.inc(target=target, function=function, outcome="answered")
            event = BackhaulAnswered(eid=eid, now=self.clock(), request_id=request_id, body=body)
        await self.feed(event)

    def _start_timer(self, action: StartTimer) -> None:
        key = (action.eid, action.name)
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            self.spawn(self.feed(TimerFired(eid=action.eid, now=self.clock(), name=action.name)),
                       f"timer {action.name}")

        self._timers[key] = self.clock.call_at(action.at, fire)

    # --- tasks and draining --------------------------------------------------------------

    def spawn(self, coro: Awaitable[None], what: str) -> None:
        async def run() -> None:
            self._begin()
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except GatewayError as exc:
                self.metrics.errors.inc(kind=type(exc).__name__)
                log.error("%s failed: %s", what, exc)
            except Exception:
                self.metrics.errors.inc(kind="engine-bug")
                log.exception("%s failed", what)
            finally:
                self._end()

        task = asyncio.get_running_loop().create_task(run(), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _begin(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _end(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def pending_exchanges(self) -> int:
        return sum(not f.done() for f in self._pending.values())

    @property
    def timers(self) -> int:
        return len(self._timers)

    async def drain(self, timeout_s: float) -> bool:
        """Stop taking new uplinks and wait for in-flight work; True when it all finished."""
        self.draining = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    def release_pending(self) -> int:
        """Answer every device still waiting with Idle (stopping); how many there were."""
        released = 0
        for future in self._pending.values():
            if not future.done():
                future.set_result(Idle(self.options.stopping_retry_s))
                released += 1
        return released

    async def close(self) -> None:
        """Cancel whatever is left (after `drain`)."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self.release_pending()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- the northbound adapter ----------------------------------------------------------------


class HttpBackhaul:
    """`Backhaul` over the one HTTPS client (gateway.backhaul): ESipa to the eIM, ES9+ to SM-DP+s."""

    def __init__(self, http: BackhaulHttp, *, trust: TlsTrust, eim_trust: TlsTrust | None = None,
                 eim_admin_protocol: str = esipa.ADMIN_PROTOCOL, esipa_binding: str = "asn1",
                 esipa_timeout_s: float | None = None, es9_timeout_s: float | None = None,
                 es11_timeout_s: float | None = None) -> None:
        self.http = http
        self.trust = trust  # SM-DP+ and SM-DS
        self.eim_trust = eim_trust or trust  # the eIM: the same anchors, and a client certificate if any
        self.eim_admin_protocol = eim_admin_protocol
        self.esipa_binding = esipa_binding
        self.esipa_timeout_s = esipa_timeout_s
        self.es9_timeout_s = es9_timeout_s
        self.es11_timeout_s = es11_timeout_s
        self.servers: dict[str, Server] = {}   # every server posted to (for its breaker state)

    def _server(self, fqdn: str, trust: TlsTrust | None = None, admin_protocol: str = es9p.ADMIN_PROTOCOL) -> Server:
        server = Server.from_fqdn(fqdn, trust or self.trust, admin_protocol)
        self.servers.setdefault(server.base_url, server)
        return server

    def _eim_trust(self, action: PostEsipa) -> TlsTrust:
        """The configured trust, unless the eUICC's eIM configuration pins the eIM's TLS
        (trustedPublicKeyDataTls): then that certificate is its only anchor, or that key its key."""
        if action.tls_trust is None:
            return self.eim_trust
        kind, value = action.tls_trust
        if kind == "certificate":
            return dataclasses.replace(self.eim_trust, ca_file=None, ca_der=(value,))
        return dataclasses.replace(self.eim_trust, ca_file=None, ca_der=(), pinned_spki=value)

    async def post_esipa(self, action: PostEsipa) -> bytes:
        server = self._server(action.eim_fqdn, self._eim_trust(action), self.eim_admin_protocol)
        if self.esipa_binding == "json":
            # the engine speaks the ASN.1 binding; signed parts cross as their exact bytes
            function, body = esipa_binding.request_to_json(action.function, action.body)
            answer = await esipa_client.exchange_json(self.http, server, function, body,
                                                      timeout_s=self.esipa_timeout_s)
            return esipa_binding.answer_to_der(action.function, answer or b"")
        else:
            answer = await esipa_client.exchange_asn1(self.http, server, action.body, timeout_s=self.esipa_timeout_s)
        return answer or b""

    async def post_es9(self, action: PostEs9) -> bytes:
        return await self._post_json(action.smdp_address, es9p.es9p_path(action.function), action.body,
                                     self.es9_timeout_s, f"ES9+ {action.function}")

    async def post_es11(self, action: PostEs11) -> bytes:
        return await self._post_json(action.smds_address, es11.es11_path(action.function), action.body,
                                     self.es11_timeout_s, f"ES11 {action.function}")

    async def _post_json(self, address: str, path: str, body: bytes, timeout_s: float | None, what: str) -> bytes:
        reply = await self.http.post_json(self._server(address), path, body, timeout_s=timeout_s)
        if reply.status == 204 or not reply.body:
            return b""
        require_content_type(reply, "application/json", what)
        return reply.body


# --- helpers -------------------------------------------------------------------------------


def _status_json(status: Any) -> dict[str, Any]:
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in asdict(status).items()}


def _mark_inbox(s: Store, a: MarkInbox, now: float) -> None:
    entry = s.inbox.find(a.eid, a.key)
    if entry is None:
        # a polled package (not pushed): the engine names it by key; record it so its state is kept
        entry_id = s.inbox.enqueue(a.eid, a.key, INBOX_KIND_EIM_PACKAGE, b"", origin="poll", now=now).id
    else:
        entry_id = entry.id
    if a.state in ("running", "in_progress"):
        s.inbox.start(entry_id, now=now)
    elif a.state in ("done", "duplicate"):
        s.inbox.finish(entry_id, now=now)
    elif a.state == "queued":
        s.inbox.requeue(entry_id, now=now)
    else:
        raise DecodeError(f"unknown inbox state {a.state!r} from the engine", type_name="MarkInbox")


def _growth(stored: list[SaveSession | BackhaulWaiting | MarkInbox | Audit]) -> tuple[int, int]:
    """What a step adds to the deliveries waiting for the backhaul (entries, bytes), at least 0;
    a set named without `previous` replaces an unknown one: all of it is counted."""
    entries = size = 0
    for a in stored:
        if isinstance(a, BackhaulWaiting):
            before = a.previous or ()
            entries += max(len(a.waiting) - len(before), 0)
            size += max(sum(w.size for w in a.waiting) - sum(w.size for w in before), 0)
    return entries, size


def _origin(origin: str) -> tuple[str | None, bytes | None]:
    """Audit origin "eimId" or "eimId/<transaction id hex>" -> (eim id, transaction id)."""
    if not origin:
        return None, None
    eim, _, tx = origin.partition("/")
    try:
        return eim or None, bytes.fromhex(tx) if tx else None
    except ValueError:
        return origin, None


def profile_change(a: Audit) -> tuple[str, int] | None:
    """(event, sequence number) when `a` records an eUICC notification delivered and removed: the
    profile state change is then known to its server and gone from the eUICC."""
    if a.operation != "removeNotification" or a.result != "ok" or a.event is None or a.seq is None:
        return None
    return a.event, a.seq


def iccid_digits(iccid: bytes) -> str:
    """ICCID as printed: BCD with swapped nibbles, trailing F filler dropped (SGP.22 Iccid)."""
    return "".join(f"{b & 0x0F:x}{b >> 4:x}" for b in iccid).rstrip("f")


TAG_TRANSFER_EIM_PACKAGE = 0xBF4E
TAG_EUICC_PACKAGE_REQUEST = 0xBF51
TAG_EIM_ACKNOWLEDGEMENTS = 0xBF53


def _pushed_acknowledgements(body: bytes) -> list[int] | None:
    """The sequence numbers of a pushed TransferEimPackageRequest carrying EimAcknowledgements;
    None for any other package."""
    outer = tlv.read_tlv(body)
    if outer.tag != TAG_TRANSFER_EIM_PACKAGE or outer.end != len(body):
        return None
    inner = tlv.children(body, outer)
    if len(inner) != 1 or inner[0].tag != TAG_EIM_ACKNOWLEDGEMENTS:
        return None
    return [int(v) for v in codec.decode("EimAcknowledgements", body[inner[0].start:inner[0].end])]


def _pushed_package_identity(body: bytes) -> tuple[bytes, str, str]:
    """(EID, eimId, inbox key) of a pushed EsipaMessageFromEimToIpa.

    Only an EuiccPackageRequest names its eUICC (euiccPackageSigned.eidValue); a gateway
    serving many eUICCs cannot place the other package kinds, which eIMs deliver by poll
    (EimAcknowledgements are placed by what they acknowledge: _on_pushed_acknowledgements).
    """
    outer = tlv.read_tlv(body)
    if outer.tag != TAG_TRANSFER_EIM_PACKAGE or outer.end != len(body):
        raise DecodeError("not a TransferEimPackageRequest", type_name="EsipaMessageFromEimToIpa")
    inner = tlv.children(body, outer)
    if len(inner) != 1 or inner[0].tag != TAG_EUICC_PACKAGE_REQUEST:
        raise RemoteProtocolError("only an EuiccPackageRequest names its eUICC; push other packages by poll")
    value = codec.decode("EuiccPackageRequest", body[inner[0].start:inner[0].end])
    signed = value["euiccPackageSigned"]
    eid = bytes(signed["eidValue"])
    eim_id = str(signed["eimId"])
    tx = signed.get("eimTransactionId")
    key = transaction_key(eim_id, bytes(tx)) if tx is not None else package_key(body)
    return eid, eim_id, key
