"""The shape every procedure state machine shares (h11 `_state.py` style).

Theory of operation. A procedure is a small object holding a state name (a stable string,
stored in SQLite) and a context dict of plain values (bytes, str, int, lists, dicts: what
CBOR stores). It reacts to four kinds of input:

    START    the session started it
    DEVICE   the eUICC answered the ES10b calls it asked for (`DeviceAnswer`)
    ANSWER   a backhaul request it made was answered (`Answer`: tag + body)
    FAILED   a backhaul request it made failed for good (`Failure`): the session already
             retried what was retryable, with gateway/core/retry.py; or the session stops
             it (an operator's cancel, a call too large for the device): a `Failure` whose
             state has no FAILED row is a failure like any other, named by its class

`TABLE` maps (state, input) to the handler method and the states it may lead to: the one
place that says what can happen. `feed` looks the pair up. A pair that is not in the table,
or a handler raising a `GatewayError` (a malformed answer, a refused request), is a
*failure*: if the table has a (state, FAILURE) row, its handler cleans up (CancelSession
after AuthenticateServer) and leads where that row allows; otherwise the machine goes to
`ERROR` and `on_error` says what to report (an error result for the eIM). A handler
returning a state its row does not allow is a bug (LocalProtocolError).

Handlers return outputs for the session: `DeviceWork` (ES10b calls), `Request` (one
backhaul call, answered later with the same tag), `Finish`, `Note` (audit), `Retry` (an
answer carried a transient error: same state, the request goes again later).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from gateway.core.config import EngineConfig
from gateway.errors import GatewayError, LocalProtocolError, is_retryable

START = "start"
DEVICE = "device"
ANSWER = "answer"
FAILED = "failed"
FAILURE = "failure"   # internal: a handler failed; a row for it names the cleanup

ERROR = "ERROR"
DONE = "DONE"
INITIAL = "INITIAL"

Ctx: TypeAlias = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Call:
    """One ES10b function call: `request` is its DER (or a BPP segment when `segment`)."""

    name: str
    request: bytes
    segment: bool = False      # a BPP segment: a response with data ends the batch (stop_if_data)


@dataclass(frozen=True, slots=True)
class DeviceWork:
    calls: tuple[Call, ...]
    refresh: str | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """One backhaul call: `target` "esipa" (eIM `server` = eimId) or "es9" (SM-DP+ address)."""

    tag: str
    target: str
    server: str
    function: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Finish:
    outcome: str                        # "ok" | "failed" | "cancelled"
    detail: str = ""
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Note:
    operation: str
    result: str
    detail: str = ""
    iccid: bytes | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """The server answered a request with a transient error (e.g. ES9+ reason 4.1, 5.x):
    the state does not change; the session sends the same request again after a backoff."""

    tag: str
    error_class: str
    detail: str


Output: TypeAlias = DeviceWork | Request | Finish | Note | Retry


@dataclass(frozen=True, slots=True)
class Reply:
    """One eUICC response: data and status word, as the agent returned them."""

    data: bytes
    sw: int


@dataclass(frozen=True, slots=True)
class DeviceAnswer:
    replies: tuple[Reply, ...]     # fewer than the calls when the batch stopped early
    stopped: str | None = None     # the batch's stop reason, or "lost" (the device lost the batch)


@dataclass(frozen=True, slots=True)
class Answer:
    tag: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Failure:
    tag: str
    error_class: str
    detail: str
    retryable: bool = False
    reason_code: str | None = None


@dataclass(frozen=True, slots=True)
class Env:
    """What a procedure may read about its device and the gateway; never mutated by it."""

    eid: bytes
    now: float
    config: EngineConfig
    eims: tuple[Mapping[str, Any], ...] = ()
    imei: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    handler: str
    targets: frozenset[str]


def row(handler: str, *targets: str) -> Transition:
    return Transition(handler, frozenset(targets) | {ERROR})


class Procedure:
    """Base of every procedure: see the module docstring."""

    KIND: ClassVar[str] = ""
    TABLE: ClassVar[Mapping[tuple[str, str], Transition]] = {}
    # states whose ES10b calls only read: if the device lost their batch, it is sent again
    REPEATABLE: ClassVar[frozenset[str]] = frozenset()
    # states no transition leads to any more, kept (with their rows) so a session a previous
    # version saved in one of them still finishes
    LEGACY: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, state: str = INITIAL, ctx: Ctx | None = None) -> None:
        self.state = state
        self.ctx: Ctx = dict(ctx) if ctx is not None else {}

    @classmethod
    def states(cls) -> frozenset[str]:
        found = {INITIAL, ERROR}
        for (state, _), t in cls.TABLE.items():
            found.add(state)
            found.update(t.targets)
        return frozenset(found)

    def next_downlink_hint(self, config: EngineConfig) -> int | None:
        """The expected size of the downlink after the batch now being sent, when it will be
        large (the device link may fetch it faster knowing: Batch.next_size_hint)."""
        return None

    @property
    def finished(self) -> bool:
        return self.state in (DONE, ERROR)

    def feed(self, env: Env, kind: str, payload: object = None) -> list[Output]:
        if isinstance(payload, Failure):
            self.ctx["failure_class"] = payload.error_class   # the cleanup may depend on it
        transition = self.TABLE.get((self.state, kind))
        if transition is None:
            if isinstance(payload, Failure):    # a failure from outside the table (operator, device limits)
                return self._fail(env, f"{payload.error_class}: {payload.detail}")
            return self._fail(env, f"{kind} not expected in state {self.state}")
        handler: Callable[[Env, object], tuple[str, list[Output]]] = getattr(self, transition.handler)
        try:
            target, outputs = handler(env, payload)
        except GatewayError as exc:
            if kind == ANSWER and is_retryable(exc) and isinstance(payload, Answer):
                return [Retry(payload.tag, type(exc).__name__, str(exc))]
            return self._fail(env, f"{type(exc).__name__}: {exc}")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            # a decoded value without a field we rely on: the peer sent something we cannot use
            return self._fail(env, f"unusable answer in state {self.state}: {type(exc).__name__}: {exc}")
        if target not in transition.targets:
            raise LocalProtocolError(f"{self.KIND}: {self.state} -> {target} is not in the table")
        self.state = target
        return outputs

    def _fail(self, env: Env, why: str) -> list[Output]:
        previous = self.state
        self.ctx["error"] = why
        cleanup = self.TABLE.get((previous, FAILURE))
        if cleanup is not None:
            handler: Callable[[Env, object], tuple[str, list[Output]]] = getattr(self, cleanup.handler)
            try:
                target, outputs = handler(env, why)
            except (GatewayError, KeyError, TypeError, ValueError, IndexError) as exc:
                why = f"{why}; cleanup failed: {type(exc).__name__}: {exc}"
            else:
                if target not in cleanup.targets:
                    raise LocalProtocolError(f"{self.KIND}: {previous} -> {target} is not in the table")
                self.state = target
                if target == ERROR and not any(isinstance(o, Finish) for o in outputs):
                    outputs.append(Finish("failed", why))
                return outputs
        self.state = ERROR
        outputs = self.on_error(env, previous, why)
        if not any(isinstance(o, Finish) for o in outputs):
            outputs.append(Finish("failed", why))
        return outputs

    def on_error(self, env: Env, previous: str, why: str) -> list[Output]:
        """What ERROR reports when no (state, FAILURE) row names a cleanup (a result, a note)."""
        return [Finish("failed", why)]
