"""BER-TLV walker: hand-built vectors, edge cases, round trips and a fuzz test."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import DecodeError, LocalProtocolError
from gateway.spec import tlv
from gateway.spec.tlv import Tlv


def test_short_form_primitive_tlv_offsets() -> None:
    buf = bytes.fromhex("5A03010203")
    t = tlv.read_tlv(buf)
    assert t == Tlv(0x5A, 0, 2, 5)
    assert (t.length, t.header, t.constructed) == (3, 2, False)
    assert t.value_of(buf) == b"\x01\x02\x03"
    assert t.raw_of(buf) == buf


def test_two_byte_tag_with_long_form_lengths() -> None:
    value = bytes(200)
    buf = bytes.fromhex("BF3681C8") + value
    t = tlv.read_tlv(buf)
    assert (t.tag, t.value_start, t.end, t.constructed) == (0xBF36, 4, 204, True)
    big = bytes(0x1234)
    buf2 = bytes.fromhex("A3821234") + big
    assert tlv.read_tlv(buf2) == Tlv(0xA3, 0, 4, 4 + 0x1234)


def test_three_byte_tag_is_read_whole() -> None:
    buf = bytes.fromhex("9F8101") + b"\x01\xAA"
    assert tlv.read_tlv(buf) == Tlv(0x9F8101, 0, 4, 5)


def test_four_length_octets_accepted_and_five_refused() -> None:
    buf = bytes.fromhex("048400000002") + b"ab"
    assert tlv.read_tlv(buf).length == 2
    with pytest.raises(DecodeError, match="length octets"):
        tlv.read_tlv(bytes.fromhex("04850000000002") + b"ab")


def test_indefinite_length_is_refused() -> None:
    with pytest.raises(DecodeError, match="indefinite"):
        tlv.read_tlv(bytes.fromhex("30800101FF0000"))


@pytest.mark.parametrize("hexbuf", ["", "BF", "BF36", "BF3681", "5A05010203", "30820100", "9F"])
def test_truncation_anywhere_raises_decode_error(hexbuf: str) -> None:
    with pytest.raises(DecodeError):
        tlv.read_tlv(bytes.fromhex(hexbuf))


def test_length_beyond_caller_bound_is_refused_even_if_buffer_is_longer() -> None:
    buf = bytes.fromhex("3006" "0401AA" "0401BB")
    with pytest.raises(DecodeError, match="declares 6"):
        tlv.read_tlv(buf, 0, 5)


def test_tag_longer_than_four_octets_refused() -> None:
    with pytest.raises(DecodeError, match="tag longer"):
        tlv.read_tlv(bytes.fromhex("1F8181818101") + b"\x00")


def test_end_of_contents_tag_refused() -> None:
    with pytest.raises(DecodeError, match="end-of-contents"):
        tlv.read_tlv(b"\x00\x00")


def test_bounds_outside_buffer_are_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        tlv.read_tlv(b"\x04\x00", 0, 3)


def test_children_and_descend_find_the_exact_signed_bytes() -> None:
    signed = bytes.fromhex("3008" "80020102" "81020304")
    buf = bytes.fromhex("BF380C" "A00A") + signed
    outer = tlv.read_single(buf)
    (a0,) = tlv.children(buf, outer)
    assert a0.tag == 0xA0
    found = tlv.descend(buf, [0xBF38, 0xA0, 0x30])
    assert found.raw_of(buf) == signed
    assert [c.tag for c in tlv.children(buf, found)] == [0x80, 0x81]


def test_descend_reports_missing_tag_and_wrong_outer_tag() -> None:
    buf = bytes.fromhex("BF3803" "800100")
    with pytest.raises(DecodeError, match="missing"):
        tlv.descend(buf, [0xBF38, 0xA0])
    with pytest.raises(DecodeError, match="outer tag"):
        tlv.descend(buf, [0xBF37])


def test_children_of_primitive_refused() -> None:
    buf = bytes.fromhex("0401AA")
    with pytest.raises(DecodeError, match="primitive"):
        tlv.children(buf, tlv.read_tlv(buf))


def test_read_single_refuses_trailing_bytes() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        tlv.read_single(bytes.fromhex("0401AA00"))


def test_outer_tag() -> None:
    assert tlv.outer_tag(bytes.fromhex("BF3700")) == 0xBF37


def test_iter_tlvs_walks_a_range_and_fails_on_partial_last() -> None:
    buf = bytes.fromhex("FF" "0401AA" "0500" "0402BB")
    assert [t.tag for t in tlv.iter_tlvs(buf, 1, 6)] == [0x04, 0x05]
    with pytest.raises(DecodeError):
        list(tlv.iter_tlvs(buf, 1))


def test_works_on_memoryview_without_copying() -> None:
    buf = memoryview(bytes.fromhex("BF2003800100"))
    t = tlv.read_single(buf)
    assert tlv.children(buf, t)[0].value_of(buf) == b"\x00"


def test_encode_length_is_minimal_der() -> None:
    assert tlv.encode_length(0x7F) == b"\x7f"
    assert tlv.encode_length(0x80) == b"\x81\x80"
    assert tlv.encode_length(0x100) == b"\x82\x01\x00"
    assert tlv.header(0xBF36, 3) == b"\xbf\x36\x03"


tags = st.sampled_from([0x04, 0x30, 0x5A, 0x80, 0x86, 0x87, 0x88, 0xA0, 0xA3, 0x5F37, 0xBF36, 0x9F8101])


@given(st.lists(st.tuples(tags, st.binary(max_size=300)), max_size=6))
def test_encoded_sequences_walk_back_to_their_parts(parts: list[tuple[int, bytes]]) -> None:
    buf = b"".join(tlv.header(t, len(v)) + v for t, v in parts)
    walked = list(tlv.iter_tlvs(buf))
    assert [(t.tag, t.value_of(buf)) for t in walked] == parts
    assert b"".join(t.raw_of(buf) for t in walked) == buf


def _walk_all(buf: bytes, start: int, end: int) -> int:
    seen = 0
    for t in tlv.iter_tlvs(buf, start, end):
        assert start <= t.start < t.value_start <= t.end <= end
        seen += 1
        if t.constructed:
            seen += _walk_all(buf, t.value_start, t.end)
    return seen


@given(st.binary(max_size=96), st.integers(min_value=0, max_value=96))
def test_garbage_only_ever_raises_decode_error(data: bytes, cut: int) -> None:
    try:
        _walk_all(data, 0, len(data))
    except DecodeError:
        pass
    try:
        tlv.read_tlv(data, 0, min(cut, len(data)))
    except DecodeError:
        pass


@given(st.integers(min_value=0, max_value=300), st.integers(min_value=1, max_value=4))
def test_non_minimal_long_form_lengths_are_walked_as_ber(length: int, octets: int) -> None:
    if length >= 1 << (8 * octets):
        return
    buf = b"\x04" + bytes([0x80 | octets]) + length.to_bytes(octets, "big") + bytes(length)
    assert tlv.read_single(buf) == Tlv(0x04, 0, 2 + octets, 2 + octets + length)


ORACLE_ASN = """
Oracle DEFINITIONS AUTOMATIC TAGS ::= BEGIN
  Outer ::= [APPLICATION 54] SEQUENCE {
    inner [35] SEQUENCE { id INTEGER, blob [APPLICATION 73] OCTET STRING },
    items [3] SEQUENCE OF [6] OCTET STRING,
    name [PRIVATE 300] UTF8String
  }
