"""The device-link protocol, version 1 (docs/device-link.md): messages and their CBOR encoding.

Theory of operation. A sleeping sensor's device agent wakes and sends one *uplink* (Hello with
its status, or Result with the responses to the last batch); the gateway answers it with exactly
one *downlink* (the next Batch, Idle "come back in N s", or ErrorMsg). One exchange is one round
trip, whatever carries it (CoAP POST, MQTT request/response).

Every message on the wire is a CBOR *sequence* (RFC 8742) of maps with small integer keys. The
first item is the header; it carries the protocol version (key 0) and the message type (key 1).
A Batch header is followed by one item per Step and a Result header by one item per StepResult,
so an agent applies a batch step by step as it streams in, holding only one step (at most its
buffer size) at a time, and streams its results out the same way. `DownlinkStream` is that
incremental decoder.

Decoding is strict: an unknown version or message type, a key that is not defined, a value of
the wrong type or out of range, a field over its size limit, a tag, an indefinite length or
trailing bytes all raise `DecodeError` (or one of its subclasses below, which carry the
`ErrorCode` to put in the ErrorMsg reply: see `error_reply`). This module is pure: it is
imported by the protocol core, which does no I/O.
"""

from __future__ import annotations

import enum
import io
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import cbor2

from gateway.errors import DecodeError, LocalProtocolError

VERSION: Final = 1

# Size limits. A short APDU is at most 5 header bytes + 255 data bytes + Le (ISO 7816-3); a
# chained response (61xx + GET RESPONSE) is concatenated by the agent, hence the larger bound.
MAX_APDU: Final = 261
MAX_RESPONSE_DATA: Final = 65536
MAX_APDUS_PER_STEP: Final = 64
MAX_STEPS: Final = 4096
MAX_CONTINUE_SW: Final = 16
MAX_TEXT: Final = 256
MAX_MESSAGE: Final = 2 * 1024 * 1024
EID_LENGTH: Final = 16
MAX_RETRY_AFTER_S: Final = 7 * 24 * 3600

REFRESH_MODEM_RESET: Final = "modem-reset"
REFRESH_UICC_RESET: Final = "uicc-reset"
STOPPED_SW: Final = "unexpected-sw"  # a step's final SW was not in its continue_sw
STOPPED_DATA: Final = "data"  # stop_if_data: a step answered with data
STOPPED_CARD: Final = "card-error"  # the eUICC backend failed (no answer, channel refused)


class ErrorCode(enum.IntEnum):
    UNSUPPORTED_VERSION = 1
    MALFORMED = 2
    TOO_LARGE = 3
    FORBIDDEN = 4  # the uplink's EID is not the one bound to the link identity
    UNKNOWN_DEVICE = 5
    UNEXPECTED = 6  # well formed but not expected now (a Result for another batch)
    INTERNAL = 7  # the gateway failed; retry later


class UnsupportedVersion(DecodeError):
    code = ErrorCode.UNSUPPORTED_VERSION


class MessageTooLarge(DecodeError):
    code = ErrorCode.TOO_LARGE


# --- messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One ES10 function call (one STORE DATA sequence) or any APDU sequence."""

    apdus: tuple[bytes, ...]
    continue_sw: tuple[int, ...] = (0x9000,)
    stop_if_data: bool = False


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: int
    steps: tuple[Step, ...]
    aid: bytes | None = None
    refresh: str | None = None
    # the gateway's estimate of the size of the downlink that will answer this batch's Result:
    # lets a CoAP agent request that many Block2 blocks together with its uplink
    next_size_hint: int | None = None


@dataclass(frozen=True, slots=True)
class StepResult:
    data: bytes
    sw: int


@dataclass(frozen=True, slots=True)
class BatchResult:
    batch_id: int
    results: tuple[StepResult, ...]
    stopped: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    eid: bytes
    imei: str | None = None
    plmn: str | None = None
    signal_dbm: int | None = None
    attach_failures: int = 0
    agent_version: str = ""
    buffer_size: int = 4096
    max_batch_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Hello:
    status: DeviceStatus


