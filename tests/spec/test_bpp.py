"""BPP segmentation (SGP.22 §2.5.5): a hand-written vector, structural errors, STORE DATA
sequences per segment, round trips and a fuzz test."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import DecodeError
from gateway.spec import apdu, bpp, codec, tlv


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def t(tag: int, value: bytes) -> bytes:
    return tlv.header(tag, len(value)) + value


# Hand-written: BF36 { BF23 {80 01 01}, A0 {87 02 AA AA}, A1 {88 01 B1, 88 01 B2},
#                      A2 {87 01 CC}, A3 {86 01 D1, 86 02 D2 D2} }
VECTOR = h("BF36 22"
           "BF23 03 800101"
           "A0 04 8702AAAA"
           "A1 06 8801B1 8801B2"
           "A2 03 8701CC"
           "A3 07 8601D1 8602D2D2")


def test_hand_written_bpp_is_cut_in_sgp22_order() -> None:
    assert bpp.segments(VECTOR) == [
        h("BF3622 BF2303800101"),
        h("A004 8702AAAA"),
        h("A106"),
        h("8801B1"),
        h("8801B2"),
        h("A203 8701CC"),
        h("A307"),
        h("8601D1"),
        h("8602D2D2"),
    ]
    assert [(s.function, s.header_only) for s in bpp.plan(VECTOR)] == [
        ("InitialiseSecureChannel", False), ("ConfigureISDP", False),
        ("StoreMetadata", True), ("StoreMetadata", False), ("StoreMetadata", False),
        ("ReplaceSessionKeys", False), ("LoadProfileElements", True),
        ("LoadProfileElements", False), ("LoadProfileElements", False),
    ]


def make_bpp(metadata: list[bytes], elements: list[bytes], replace_keys: bytes | None = None,
             isc: bytes = b"\x80\x01\x01") -> bytes:
    body = t(0xBF23, isc) + t(0xA0, t(0x87, b"\x11" * 20))
    body += t(0xA1, b"".join(t(0x88, m) for m in metadata))
    if replace_keys is not None:
        body += t(0xA2, t(0x87, replace_keys))
    body += t(0xA3, b"".join(t(0x86, e) for e in elements))
    return t(0xBF36, body)


def test_bpp_without_replace_session_keys_has_no_a2_segment() -> None:
    data = make_bpp([b"m"], [b"e1", b"e2"])
    segs = bpp.segments(data)
    assert [s[0] for s in segs] == [0xBF, 0xA0, 0xA1, 0x88, 0xA3, 0x86, 0x86]
    assert b"".join(segs) == data


def test_long_form_lengths_keep_headers_exact() -> None:
    data = make_bpp([bytes(300)], [bytes(1020)] * 3, replace_keys=bytes(70))
    segs = bpp.segments(data)
    assert segs[2] == h("A1 82 0130")
    assert segs[4] == t(0xA2, t(0x87, bytes(70)))
    assert segs[5] == h("A3 82 0C00")
    assert b"".join(segs) == data


def test_store_data_apdus_one_sequence_per_segment_with_last_block_flag() -> None:
    data = make_bpp([b"m" * 300], [bytes(600)])
    seqs = bpp.store_data_apdus(data, segment_size=200)
    segs = bpp.segments(data)
    assert len(seqs) == len(segs)
    for seq, seg in zip(seqs, segs):
        assert seq == apdu.store_data(seg, 200)
        assert seq[-1][2] == 0x91 and all(b[2] == 0x11 for b in seq[:-1])
    assert [len(s) for s in seqs] == [1, 1, 1, 2, 1, 4]


def test_last_segment_index_points_at_the_last_86() -> None:
    segs = bpp.segments(VECTOR)
    assert bpp.last_segment_index(segs) == 8
    assert bpp.is_last_segment(8, segs) and not bpp.is_last_segment(7, segs)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (h("BF37 00"), "expected BF36"),
        (VECTOR + b"\x00", "trailing"),
        (VECTOR[:-1], "declares"),
        (t(0xBF36, t(0xA0, t(0x87, b"x")) + t(0xA1, t(0x88, b"m")) + t(0xA3, t(0x86, b"e"))),
         "BF36 holds A0 A1 A3"),
        (t(0xBF36, t(0xBF23, b"") + t(0xA1, t(0x88, b"m")) + t(0xA0, t(0x87, b"x"))
           + t(0xA3, t(0x86, b"e"))), "in that order"),
        (t(0xBF36, t(0xBF23, b"") + t(0xA0, t(0x87, b"x")) + t(0xA1, t(0x88, b"m"))
           + t(0xA3, t(0x86, b"e")) + t(0xA4, b"")), "expected BF23 A0 A1"),
        (t(0xBF36, t(0xBF23, b"") + t(0xA0, t(0x87, b"x") * 2) + t(0xA1, t(0x88, b"m"))
           + t(0xA3, t(0x86, b"e"))), "exactly one 87"),
        (t(0xBF36, t(0xBF23, b"") + t(0xA0, t(0x87, b"x")) + t(0xA1, t(0x86, b"m"))
           + t(0xA3, t(0x86, b"e"))), "expected 88"),
        (t(0xBF36, t(0xBF23, b"") + t(0xA0, t(0x87, b"x")) + t(0xA1, b"")
           + t(0xA3, t(0x86, b"e"))), "empty"),
        (t(0xBF36, t(0xBF23, b"") + t(0xA0, t(0x87, b"x")) + t(0xA1, t(0x88, b"m"))
           + t(0xA3, h("8605AA"))), "inside tag A3"),
        (h("BF3680 0000"), "indefinite"),
        (b"", "no tag"),
    ],
)
def test_malformed_bpp_is_refused_with_a_clear_decode_error(data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match) as info:
        bpp.segments(data)
    assert info.value.type_name == "BoundProfilePackage"


@given(
    st.lists(st.binary(max_size=400), min_size=1, max_size=4),
    st.lists(st.binary(max_size=1100), min_size=1, max_size=6),
    st.one_of(st.none(), st.binary(min_size=1, max_size=100)),
    st.integers(min_value=1, max_value=255),
)
def test_segments_concatenate_back_to_the_bpp_and_blocks_back_to_segments(
        metadata: list[bytes], elements: list[bytes], keys: bytes | None, size: int) -> None:
    data = make_bpp(metadata, elements, keys)
    segs = bpp.segments(data)
    assert b"".join(segs) == data
    assert len(segs) == 2 + 1 + len(metadata) + (keys is not None) + 1 + len(elements)
    seqs = bpp.store_data_apdus(data, size, wrap_block_number=True)
    rejoined = [b"".join(block[5:] for block in seq) for seq in seqs]
    assert rejoined == segs


@given(st.binary(max_size=200))
def test_fuzz_garbage_only_raises_decode_error(data: bytes) -> None:
    try:
        segs = bpp.segments(data)
    except DecodeError:
        return
    assert b"".join(segs) == data


@given(st.data())
def test_fuzz_mutated_valid_bpp_only_raises_decode_error(draw: st.DataObject) -> None:
    data = bytearray(VECTOR)
    pos = draw.draw(st.integers(min_value=0, max_value=len(data) - 1))
    data[pos] = draw.draw(st.integers(min_value=0, max_value=255))
    cut = draw.draw(st.integers(min_value=0, max_value=len(data)))
    for candidate in (bytes(data), bytes(data[:cut])):
        try:
            segs = bpp.segments(candidate)
        except DecodeError:
            continue
        assert b"".join(segs) == candidate


def test_bpp_encoded_by_the_codec_is_segmented_into_its_parts() -> None:
    value = {
        "initialiseSecureChannelRequest": {
            "remoteOpId": 1,
            "transactionId": bytes(16),
            "controlRefTemplate": {"keyType": b"\x88", "keyLen": b"\x10", "hostId": b"host-id"},
            "smdpOtpk": b"\x04" + bytes(64),
            "smdpSign": bytes(64),
        },
        "firstSequenceOf87": [b"\x01" * 32],
        "sequenceOf88": [b"\x02" * 300, b"\x03" * 10],
        "secondSequenceOf87": [b"\x04" * 40],
        "sequenceOf86": [b"\x05" * 1020, b"\x06" * 1020, b"\x07" * 5],
    }
    data = codec.encode("BoundProfilePackage", value)
    segs = bpp.segments(data)
    assert b"".join(segs) == data
    assert segs[1] == t(0xA0, t(0x87, b"\x01" * 32))
    assert segs[3:5] == [t(0x88, b"\x02" * 300), t(0x88, b"\x03" * 10)]
    assert segs[5] == t(0xA2, t(0x87, b"\x04" * 40))
    assert segs[7:] == [t(0x86, b"\x05" * 1020), t(0x86, b"\x06" * 1020), t(0x86, b"\x07" * 5)]
    assert codec.decode("BoundProfilePackage", data) == value


RESULT = h("BF37 06 BF27 03 800101")


def test_segment_response_goes_on_after_an_empty_9000() -> None:
    assert bpp.segment_response(0, 9, b"", 0x9000) is None


def test_segment_response_returns_the_result_bytes_early_or_last() -> None:
    assert bpp.segment_response(3, 9, RESULT, 0x9000) == RESULT
    assert bpp.segment_response(8, 9, RESULT, 0x9000) == RESULT


def test_segment_response_refuses_a_silent_last_segment_and_foreign_data() -> None:
    with pytest.raises(DecodeError, match="no ProfileInstallationResult"):
        bpp.segment_response(8, 9, b"", 0x9000)
    with pytest.raises(DecodeError, match="expected BF37"):
        bpp.segment_response(2, 9, h("BF2000"), 0x9000)
    with pytest.raises(DecodeError):
        bpp.segment_response(2, 9, h("BF3705"), 0x9000)


def test_segment_response_raises_typed_card_error() -> None:
    with pytest.raises(apdu.ConditionsNotSatisfied):
        bpp.segment_response(1, 9, b"", 0x6985)


_PYCRATE: list[Any] = []


def pycrate_rsp() -> Any:
    """RSPDefinitions as compiled by pycrate in asn1play: an independent DER encoder (test-only)."""
    if not _PYCRATE:
        mod = importlib.import_module(
            "asn1_play.generated_code.asn1.GSMA.SGP_32.v1_2.python_gen.sgp32.sgp32")
        _PYCRATE.append(mod.GLOBAL.MOD["RSPDefinitions"])
    return _PYCRATE[0]


def pycrate_der(type_name: str, value: Any, component: str | None = None) -> bytes:
    t = pycrate_rsp()[type_name]
    if component is not None:
        t = t._cont[component]
    t.set_val(value)
    return bytes(t.to_der())


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=3),
    st.lists(st.binary(max_size=1100), min_size=1, max_size=4),
    st.one_of(st.none(), st.binary(min_size=1, max_size=80)),
    st.binary(min_size=1, max_size=16),
)
def test_bpp_encoded_by_pycrate_is_cut_into_its_independently_encoded_parts(
        metadata: list[bytes], elements: list[bytes], keys: bytes | None, host_id: bytes) -> None:
    isc = {"remoteOpId": 1, "transactionId": bytes(range(16)),
           "controlRefTemplate": {"keyType": b"\x88", "keyLen": b"\x10", "hostId": host_id},
           "smdpOtpk": b"\x04" + bytes(64), "smdpSign": bytes(range(64))}
    value: dict[str, Any] = {"initialiseSecureChannelRequest": isc, "firstSequenceOf87": [b"\x87" * 32],
                             "sequenceOf88": metadata, "sequenceOf86": elements}
    if keys is not None:
        value["secondSequenceOf87"] = [keys]
    data = pycrate_der("BoundProfilePackage", value)
    segs = bpp.segments(data)

    isc_der = pycrate_der("InitialiseSecureChannelRequest", isc)
    assert segs[0].endswith(isc_der) and segs[0][:2] == h("BF36")
    assert segs[0][:-len(isc_der)] == tlv.header(0xBF36, len(data) - len(segs[0]) + len(isc_der))
    assert segs[1] == pycrate_der("BoundProfilePackage", [b"\x87" * 32], "firstSequenceOf87")
    a1 = pycrate_der("BoundProfilePackage", metadata, "sequenceOf88")
    assert segs[2] + b"".join(segs[3:3 + len(metadata)]) == a1
    rest = segs[3 + len(metadata):]
    if keys is not None:
        assert rest[0] == pycrate_der("BoundProfilePackage", [keys], "secondSequenceOf87")
        rest = rest[1:]
    assert b"".join(rest) == pycrate_der("BoundProfilePackage", elements, "sequenceOf86")
    assert len(rest) == 1 + len(elements)
    assert b"".join(segs) == data