END
"""


@given(st.binary(max_size=400), st.lists(st.binary(max_size=300), max_size=5),
       st.text(max_size=40), st.integers(min_value=-(2**40), max_value=2**40))
def test_walker_agrees_with_asn1tools_der(blob: bytes, items: list[bytes], name: str, ident: int) -> None:
    spec = _oracle()
    value = {"inner": {"id": ident, "blob": blob}, "items": items, "name": name}
    der = spec.encode("Outer", value)
    outer = tlv.read_single(der)
    assert outer.tag == 0x7F36
    inner, seq, name_tlv = tlv.children(der, outer)
    assert (inner.tag, seq.tag, name_tlv.tag) == (0xBF23, 0xA3, 0xDF822C)
    assert tlv.child(der, inner, 0x5F49).value_of(der) == blob
    assert [c.value_of(der) for c in tlv.children(der, seq)] == items
    assert name_tlv.value_of(der) == name.encode()
    assert [c.tag for c in tlv.children(der, inner)] == [0x02, 0x5F49]  # tagged components turn automatic tagging off


_ORACLE: list[object] = []


def _oracle() -> Any:
    import asn1tools

    if not _ORACLE:
        _ORACLE.append(asn1tools.compile_string(ORACLE_ASN, "der"))
    return _ORACLE[0]