@dataclass(frozen=True, slots=True)
class Result:
    result: BatchResult
    status: DeviceStatus | None = None


@dataclass(frozen=True, slots=True)
class BatchMsg:
    batch: Batch


@dataclass(frozen=True, slots=True)
class Idle:
    retry_after_s: int


@dataclass(frozen=True, slots=True)
class ErrorMsg:
    code: int
    text: str


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The first item of a streamed Batch: what the agent needs before the first step."""

    batch_id: int
    step_count: int
    aid: bytes | None = None
    refresh: str | None = None
    next_size_hint: int | None = None


Uplink: TypeAlias = Hello | Result
Downlink: TypeAlias = BatchMsg | Idle | ErrorMsg


def uplink_eid(uplink: Uplink) -> bytes | None:
    """The EID an uplink claims, if it carries one (the link adapter compares it to its binding)."""
    status = uplink.status
    return status.eid if status is not None else None


# --- wire layout (see the CDDL in docs/device-link.md) ------------------------------------

K_VERSION, K_TYPE = 0, 1
T_HELLO, T_RESULT, T_BATCH, T_IDLE, T_ERROR = 1, 2, 16, 17, 18
_TYPE_NAMES = {T_HELLO: "Hello", T_RESULT: "Result", T_BATCH: "Batch", T_IDLE: "Idle", T_ERROR: "ErrorMsg"}

# Batch header / Result header / Idle / ErrorMsg keys
K_BATCH_ID, K_COUNT, K_AID, K_REFRESH, K_STOPPED, K_STATUS = 2, 3, 4, 5, 6, 7
K_NEXT_SIZE_HINT = 6  # in a Batch header (K_STOPPED is a Result header key)
K_RETRY_AFTER = 2
K_CODE, K_TEXT = 2, 3
# Step item keys
S_APDUS, S_CONTINUE_SW, S_STOP_IF_DATA = 0, 1, 2
# StepResult item keys
R_DATA, R_SW = 0, 1
# DeviceStatus keys
D_EID, D_IMEI, D_PLMN, D_SIGNAL, D_FAILURES, D_VERSION, D_BUFFER, D_MAX_BATCH = range(8)

_REFRESH_CODES = {REFRESH_MODEM_RESET: 1, REFRESH_UICC_RESET: 2}
_STOPPED_CODES = {STOPPED_SW: 1, STOPPED_DATA: 2, STOPPED_CARD: 3}
_REFRESH_NAMES = {v: k for k, v in _REFRESH_CODES.items()}
_STOPPED_NAMES = {v: k for k, v in _STOPPED_CODES.items()}

_U32 = 0xFFFFFFFF
_U63 = (1 << 63) - 1


def _dumps(item: object) -> bytes:
    return cbor2.dumps(item, canonical=True)


def _status_item(s: DeviceStatus) -> dict[int, object]:
    item: dict[int, object] = {D_EID: s.eid, D_FAILURES: s.attach_failures,
                               D_VERSION: s.agent_version, D_BUFFER: s.buffer_size}
    if s.imei is not None:
        item[D_IMEI] = s.imei
    if s.plmn is not None:
        item[D_PLMN] = s.plmn
    if s.signal_dbm is not None:
        item[D_SIGNAL] = s.signal_dbm
    if s.max_batch_bytes is not None:
        item[D_MAX_BATCH] = s.max_batch_bytes
    return item


def _check_encodable(item: object, name: str) -> None:
    # Encoding runs our own values through the same validation as decoding, so the gateway can
    # never send what an agent would refuse.
    try:
        _roundtrip_check(item, name)
    except DecodeError as exc:
        raise LocalProtocolError(f"cannot encode {name}: {exc}") from exc


def _roundtrip_check(item: object, name: str) -> None:
    _VALIDATORS[name](_as_map(item, name))


def encode_step(step: Step) -> bytes:
    item: dict[int, object] = {S_APDUS: list(step.apdus), S_CONTINUE_SW: list(step.continue_sw)}
    if step.stop_if_data:
        item[S_STOP_IF_DATA] = True
    _check_encodable(item, "Step")
    return _dumps(item)


def encode_batch_header(header: BatchHeader) -> bytes:
    item: dict[int, object] = {K_VERSION: VERSION, K_TYPE: T_BATCH,
                               K_BATCH_ID: header.batch_id, K_COUNT: header.step_count}
    if header.aid is not None:
        item[K_AID] = header.aid
    if header.refresh is not None:
        if header.refresh not in _REFRESH_CODES:
            raise LocalProtocolError(f"unknown refresh {header.refresh!r}")
        item[K_REFRESH] = _REFRESH_CODES[header.refresh]
    if header.next_size_hint is not None:
        item[K_NEXT_SIZE_HINT] = header.next_size_hint
    _check_encodable(item, "Batch")
    return _dumps(item)


def encode_step_result(result: StepResult) -> bytes:
    item = {R_DATA: result.data, R_SW: result.sw}
    _check_encodable(item, "StepResult")
    return _dumps(item)


def encode_result_header(result: BatchResult, status: DeviceStatus | None) -> bytes:
    item: dict[int, object] = {K_VERSION: VERSION, K_TYPE: T_RESULT,
                               K_BATCH_ID: result.batch_id, K_COUNT: len(result.results)}
    if result.stopped is not None:
        if result.stopped not in _STOPPED_CODES:
            raise LocalProtocolError(f"unknown stop reason {result.stopped!r}")
        item[K_STOPPED] = _STOPPED_CODES[result.stopped]
    if status is not None:
        item[K_STATUS] = _status_item(status)
    _check_encodable(item, "Result")
    return _dumps(item)


def encode_uplink(msg: Uplink) -> bytes:
    if isinstance(msg, Hello):
        item = {K_VERSION: VERSION, K_TYPE: T_HELLO, K_STATUS: _status_item(msg.status)}
        _check_encodable(item, "Hello")
        return _dumps(item)
    if isinstance(msg, Result):
        r = msg.result
        return encode_result_header(r, msg.status) + b"".join(encode_step_result(s) for s in r.results)
    raise LocalProtocolError(f"not an uplink: {type(msg).__name__}")


def encode_downlink(msg: Downlink) -> bytes:
    if isinstance(msg, BatchMsg):
        return b"".join(batch_step_items(msg.batch))
    if isinstance(msg, Idle):
        item: dict[int, object] = {K_VERSION: VERSION, K_TYPE: T_IDLE, K_RETRY_AFTER: msg.retry_after_s}
        _check_encodable(item, "Idle")
        return _dumps(item)
    if isinstance(msg, ErrorMsg):
        item = {K_VERSION: VERSION, K_TYPE: T_ERROR, K_CODE: msg.code, K_TEXT: msg.text[:MAX_TEXT]}
        _check_encodable(item, "ErrorMsg")
        return _dumps(item)
    raise LocalProtocolError(f"not a downlink: {type(msg).__name__}")


def error_reply(exc: BaseException) -> ErrorMsg:
    """The ErrorMsg that answers an uplink which failed with `exc`."""
    code = getattr(exc, "code", None)
    if isinstance(code, ErrorCode):
        return ErrorMsg(int(code), str(exc)[:MAX_TEXT])
    if isinstance(exc, DecodeError):
        return ErrorMsg(int(ErrorCode.MALFORMED), str(exc)[:MAX_TEXT])
    return ErrorMsg(int(ErrorCode.INTERNAL), "internal error")


# --- strict CBOR decoding ------------------------------------------------------------------


def _reject_tag(decoder: object, tag: object = None) -> object:
    raise ValueError("CBOR tags are not used in this protocol")


_SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260,
                  261, 262, 263, 1004, 55799)
_NO_TAGS: dict[int, Callable[[Any], Any]] = {t: _reject_tag for t in _SEMANTIC_TAGS}


def _items(data: bytes, what: str) -> Iterator[tuple[object, int]]:
    """Each item of a CBOR sequence with the offset where it starts."""
    fp = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(fp, tag_hook=_reject_tag, semantic_decoders=_NO_TAGS, max_depth=4,
                                allow_indefinite=False, allow_duplicate_keys=False)
    while (start := fp.tell()) < len(data):
        try:
            item = decoder.decode()
        except cbor2.CBORDecodeEOF:
            raise DecodeError("truncated CBOR item", type_name=what, offset=start) from None
        except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
            raise DecodeError(f"malformed CBOR: {exc}", type_name=what, offset=start) from None
        yield item, start


def _as_map(item: object, what: str) -> Mapping[object, object]:
    if not isinstance(item, dict):
        raise DecodeError(f"expected a CBOR map, got {type(item).__name__}", type_name=what)
    return item


def _only_keys(m: Mapping[object, object], allowed: Container[int], what: str) -> None:
    for k in m:  # a tuple or range of a few keys: membership costs less than building a set
        if type(k) is not int or k not in allowed:
            raise DecodeError(f"unknown key {k!r}", type_name=what)


def _int(m: Mapping[object, object], key: int, what: str, lo: int, hi: int,
         required: bool = True) -> int | None:
    if key not in m:
        if required:
            raise DecodeError(f"missing key {key}", type_name=what)
        return None
    v = m[key]
    if type(v) is not int:
        raise DecodeError(f"key {key}: expected an integer, got {type(v).__name__}", type_name=what)
    if not lo <= v <= hi:
        raise DecodeError(f"key {key}: {v} out of range [{lo}, {hi}]", type_name=what)
    return v


def _bytes(v: object, what: str, name: str, max_len: int, min_len: int = 0) -> bytes:
    if type(v) is not bytes:
        raise DecodeError(f"{name}: expected a byte string, got {type(v).__name__}", type_name=what)
    if len(v) > max_len:
        raise MessageTooLarge(f"{name}: {len(v)} bytes exceeds {max_len}", type_name=what)
    if len(v) < min_len:
        raise DecodeError(f"{name}: {len(v)} bytes, at least {min_len} expected", type_name=what)
    return v


def _text(m: Mapping[object, object], key: int, what: str, required: bool = False) -> str | None:
    if key not in m:
        if required:
            raise DecodeError(f"missing key {key}", type_name=what)
        return None
    v = m[key]
    if type(v) is not str:
        raise DecodeError(f"key {key}: expected a text string, got {type(v).__name__}", type_name=what)
    if len(v) > MAX_TEXT:
        raise MessageTooLarge(f"key {key}: {len(v)} characters exceeds {MAX_TEXT}", type_name=what)
    return v


def _list(v: object, what: str, name: str, max_len: int) -> list[object]:
    if type(v) is not list:
        raise DecodeError(f"{name}: expected an array, got {type(v).__name__}", type_name=what)
    if len(v) > max_len:
        raise MessageTooLarge(f"{name}: {len(v)} elements exceeds {max_len}", type_name=what)
    return v


def _check_version(m: Mapping[object, object], what: str) -> int:
    version = m.get(K_VERSION)
    if type(version) is not int:
        raise DecodeError("missing or non-integer version (key 0)", type_name=what)
    if version != VERSION:
        raise UnsupportedVersion(f"unsupported protocol version {version}, this side speaks {VERSION}",
                                 type_name=what)
    msg_type = m.get(K_TYPE)
    if type(msg_type) is not int or msg_type not in _TYPE_NAMES:
        raise DecodeError(f"unknown message type {msg_type!r}", type_name=what)
    return msg_type


def _decode_status(v: object) -> DeviceStatus:
    what = "DeviceStatus"
    m = _as_map(v, what)
    _only_keys(m, range(8), what)
    if D_EID not in m:
        raise DecodeError("missing eid", type_name=what)
    eid = _bytes(m[D_EID], what, "eid", EID_LENGTH, EID_LENGTH)
    return DeviceStatus(
        eid=eid,
        imei=_text(m, D_IMEI, what),
        plmn=_text(m, D_PLMN, what),
        signal_dbm=_int(m, D_SIGNAL, what, -255, 255, required=False),
        attach_failures=_int(m, D_FAILURES, what, 0, _U32) or 0,
        agent_version=_text(m, D_VERSION, what, required=True) or "",
        buffer_size=_int(m, D_BUFFER, what, 256, _U32) or 0,
        max_batch_bytes=_int(m, D_MAX_BATCH, what, 1, _U32, required=False),
    )


def _decode_step(item: object) -> Step:
    what = "Step"
    m = _as_map(item, what)
    _only_keys(m, (S_APDUS, S_CONTINUE_SW, S_STOP_IF_DATA), what)
    if S_APDUS not in m:
        raise DecodeError("missing apdus", type_name=what)
    raw_apdus = _list(m[S_APDUS], what, "apdus", MAX_APDUS_PER_STEP)
    if not raw_apdus:
        raise DecodeError("a step needs at least one APDU", type_name=what)
    apdus = tuple(_bytes(a, what, "apdu", MAX_APDU, 4) for a in raw_apdus)
    raw_sws = _list(m.get(S_CONTINUE_SW, [0x9000]), what, "continue_sw", MAX_CONTINUE_SW)
    sws = []
    for sw in raw_sws:
        if type(sw) is not int or not 0 <= sw <= 0xFFFF:
            raise DecodeError(f"continue_sw: {sw!r} is not a status word", type_name=what)
        sws.append(sw)
    stop = m.get(S_STOP_IF_DATA, False)
    if type(stop) is not bool:
        raise DecodeError("stop_if_data: expected a boolean", type_name=what)
    return Step(apdus, tuple(sws), stop)


def _decode_step_result(item: object) -> StepResult:
    what = "StepResult"
    m = _as_map(item, what)
    _only_keys(m, (R_DATA, R_SW), what)
    if R_DATA not in m:
        raise DecodeError("missing data", type_name=what)
    data = _bytes(m[R_DATA], what, "data", MAX_RESPONSE_DATA)
    sw = _int(m, R_SW, what, 0, 0xFFFF)
    assert sw is not None
    return StepResult(data, sw)


def _decode_batch_header(m: Mapping[object, object]) -> BatchHeader:
    what = "Batch"
    _only_keys(m, (K_VERSION, K_TYPE, K_BATCH_ID, K_COUNT, K_AID, K_REFRESH, K_NEXT_SIZE_HINT), what)
    batch_id = _int(m, K_BATCH_ID, what, 0, _U63)
    count = _int(m, K_COUNT, what, 0, MAX_STEPS)
    assert batch_id is not None and count is not None
    aid = _bytes(m[K_AID], what, "aid", 16, 5) if K_AID in m else None
    refresh_code = _int(m, K_REFRESH, what, 1, len(_REFRESH_CODES), required=False)
    refresh = _REFRESH_NAMES[refresh_code] if refresh_code is not None else None
    hint = _int(m, K_NEXT_SIZE_HINT, what, 0, MAX_MESSAGE, required=False)
    return BatchHeader(batch_id, count, aid, refresh, hint)


def _decode_result_header(m: Mapping[object, object]) -> tuple[int, int, str | None, DeviceStatus | None]:
    what = "Result"
    _only_keys(m, (K_VERSION, K_TYPE, K_BATCH_ID, K_COUNT, K_STOPPED, K_STATUS), what)
    batch_id = _int(m, K_BATCH_ID, what, 0, _U63)
    count = _int(m, K_COUNT, what, 0, MAX_STEPS)
    assert batch_id is not None and count is not None
    stopped_code = _int(m, K_STOPPED, what, 1, len(_STOPPED_CODES), required=False)
    stopped = _STOPPED_NAMES[stopped_code] if stopped_code is not None else None
    status = _decode_status(m[K_STATUS]) if K_STATUS in m else None
    return batch_id, count, stopped, status


def _decode_idle(m: Mapping[object, object]) -> Idle:
    _only_keys(m, (K_VERSION, K_TYPE, K_RETRY_AFTER), "Idle")
    retry = _int(m, K_RETRY_AFTER, "Idle", 0, MAX_RETRY_AFTER_S)
    assert retry is not None
    return Idle(retry)


def _decode_error(m: Mapping[object, object]) -> ErrorMsg:
    _only_keys(m, (K_VERSION, K_TYPE, K_CODE, K_TEXT), "ErrorMsg")
    code = _int(m, K_CODE, "ErrorMsg", 0, 0xFFFF)
    assert code is not None
    return ErrorMsg(code, _text(m, K_TEXT, "ErrorMsg", required=True) or "")


def _decode_hello(m: Mapping[object, object]) -> Hello:
    _only_keys(m, (K_VERSION, K_TYPE, K_STATUS), "Hello")
    if K_STATUS not in m:
        raise DecodeError("missing status", type_name="Hello")
    return Hello(_decode_status(m[K_STATUS]))


def _validate_header(name: str) -> Callable[[Mapping[object, object]], object]:
    def check(m: Mapping[object, object]) -> object:
        _check_version(m, name)
        return {"Batch": _decode_batch_header, "Result": _decode_result_header, "Idle": _decode_idle,
                "ErrorMsg": _decode_error, "Hello": _decode_hello}[name](m)
    return check


_VALIDATORS: dict[str, Callable[[Mapping[object, object]], object]] = {
    "Step": _decode_step, "StepResult": _decode_step_result,
    **{n: _validate_header(n) for n in ("Batch", "Result", "Idle", "ErrorMsg", "Hello")},
}


def _check_size(data: bytes, what: str) -> None:
    if type(data) is not bytes:
        raise DecodeError(f"expected bytes, got {type(data).__name__}", type_name=what)
    if len(data) > MAX_MESSAGE:
        raise MessageTooLarge(f"{len(data)} bytes exceeds {MAX_MESSAGE}", type_name=what)
    if not data:
        raise DecodeError("empty message", type_name=what)


def _header(first: object, what: str, allowed: Iterable[int]) -> tuple[int, Mapping[object, object]]:
    m = _as_map(first, what)
    msg_type = _check_version(m, what)
    if msg_type not in allowed:
        raise DecodeError(f"{_TYPE_NAMES[msg_type]} is not an {what.lower()}", type_name=what)
    return msg_type, m


def _decode_sequence(items: Iterator[tuple[object, int]], count: int, what: str,
                     decode_one: Callable[[object], Any]) -> list[Any]:
    out: list[Any] = []
    for item, offset in items:
        if len(out) == count:
            raise DecodeError(f"more than the {count} items announced", type_name=what, offset=offset)
        out.append(decode_one(item))
    if len(out) != count:
        raise DecodeError(f"{len(out)} items, {count} announced", type_name=what)
    return out


def decode_uplink(data: bytes) -> Uplink:
    """Decode an uplink (Hello or Result); DecodeError (with an ErrorCode) on anything invalid."""
    _check_size(data, "Uplink")
    items = _items(data, "Uplink")
    first = next(items)[0]
    msg_type, m = _header(first, "Uplink", (T_HELLO, T_RESULT))
    if msg_type == T_HELLO:
        hello = _decode_hello(m)
        _decode_sequence(items, 0, "Hello", _decode_step_result)
        return hello
    batch_id, count, stopped, status = _decode_result_header(m)
    results = _decode_sequence(items, count, "Result", _decode_step_result)
    return Result(BatchResult(batch_id, tuple(results), stopped), status)


def decode_downlink(data: bytes) -> Downlink:
    """Decode a whole downlink at once (the gateway's tests; agents use DownlinkStream)."""
    stream = DownlinkStream(max_item=len(data) + 1)
    events = stream.feed(data) + stream.close()
    head = events[0]
    if isinstance(head, BatchHeader):
        steps = tuple(e for e in events[1:] if isinstance(e, Step))
        return BatchMsg(Batch(head.batch_id, steps, head.aid, head.refresh, head.next_size_hint))
    assert isinstance(head, (Idle, ErrorMsg))
    return head


StreamEvent: TypeAlias = BatchHeader | Step | Idle | ErrorMsg


@dataclass(slots=True)
class DownlinkStream:
    """Incremental decoder of one downlink: feed it bytes as they arrive, get what is complete.

    Holds at most `max_item` undecoded bytes (the agent's buffer): a step item larger than
    that is refused, as is anything after the last announced step.
    """

    max_item: int = 4096
    _buf: bytearray = field(default_factory=bytearray)
    _offset: int = 0
    _header: BatchHeader | Idle | ErrorMsg | None = None
    _steps_seen: int = 0
    _done: bool = False

    @property
    def header(self) -> BatchHeader | Idle | ErrorMsg | None:
        return self._header

    @property
    def complete(self) -> bool:
        return self._done

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        self._buf += chunk
        events: list[StreamEvent] = []
        while self._buf:
            fp = io.BytesIO(self._buf)
            decoder = cbor2.CBORDecoder(fp, tag_hook=_reject_tag, semantic_decoders=_NO_TAGS,
                                        max_depth=4, allow_indefinite=False, allow_duplicate_keys=False)
            try:
                item = decoder.decode()
            except cbor2.CBORDecodeEOF:
                if len(self._buf) > self.max_item:
                    raise MessageTooLarge(f"an item exceeds the {self.max_item}-byte buffer",
                                          type_name="Downlink", offset=self._offset) from None
                break
            except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError,
                    MemoryError) as exc:
                raise DecodeError(f"malformed CBOR: {exc}", type_name="Downlink",
                                  offset=self._offset) from None
            used = fp.tell()
            if used > self.max_item:
                raise MessageTooLarge(f"an item of {used} bytes exceeds the {self.max_item}-byte buffer",
                                      type_name="Downlink", offset=self._offset)
            events.append(self._accept(item))
            del self._buf[:used]
            self._offset += used
        return events

    def close(self) -> list[StreamEvent]:
        """The downlink ended: DecodeError if it is incomplete."""
        if self._buf:
            raise DecodeError("truncated CBOR item", type_name="Downlink", offset=self._offset)
        if not self._done:
            if self._header is None:
                raise DecodeError("empty message", type_name="Downlink")
            assert isinstance(self._header, BatchHeader)
            raise DecodeError(f"{self._steps_seen} steps, {self._header.step_count} announced",
                              type_name="Batch")
        return []

    def _accept(self, item: object) -> StreamEvent:
        if self._done:
            raise DecodeError("data after the end of the message", type_name="Downlink", offset=self._offset)
        if self._header is None:
            msg_type, m = _header(item, "Downlink", (T_BATCH, T_IDLE, T_ERROR))
            head: BatchHeader | Idle | ErrorMsg
            if msg_type == T_BATCH:
                head = _decode_batch_header(m)
                self._done = head.step_count == 0
            else:
                head = _decode_idle(m) if msg_type == T_IDLE else _decode_error(m)
                self._done = True
            self._header = head
            return head
        step = _decode_step(item)
        self._steps_seen += 1
        assert isinstance(self._header, BatchHeader)
        self._done = self._steps_seen == self._header.step_count
        return step


def batch_header(batch: Batch) -> BatchHeader:
    """The header a streamed copy of `batch` starts with."""
    return BatchHeader(batch.batch_id, len(batch.steps), batch.aid, batch.refresh, batch.next_size_hint)


def batch_step_items(batch: Batch) -> list[bytes]:
    """The encoded items of a batch (header first), for links that send them one by one."""
    return [encode_batch_header(batch_header(batch))] + [encode_step(s) for s in batch.steps]
