"""The software eUICC's APDU layer answers like a card: channels, SELECT, STORE DATA, GET RESPONSE."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from gateway.spec import apdu as A
from hil.euicc.card import ISD_R_AID, ApduLayer, StatusWord
from hil.euicc.faults import Faults


def echo_es10(request: bytes) -> bytes:
    if request[:2] == b"\xbf\x7f":
        raise StatusWord(0x6A88)
    return request


def sw_of(resp: bytes) -> int:
    return A.split_response(resp)[1]


def open_selected(card: ApduLayer) -> int:
    data, sw = A.split_response(card.transmit(A.manage_channel_open()))
    assert sw == 0x9000
    ch = A.opened_channel(data)
    resp = card.transmit(A.with_channel(A.select(ISD_R_AID), ch))
    assert sw_of(resp) == 0x9000 and ISD_R_AID in resp
    return ch


def exchange(card: ApduLayer, payload: bytes, ch: int, segment: int = 255, max_le: int = 256) -> tuple[bytes, int]:
    blocks = [A.with_channel(b, ch) for b in A.store_data(payload, segment, wrap_block_number=True)]
    for b in blocks[:-1]:
        assert card.transmit(b) == b"\x90\x00"
    asm = A.ResponseAssembler(blocks[-1], max_le=max_le)
    step = asm.feed(card.transmit(blocks[-1]))
    while isinstance(step, A.SendNext):
        step = asm.feed(card.transmit(step.apdu))
    return step.data, step.sw


def tlv(tag: bytes, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        ln = bytes([n])
    elif n < 0x100:
        ln = bytes([0x81, n])
    else:
        ln = bytes([0x82, n >> 8, n & 0xFF])
    return tag + ln + value


def test_manage_channel_assigns_lowest_free_channel_and_closes_it() -> None:
    card = ApduLayer(echo_es10)
    assert card.transmit(A.manage_channel_open()) == b"\x01\x90\x00"
    assert card.transmit(A.manage_channel_open()) == b"\x02\x90\x00"
    assert card.transmit(A.manage_channel_close(1)) == b"\x90\x00"
    assert card.transmit(A.manage_channel_open()) == b"\x01\x90\x00"
    assert card.open_channels() == [0, 1, 2]
    assert sw_of(card.transmit(A.manage_channel_close(7))) == 0x6A86


def test_command_on_a_closed_channel_is_refused_with_6881() -> None:
    card = ApduLayer(echo_es10)
    assert sw_of(card.transmit(A.with_channel(A.select(ISD_R_AID), 3))) == 0x6881


def test_all_twenty_channels_work_including_further_interindustry_cla() -> None:
    card = ApduLayer(echo_es10)
    for expected in range(1, 20):
        assert A.opened_channel(A.split_response(card.transmit(A.manage_channel_open()))[0]) == expected
    assert sw_of(card.transmit(A.manage_channel_open())) == 0x6A81
    for ch in (0, 3, 4, 19):
        assert sw_of(card.transmit(A.with_channel(A.select(ISD_R_AID), ch))) == 0x9000
        assert exchange(card, tlv(b"\xbf\x2e", b""), ch) == (b"\xbf\x2e\x00", 0x9000)


def test_store_data_before_select_is_refused() -> None:
    card = ApduLayer(echo_es10)
    ch = A.opened_channel(A.split_response(card.transmit(A.manage_channel_open()))[0])
    assert sw_of(card.transmit(A.with_channel(A.store_data(b"\xbf\x2e\x00")[0], ch))) == 0x6985


def test_select_of_another_aid_is_file_not_found() -> None:
    card = ApduLayer(echo_es10)
    assert sw_of(card.transmit(A.select(bytes.fromhex("A0000000871002")))) == 0x6A82
    assert sw_of(card.transmit(A.command(0x00, 0xA4, 0x00, 0x00, ISD_R_AID))) == 0x6A86


@pytest.mark.parametrize("segment", [1, 7, 64, 200, 255])
def test_store_data_reassembles_any_segment_size_and_long_responses_use_61xx(segment: int) -> None:
    card = ApduLayer(echo_es10)
    ch = open_selected(card)
    payload = tlv(b"\xbf\x22", bytes(range(256)) * 3)
    assert exchange(card, payload, ch, segment) == (payload, 0x9000)


def test_get_response_with_capped_le_fetches_everything() -> None:
    card = ApduLayer(echo_es10)
    ch = open_selected(card)
    payload = tlv(b"\xbf\x22", bytes(600))
    assert exchange(card, payload, ch, max_le=255) == (payload, 0x9000)


def test_get_response_with_too_large_le_answers_6cxx_and_keeps_the_data() -> None:
    card = ApduLayer(echo_es10)
    ch = open_selected(card)
    payload = tlv(b"\xbf\x22", bytes(10))
    resp = card.transmit(A.with_channel(A.store_data(payload)[0], ch))
    assert resp == b"\x61\x0d"
    assert card.transmit(A.with_channel(A.get_response(0x20), ch)) == b"\x6c\x0d"
    assert card.transmit(A.with_channel(A.get_response(0x0D), ch)) == payload + b"\x90\x00"
    assert sw_of(card.transmit(A.with_channel(A.get_response(0x0D), ch))) == 0x6985


def test_case4_store_data_with_enough_le_answers_directly() -> None:
    card = ApduLayer(echo_es10)
    ch = open_selected(card)
    payload = tlv(b"\xbf\x2e", b"")
    resp = card.transmit(A.with_channel(A.store_data(payload, le_last=True)[0], ch))
    assert resp == payload + b"\x90\x00"


def test_out_of_sequence_block_number_is_6a86_and_drops_the_sequence() -> None:
    card = ApduLayer(echo_es10)
    ch = open_selected(card)
    blocks = [A.with_channel(b, ch) for b in A.store_data(tlv(b"\xbf\x22", bytes(40)), 10)]
    assert card.transmit(blocks[0]) == b"\x90\x00"
    assert sw_of(card.transmit(blocks[2])) == 0x6A86
    assert sw_of(card.transmit(blocks[1])) == 0x6A86


def test_status_words_for_wrong_p1_ins_cla_and_lengths() -> None:
    card = ApduLayer(echo_es10)
    assert sw_of(card.transmit(A.select(ISD_R_AID))) == 0x9000
    assert sw_of(card.transmit(bytes.fromhex("80E2510003BF2E00"))) == 0x6A86
    assert sw_of(card.transmit(bytes.fromhex("80CA00FE00"))) == 0x6D00
    assert sw_of(card.transmit(bytes.fromhex("00E2910003BF2E00"))) == 0x6E00
    assert sw_of(card.transmit(bytes.fromhex("80E2910005BF2E00"))) == 0x6700
    assert sw_of(card.transmit(bytes.fromhex("80E291"))) == 0x6700
    assert sw_of(card.transmit(bytes.fromhex("80E2910000000003BF2E00"))) == 0x6700
    assert sw_of(card.transmit(bytes.fromhex("8CE2910003BF2E00"))) == 0x6882
    assert sw_of(card.transmit(bytes.fromhex("FFE2910003BF2E00"))) == 0x6E00
    assert sw_of(card.transmit(bytes.fromhex("80E2910003BF7F00"))) == 0x6A88
    assert sw_of(card.transmit(bytes.fromhex("00C0000100"))) == 0x6A86


def test_oversized_store_data_sequence_is_not_enough_memory() -> None:
    card = ApduLayer(echo_es10, max_command_size=1000)
    ch = open_selected(card)
    blocks = [A.with_channel(b, ch) for b in A.store_data(tlv(b"\xbf\x22", bytes(1200)))]
    sws = [sw_of(card.transmit(b)) for b in blocks]
    assert 0x6A84 in sws


def test_injected_status_word_on_the_nth_command_and_reset() -> None:
    faults = Faults(sw_on_command={2: 0x6F00})
    card = ApduLayer(echo_es10, faults=faults)
    assert card.transmit(A.manage_channel_open()) == b"\x01\x90\x00"
    assert card.transmit(A.manage_channel_open()) == b"\x6f\x00"
    assert card.transmit(A.manage_channel_open()) == b"\x02\x90\x00"
    card.reset()
    assert card.open_channels() == [0]


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_any_byte_string_gets_a_status_word_never_an_exception(apdu: bytes) -> None:
    card = ApduLayer(echo_es10)
    resp = card.transmit(apdu)
    assert len(resp) >= 2
