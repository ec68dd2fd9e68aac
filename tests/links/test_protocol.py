"""Device-link protocol v1: CBOR round trips, streaming, strict decoding, fuzz."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import DecodeError, LocalProtocolError
from gateway.links import protocol as p

EID = bytes.fromhex("89049032123451234512345678901235")

apdus = st.binary(min_size=4, max_size=p.MAX_APDU)
steps = st.builds(
    p.Step,
    apdus=st.lists(apdus, min_size=1, max_size=6).map(tuple),
    continue_sw=st.lists(st.integers(0, 0xFFFF), max_size=4).map(tuple),
    stop_if_data=st.booleans(),
)
batches = st.builds(
    p.Batch,
    batch_id=st.integers(0, (1 << 63) - 1),
    steps=st.lists(steps, max_size=8).map(tuple),
    aid=st.none() | st.binary(min_size=5, max_size=16),
    refresh=st.sampled_from([None, p.REFRESH_MODEM_RESET, p.REFRESH_UICC_RESET]),
    next_size_hint=st.none() | st.integers(0, p.MAX_MESSAGE),
)
short_text = st.text(max_size=40)
statuses = st.builds(
    p.DeviceStatus,
    eid=st.binary(min_size=16, max_size=16),
    imei=st.none() | short_text,
    plmn=st.none() | short_text,
    signal_dbm=st.none() | st.integers(-255, 255),
    attach_failures=st.integers(0, 0xFFFFFFFF),
    agent_version=short_text,
    buffer_size=st.integers(256, 1 << 20),
    max_batch_bytes=st.none() | st.integers(1, 1 << 20),
)
results = st.builds(
    p.BatchResult,
    batch_id=st.integers(0, (1 << 63) - 1),
    results=st.lists(st.builds(p.StepResult, data=st.binary(max_size=600), sw=st.integers(0, 0xFFFF)),
                     max_size=8).map(tuple),
    stopped=st.sampled_from([None, p.STOPPED_SW, p.STOPPED_DATA, p.STOPPED_CARD]),
)
uplinks = st.builds(p.Hello, status=statuses) | st.builds(p.Result, result=results,
                                                         status=st.none() | statuses)
downlinks = (st.builds(p.BatchMsg, batch=batches)
             | st.builds(p.Idle, retry_after_s=st.integers(0, p.MAX_RETRY_AFTER_S))
             | st.builds(p.ErrorMsg, code=st.integers(0, 0xFFFF), text=short_text))


@given(uplinks)
def test_every_uplink_survives_an_encode_decode_round_trip(msg: p.Uplink) -> None:
    assert p.decode_uplink(p.encode_uplink(msg)) == msg


@given(downlinks)
def test_every_downlink_survives_an_encode_decode_round_trip(msg: p.Downlink) -> None:
    assert p.decode_downlink(p.encode_downlink(msg)) == msg


@given(batches, st.integers(1, 97))
def test_a_batch_streamed_in_arbitrary_chunks_yields_the_same_steps(batch: p.Batch, chunk: int) -> None:
    data = p.encode_downlink(p.BatchMsg(batch))
    stream = p.DownlinkStream(max_item=4096)
    events: list[p.StreamEvent] = []
    for i in range(0, len(data), chunk):
        events += stream.feed(data[i:i + chunk])
    stream.close()
    assert stream.complete
    assert events[0] == p.BatchHeader(batch.batch_id, len(batch.steps), batch.aid, batch.refresh,
                                      batch.next_size_hint)
    assert tuple(events[1:]) == batch.steps


def test_a_batch_is_a_cbor_sequence_of_header_then_one_item_per_step() -> None:
    batch = p.Batch(7, (p.Step((b"\x80\xe2\x91\x00\x03\xbf\x2e\x00",)), p.Step((b"\x00\xa4\x04\x00",))))
    items = p.batch_step_items(batch)
    assert b"".join(items) == p.encode_downlink(p.BatchMsg(batch))
    header = cbor2.loads(items[0])
    assert header[0] == p.VERSION and header[1] == p.T_BATCH and header[3] == 2


def test_streaming_holds_one_step_at_a_time_within_the_buffer() -> None:
    big_step = p.Step(tuple(bytes(261) for _ in range(20)))  # ~5.3 KB item
    data = p.encode_downlink(p.BatchMsg(p.Batch(1, (big_step,))))
    stream = p.DownlinkStream(max_item=4096)
    with pytest.raises(p.MessageTooLarge, match="4096-byte buffer"):
        for i in range(0, len(data), 512):
            stream.feed(data[i:i + 512])


def test_unknown_version_is_refused_with_its_own_error_code() -> None:
    data = cbor2.dumps({0: 2, 1: p.T_HELLO, 7: {}})
    with pytest.raises(p.UnsupportedVersion) as info:
        p.decode_uplink(data)
    assert p.error_reply(info.value).code == p.ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\xff\xff", "malformed"),
        (b"\xa1\x01", "truncated"),
        (cbor2.dumps([1, 2]), "expected a CBOR map"),
        (cbor2.dumps({0: 1, 1: 99}), "unknown message type"),
        (cbor2.dumps({0: 1, 1: p.T_BATCH, 2: 1, 3: 0}), "not an uplink"),
        (cbor2.dumps({0: 1, 1: p.T_HELLO, 7: {0: b"short", 5: "a", 6: 4096, 4: 0}}), "at least 16"),
        (cbor2.dumps({0: 1, 1: p.T_HELLO, 7: {0: EID, 5: "a", 6: 4096, 4: 0}, 99: 1}), "unknown key"),
        (cbor2.dumps({0: 1, 1: p.T_HELLO, 7: {0: EID, 5: "a", 6: "big", 4: 0}}), "expected an integer"),
        (cbor2.dumps({0: 1, 1: p.T_HELLO, 7: {0: EID, 5: "x" * 300, 6: 4096, 4: 0}}), "exceeds 256"),
        (cbor2.dumps({0: 1, 1: p.T_RESULT, 2: 1, 3: 2}) + cbor2.dumps({0: b"", 1: 0x9000}), "1 items, 2"),
        (cbor2.dumps({0: 1, 1: p.T_RESULT, 2: 1, 3: 0}) + cbor2.dumps({0: b"", 1: 0x9000}), "more than"),
        (cbor2.dumps({0: 1, 1: p.T_RESULT, 2: 1, 3: 1}) + cbor2.dumps({0: b"", 1: 0x19000}), "out of range"),
        (b"\xc1\x1a\x51\x4b\x67\xb0", "malformed"),  # a tag
        (bytes.fromhex("bf0001ff"), "malformed"),  # indefinite length
        (bytes.fromhex("a2000100 02".replace(" ", "")), "malformed"),  # duplicate key
        (cbor2.dumps({0: 1.0, 1: p.T_HELLO}), "version"),
    ],
)
def test_malformed_uplinks_raise_decode_error_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        p.decode_uplink(data)


def test_oversized_message_is_refused_before_parsing() -> None:
    with pytest.raises(p.MessageTooLarge) as info:
        p.decode_uplink(bytes(p.MAX_MESSAGE + 1))
    assert p.error_reply(info.value).code == p.ErrorCode.TOO_LARGE


def test_oversized_response_data_is_too_large() -> None:
    data = cbor2.dumps({0: 1, 1: p.T_RESULT, 2: 1, 3: 1}) + cbor2.dumps({0: bytes(70000), 1: 0x9000})
    with pytest.raises(p.MessageTooLarge):
        p.decode_uplink(data)


def test_error_reply_is_an_encodable_downlink() -> None:
    try:
        p.decode_uplink(b"\xff")
    except DecodeError as exc:
        reply = p.error_reply(exc)
    assert reply.code == p.ErrorCode.MALFORMED
    assert p.decode_downlink(p.encode_downlink(reply)) == reply


def test_encoding_an_invalid_message_is_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError):
        p.encode_downlink(p.BatchMsg(p.Batch(1, (p.Step((bytes(300),)),))))
    with pytest.raises(LocalProtocolError):
        p.encode_uplink(p.Hello(p.DeviceStatus(eid=b"short")))
    with pytest.raises(LocalProtocolError):
        p.encode_downlink(p.BatchMsg(p.Batch(1, (), refresh="reboot")))


def test_protocol_module_imports_no_io_library() -> None:
    import subprocess
    import sys
    code = ("import sys\nimport gateway.links.protocol\n"
            "bad = [m for m in ('asyncio', 'aiocoap', 'paho', 'socket') if m in sys.modules]\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_never_escape_decode_error(data: bytes) -> None:
    for decode in (p.decode_uplink, p.decode_downlink):
        try:
            decode(data)
        except DecodeError:
            pass


@settings(max_examples=300)
@given(uplinks, st.data())
def test_fuzz_mutated_valid_uplinks_decode_or_raise_decode_error(msg: p.Uplink, data: st.DataObject) -> None:
    raw = bytearray(p.encode_uplink(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        p.decode_uplink(bytes(raw))
    except DecodeError:
        pass


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.binary(max_size=20) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.integers(-2, 10), children, max_size=5),
    max_leaves=12,
)


@settings(max_examples=300)
@given(st.lists(json_like, min_size=1, max_size=3))
def test_fuzz_structured_cbor_sequences_never_escape_decode_error(items: list[object]) -> None:
    data = b"".join(cbor2.dumps(i) for i in items)
    for decode in (p.decode_uplink, p.decode_downlink):
        try:
            decode(data)
        except DecodeError:
            pass


@settings(max_examples=300)
@given(st.sampled_from([p.T_HELLO, p.T_RESULT, p.T_BATCH, p.T_IDLE, p.T_ERROR]),
       st.dictionaries(st.integers(2, 8), json_like, max_size=6), st.lists(json_like, max_size=3))
def test_fuzz_well_versioned_headers_with_random_fields_never_escape_decode_error(
        msg_type: int, fields: dict[int, object], tail: list[object]) -> None:
    data = cbor2.dumps({0: p.VERSION, 1: msg_type, **fields}) + b"".join(cbor2.dumps(i) for i in tail)
    for decode in (p.decode_uplink, p.decode_downlink):
        try:
            decode(data)
        except DecodeError:
            pass
