"""APDU framing: builders against hand-written vectors, channel coding, STORE DATA
segmentation, the 61xx/6Cxx response assembler and the status-word error map."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import CardError, DecodeError, GatewayError, LocalProtocolError
from gateway.spec import apdu
from gateway.spec.apdu import Done, ResponseAssembler, SendNext


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def test_builders_match_hand_written_vectors() -> None:
    assert apdu.manage_channel_open() == h("00 70 00 00 01")
    assert apdu.manage_channel_close(2) == h("00 70 80 02")
    assert apdu.select() == h("00 A4 04 00 10 A0000005591010FFFFFFFF8900000100 00")
    assert apdu.get_response(0x20) == h("00 C0 00 00 20")
    assert apdu.get_response(256) == h("00 C0 00 00 00")
    assert apdu.ISD_R_AID == h("A0000005591010FFFFFFFF8900000100")


def test_store_data_single_block_of_get_euicc_info1() -> None:
    assert apdu.store_data(h("BF20 00")) == [h("80 E2 91 00 03 BF20 00")]
    assert apdu.store_data(h("BF20 00"), le_last=True) == [h("80 E2 91 00 03 BF20 00 00")]


def test_store_data_exactly_255_bytes_is_one_block() -> None:
    payload = bytes(range(255))
    (block,) = apdu.store_data(payload)
    assert block[:5] == h("80 E2 91 00 FF") and block[5:] == payload


def test_store_data_256_bytes_is_two_blocks_numbered_0_and_1() -> None:
    payload = bytes(i & 0xFF for i in range(256))
    first, last = apdu.store_data(payload)
    assert first[:5] == h("80 E2 11 00 FF") and first[5:] == payload[:255]
    assert last == h("80 E2 91 01 01") + payload[255:]


def test_store_data_segment_size_1() -> None:
    blocks = apdu.store_data(b"\xAA\xBB\xCC", segment_size=1)
    assert blocks == [h("80E21100 01 AA"), h("80E21101 01 BB"), h("80E29102 01 CC")]


def test_store_data_refuses_empty_payload_and_bad_segment_sizes() -> None:
    with pytest.raises(LocalProtocolError, match="payload"):
        apdu.store_data(b"")
    for size in (0, 256, -1):
        with pytest.raises(LocalProtocolError, match="segment size"):
            apdu.store_data(b"\x01", segment_size=size)


def test_store_data_allows_256_blocks_and_refuses_257_naming_the_limit() -> None:
    blocks = apdu.store_data(bytes(256), segment_size=1)
    assert len(blocks) == 256 and blocks[-1][:4] == h("80 E2 91 FF")
    with pytest.raises(LocalProtocolError, match="at most 256 blocks"):
        apdu.store_data(bytes(257), segment_size=1)


def test_store_data_block_number_wraps_only_when_asked() -> None:
    blocks = apdu.store_data(bytes(258), segment_size=1, wrap_block_number=True)
    assert [b[3] for b in blocks[254:]] == [0xFE, 0xFF, 0x00, 0x01]
    assert blocks[-1][2] == 0x91 and all(b[2] == 0x11 for b in blocks[:-1])


def store_data_payload(blocks: list[bytes]) -> bytes:
    out = b""
    for n, b in enumerate(blocks):
        assert b[0] == 0x80 and b[1] == 0xE2 and b[3] == n & 0xFF
        assert b[2] == (0x91 if n == len(blocks) - 1 else 0x11)
        assert len(b) == 5 + b[4]
        out += b[5:]
    return out


@given(st.binary(min_size=1, max_size=3000), st.integers(min_value=12, max_value=255))
def test_rejoining_store_data_blocks_gives_the_payload_back(payload: bytes, size: int) -> None:
    blocks = apdu.store_data(payload, size)
    assert len(blocks) == apdu.store_data_block_count(len(payload), size)
    assert all(len(b) - 5 <= size for b in blocks)
    assert store_data_payload(blocks) == payload


@pytest.mark.parametrize(
    ("channel", "cla_gp", "cla_basic"),
    [(0, 0x80, 0x00), (1, 0x81, 0x01), (3, 0x83, 0x03), (4, 0xC0, 0x40), (5, 0xC1, 0x41),
     (19, 0xCF, 0x4F)],
)
def test_with_channel_sets_class_byte_per_iso7816(channel: int, cla_gp: int, cla_basic: int) -> None:
    assert apdu.with_channel(h("80E2910003BF2000"), channel)[0] == cla_gp
    assert apdu.with_channel(apdu.get_response(4), channel)[0] == cla_basic


@pytest.mark.parametrize("channel", range(20))
def test_with_channel_is_reversible_for_every_channel(channel: int) -> None:
    cmd = apdu.with_channel(apdu.with_channel(h("80E2910003BF2000"), 7), channel)
    assert apdu.channel_of(cmd[0]) == channel
    assert cmd[1:] == h("E2910003BF2000")
    assert apdu.with_channel(cmd, 0) == h("80E2910003BF2000")


def test_with_channel_keeps_the_chaining_bit() -> None:
    assert apdu.with_channel(h("10E20000"), 2)[0] == 0x12
    assert apdu.with_channel(h("10E20000"), 6)[0] == 0x52


def test_with_channel_refuses_bad_channels_and_class_bytes() -> None:
    for bad_channel in (-1, 20):
        with pytest.raises(LocalProtocolError):
            apdu.with_channel(h("00A40400"), bad_channel)
    for cla in ("FF", "A0", "20", "84", "0C", "60"):
        with pytest.raises(LocalProtocolError):
            apdu.with_channel(h(cla + "A40400"), 1)
    with pytest.raises(LocalProtocolError):
        apdu.with_channel(h("00A404"), 1)


def test_opened_channel() -> None:
    assert apdu.opened_channel(b"\x03") == 3
    for bad in (b"", b"\x00", b"\x14", b"\x01\x02"):
        with pytest.raises(DecodeError):
            apdu.opened_channel(bad)


def test_split_response() -> None:
    assert apdu.split_response(h("BF2000 9000")) == (h("BF2000"), 0x9000)
    assert apdu.split_response(h("6A88")) == (b"", 0x6A88)
    for bad in (b"", b"\x90"):
        with pytest.raises(DecodeError):
            apdu.split_response(bad)


@pytest.mark.parametrize(
    ("sw", "cls"),
    [(0x6700, apdu.WrongLength), (0x6985, apdu.ConditionsNotSatisfied),
     (0x6A80, apdu.IncorrectData), (0x6A82, apdu.FileNotFound), (0x6A86, apdu.WrongP1P2),
     (0x6B00, apdu.WrongP1P2), (0x6D00, apdu.InsNotSupported), (0x6E00, apdu.ClaNotSupported),
     (0x6581, apdu.MemoryFailure), (0x6982, apdu.SecurityStatusNotSatisfied),
     (0x6A81, apdu.FunctionNotSupported), (0x6A88, apdu.ReferencedDataNotFound),
     (0x6400, apdu.ExecutionError), (0x6C10, apdu.WrongLe), (0x6110, apdu.UnknownStatus),
     (0x1234, apdu.UnknownStatus)],
)
def test_check_sw_raises_typed_card_errors_carrying_the_sw(sw: int, cls: type[CardError]) -> None:
    with pytest.raises(cls) as info:
        apdu.check_sw(sw)
    assert isinstance(info.value, CardError) and info.value.sw == sw
    assert f"{sw:04X}" in str(info.value)


def test_check_sw_accepts_9000_and_91xx() -> None:
    apdu.check_sw(0x9000)
    apdu.check_sw(0x9110)


def test_assembler_returns_direct_response() -> None:
    asm = ResponseAssembler(h("80E2910003BF2000"))
    assert asm.feed(h("BF2003800100 9000")) == Done(h("BF2003800100"), 0x9000)
    assert asm.done
    with pytest.raises(LocalProtocolError):
        asm.feed(h("9000"))


def test_assembler_chains_get_response_on_the_commands_channel() -> None:
    asm = ResponseAssembler(apdu.with_channel(h("80E2910003BF2200"), 5))
    step = asm.feed(h("6100"))
    assert step == SendNext(h("41 C0 00 00 00"), "get-response")
    step = asm.feed(bytes(256) + h("6104"))
    assert step == SendNext(h("41 C0 00 00 04"), "get-response")
    done = asm.feed(h("01020304 9000"))
    assert done == Done(bytes(256) + h("01020304"), 0x9000)


def test_assembler_caps_get_response_le_for_picky_modems() -> None:
    asm = ResponseAssembler(h("80E2910003BF2200"), max_le=255)
    assert asm.feed(h("6100")) == SendNext(h("00C00000FF"), "get-response")


def test_assembler_resends_with_le_on_6cxx() -> None:
    asm = ResponseAssembler(h("81CA00FE00"))
    assert asm.feed(h("6C09")) == SendNext(h("81CA00FE09"), "resend-le")
    assert asm.feed(bytes(9) + h("9000")) == Done(bytes(9), 0x9000)
    case3 = ResponseAssembler(h("80E2910003BF2000"))
    assert case3.feed(h("6C05")) == SendNext(h("80E2910003BF200005"), "resend-le")
    case1 = ResponseAssembler(h("00700080"))
    assert case1.feed(h("6C01")) == SendNext(h("0070008001"), "resend-le")


def test_assembler_6cxx_after_get_response_resends_the_get_response() -> None:
    asm = ResponseAssembler(h("80E2910003BF2200"))
    asm.feed(h("AABB 6110"))
    assert asm.feed(h("6C08")) == SendNext(h("00C0000008"), "resend-le")
    assert asm.feed(bytes(8) + h("9000")) == Done(h("AABB") + bytes(8), 0x9000)


def test_assembler_gives_up_on_endless_6cxx() -> None:
    asm = ResponseAssembler(h("00CA00FE00"), max_le_retries=2)
    asm.feed(h("6C01"))
    asm.feed(h("6C01"))
    with pytest.raises(apdu.WrongLe):
        asm.feed(h("6C01"))


def test_assembler_caps_total_length() -> None:
    asm = ResponseAssembler(h("80E2910003BF2200"), max_length=300)
    asm.feed(bytes(256) + h("6100"))
    with pytest.raises(apdu.ResponseTooLong):
        asm.feed(bytes(256) + h("9000"))


def test_assembler_done_with_error_sw_raises_on_check() -> None:
    done = ResponseAssembler(h("80E2910003BF2000")).feed(h("6A88"))
    assert isinstance(done, Done)
    with pytest.raises(apdu.ReferencedDataNotFound):
        done.check()


def test_command_builder_refuses_out_of_range_fields() -> None:
    with pytest.raises(LocalProtocolError):
        apdu.command(0x100, 0, 0, 0)
    with pytest.raises(LocalProtocolError):
        apdu.command(0, 0, 0, 0, bytes(256))
    with pytest.raises(LocalProtocolError):
        apdu.command(0, 0, 0, 0, le=0)
    with pytest.raises(LocalProtocolError):
        apdu.select(b"\xA0\x00")
    with pytest.raises(LocalProtocolError):
        apdu.manage_channel_close(0)


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_assembler_fuzz_only_raises_gateway_errors(responses: list[bytes]) -> None:
    asm = ResponseAssembler(h("80E2910003BF2200"), max_length=1000)
    try:
        for r in responses:
            step = asm.feed(r)
            if isinstance(step, Done):
                break
    except GatewayError:
        pass


def test_a_card_answering_61xx_without_data_forever_is_stopped() -> None:
    assembler = apdu.ResponseAssembler(apdu.store_data(b"\xbf\x2e\x00")[0])
    with pytest.raises(apdu.ResponseTooLong):
        for _ in range(100):
            step = assembler.feed(bytes.fromhex("6110"))
            assert isinstance(step, apdu.SendNext)


def test_61xx_with_data_may_go_on_as_long_as_data_comes() -> None:
    assembler = apdu.ResponseAssembler(apdu.store_data(b"\xbf\x2e\x00")[0])
    assembler.feed(bytes.fromhex("6110"))
    for _ in range(10):
        assert isinstance(assembler.feed(b"\x01" * 16 + bytes.fromhex("6110")), apdu.SendNext)
    done = assembler.feed(b"\x02" + bytes.fromhex("9000"))
    assert isinstance(done, apdu.Done) and done.data == b"\x01" * 160 + b"\x02"
