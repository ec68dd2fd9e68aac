"""The pure AT layer: lines, echo, URCs anywhere, final result codes, hex answers; fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from gateway.errors import DecodeError, GatewayError, RemoteProtocolError, TransportError
from gateway.links.serial import at
from gateway.links.serial.errors import CommandNotSupported, ModemCommandRejected, ModemError, SimNotReady

CMD = 'AT+CGLA=1,10,"81E2910000"'


def test_line_splitter_accepts_cr_lf_and_crlf_across_chunk_boundaries() -> None:
    s = at.LineSplitter()
    assert s.feed(b"AT\r\r\n+CGL") == ["AT"]
    assert s.feed(b"A: 4,9000\n\nOK\r") == ["+CGLA: 4,9000", "OK"]
    assert s.pending == b""
    assert s.feed(b"> ") == [] and s.pending == b"> "


def test_line_longer_than_the_bound_is_a_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        at.LineSplitter(max_line=100).feed(b"+" * 101)


def test_echo_and_urcs_before_inside_and_after_the_reply_are_set_aside() -> None:
    data = (CMD.encode() + b"\r\r\n+CEREG: 1,5\r\n\r\n+CGLA: 6,\"BF9000\"\r\n\r\nRING\r\n"
            b"+QIND: \"csq\",20,99\r\n\r\nOK\r\n")
    collector = at.ReplyCollector(CMD, "+CGLA")
    replies = [r for line in at.LineSplitter().feed(data) if (r := collector.feed(line))]
    assert replies == [at.AtReply(CMD, ('+CGLA: 6,"BF9000"',))]
    assert collector.urcs == ["+CEREG: 1,5", "RING", '+QIND: "csq",20,99']
    assert at.parse_hex_response(replies[0], "+CGLA") == bytes.fromhex("BF9000")


@pytest.mark.parametrize("line", ['+CGLA: 6,"bf9000"', "+CGLA: 6,BF9000", '+cgla:6, "BF9000" ', "+CGLA: 3,BF9000"])
def test_quoted_unquoted_lowercase_and_byte_counted_answers_parse(line: str) -> None:
    assert at.parse_hex_response(at.AtReply(CMD, (line,)), "+CGLA") == bytes.fromhex("BF9000")


@pytest.mark.parametrize("line", ['+CGLA: 8,"BF9000"', '+CGLA: 6,"BF90G0"', "+CGLA: 5,BF900", "+CGLA: 2,90",
                                  "+CGLA: 9000", "+CGLA: x,9000", '+CGLA: 2,"9"'])
def test_malformed_hex_answers_are_decode_errors(line: str) -> None:
    with pytest.raises(DecodeError):
        at.parse_hex_response(at.AtReply(CMD, (line,)), "+CGLA")


@pytest.mark.parametrize(("line", "cls", "cme", "retryable"), [
    ("ERROR", ModemCommandRejected, None, False),
    ("+CME ERROR: 4", CommandNotSupported, 4, False),
    ("+CME ERROR: operation not supported", CommandNotSupported, 4, False),
    ("+CME ERROR: 50", ModemCommandRejected, 50, False),
    ("+CME ERROR: incorrect parameters", ModemCommandRejected, 50, False),
    ("+CME ERROR: 14", SimNotReady, 14, True),
    ("+CME ERROR: SIM not inserted", SimNotReady, 10, True),
    ("+CME ERROR: vendor says no", ModemCommandRejected, None, False),
    ("+CMS ERROR: 500", ModemCommandRejected, None, False),
])
def test_final_error_codes_map_to_typed_transport_errors(line: str, cls: type[ModemError], cme: int | None,
                                                         retryable: bool) -> None:
    with pytest.raises(cls) as info:
        at.parse_reply(CMD, f"\r\n{line}\r\n".encode(), "+CGLA")
    assert isinstance(info.value, TransportError)
    assert info.value.cme == cme and info.value.retryable is retryable and info.value.command == CMD


@pytest.mark.parametrize("data", [b"\r\n+CCHO: 2\r\n\r\nOK\r\n", b"\r\n2\r\n\r\nOK\r\n", b'\r\n"2"\r\n\r\nOK\r\n',
                                  b'AT+CCHO="A000"\r\r\n+CREG: 1\r\n2\r\nOK\r\n',
                                  b"\r\nRDY\r\n\r\nPB DONE\r\n2\r\nSMS DONE\r\nOK\r\n"])
def test_ccho_session_id_prefixed_bare_or_quoted(data: bytes) -> None:
    assert at.parse_session(at.parse_reply('AT+CCHO="A000"', data, "+CCHO", bare_info=True)).channel == 2


@pytest.mark.parametrize("data", [b"\r\nOK\r\n", b"\r\n+CCHO: 0\r\n\r\nOK\r\n", b"\r\n+CCHO: x\r\nOK\r\n",
                                  b"\r\n1\r\n2\r\nOK\r\n", b"\r\n+CCHO: 0000000000000000\r\nOK\r\n",
                                  b'\r\n+CCHO: "0385a7cf\r\nOK\r\n', b"\r\n+CCHO: 0x385a7cf\r\nOK\r\n",
                                  b"\r\n+CCHO: " + b"1" * 33 + b"\r\nOK\r\n"])
def test_ccho_without_a_usable_session_id_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        at.parse_session(at.parse_reply('AT+CCHO="A000"', data, "+CCHO", bare_info=True))


def test_reply_without_final_result_code_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        at.parse_reply(CMD, b"\r\n+CGLA: 4,9000\r\n", "+CGLA")


def test_command_lines_count_hex_characters() -> None:
    assert at.cgla(3, bytes.fromhex("81E29100")) == 'AT+CGLA=3,8,"81E29100"'
    assert at.csim(bytes.fromhex("0070000001")) == 'AT+CSIM=10,"0070000001"'
    assert at.ccho(bytes.fromhex("A0000005591010FFFFFFFF8900000100")) == \
        'AT+CCHO="A0000005591010FFFFFFFF8900000100"'
    assert at.cchc(3) == "AT+CCHC=3"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["+CGLA", "+CSIM", "+CCHO"]), st.booleans())
def test_any_bytes_give_a_reply_or_a_clear_error(data: bytes, prefix: str, bare: bool) -> None:
    try:
        reply = at.parse_reply(CMD, data, prefix, bare_info=bare)
    except GatewayError:
        return
    for parse in (lambda: at.parse_hex_response(reply, prefix), lambda: at.parse_session(reply)):
        try:
            parse()
        except DecodeError:
            pass


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["+CGLA", "+CSIM", "+CCHO", "+CME ERROR", ""]),
       st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=80)
       | st.from_regex(r'[ "]?[0-9²³¹]{0,9}[ "]?,[ "]?[0-9A-Fa-f²]{0,12}[ "]?', fullmatch=True))
def test_any_information_line_gives_a_value_or_a_clear_error(prefix: str, value: str) -> None:
    line = f"{prefix}: {value}" if prefix else value
    data = f"\r\n{line}\r\nOK\r\n".encode("latin-1")
    for name in ("+CGLA", "+CSIM", "+CCHO"):
        try:
            reply = at.parse_reply(CMD, data, name, bare_info=True)
            response = at.parse_hex_response(reply, name) if name != "+CCHO" else at.parse_session(reply)
        except GatewayError:
            continue
        assert isinstance(response, (bytes, at.Session))


@pytest.mark.parametrize("line", ["+CGLA: ²,9000", "+CGLA: 4,90²0", "+CGLA: 1234567890123,9000"])
def test_non_ascii_digits_and_huge_lengths_are_decode_errors(line: str) -> None:
    with pytest.raises(DecodeError):
        at.parse_hex_response(at.AtReply(CMD, (line,)), "+CGLA")
    with pytest.raises(DecodeError):
        at.parse_session(at.AtReply('AT+CCHO="A000"', ("+CCHO: ²",)))
    with pytest.raises(ModemCommandRejected) as info:
        at.parse_reply(CMD, "\r\n+CME ERROR: ²\r\n".encode("latin-1"))
    assert info.value.cme is None


_URCS = st.sampled_from(["+CEREG: 1,5", "RING", '+QIND: "csq",20,99', '+CREG: 1,"00AF","0123ABCD",7', "+CPIN: READY"])
_EOL = st.sampled_from([b"\r\n", b"\r", b"\n", b"\r\n\r\n"])


@settings(max_examples=200, deadline=None)
@given(response=st.binary(min_size=2, max_size=300), echo=st.booleans(), quoted=st.booleans(),
       lower=st.booleans(), before=st.lists(_URCS, max_size=3), inside=st.lists(_URCS, max_size=3),
       eol=_EOL, chunk=st.integers(1, 64))
def test_any_interleaving_of_echo_and_urcs_yields_the_exact_response(
        response: bytes, echo: bool, quoted: bool, lower: bool, before: list[str], inside: list[str],
        eol: bytes, chunk: int) -> None:
    hex_text = response.hex() if lower else response.hex().upper()
    value = f'"{hex_text}"' if quoted else hex_text
    lines = ([CMD] if echo else []) + before + [f"+CGLA: {len(hex_text)},{value}"] + inside + ["OK"]
    data = eol + eol.join(line.encode() for line in lines) + eol
    splitter, collector = at.LineSplitter(), at.ReplyCollector(CMD, "+CGLA")
    replies = []
    for i in range(0, len(data), chunk):
        replies += [r for line in splitter.feed(data[i:i + chunk]) if (r := collector.feed(line))]
    assert len(replies) == 1
    assert at.parse_hex_response(replies[0], "+CGLA") == response
    assert collector.urcs == before + inside


# --- real-modem quirks: hex session handles (Sierra), bare +CGLA answers (Fibocom) -------------


@pytest.mark.parametrize(("line", "text", "channel"), [
    ("+CCHO: 000000000385a7cf", "000000000385a7cf", None),      # Sierra MC7455 / EM7590
    ('+CCHO: "000000000385A7CF"', '"000000000385A7CF"', None),
    ("+CCHO: 2", "2", 2), ('+CCHO: "3"', '"3"', 3), ("+CCHO: 20", "20", None), ("+CCHO: 07", "07", 7),
    ("000000000385a7cf", "000000000385a7cf", None), ("+CCHO: " + "f" * 32, "f" * 32, None),
])
def test_ccho_session_handles_are_kept_as_the_modem_wrote_them(line: str, text: str, channel: int | None) -> None:
    session = at.parse_session(at.parse_reply('AT+CCHO="A000"', f"\r\n{line}\r\nOK\r\n".encode(), "+CCHO",
                                              bare_info=True))
    assert (session.text, session.channel) == (text, channel)
    assert at.cgla(session, b"\x80\xe2\x91\x00") == f'AT+CGLA={text},8,"80E29100"'
    assert at.cchc(session) == f"AT+CCHC={text}"


def test_a_bare_word_is_a_urc_not_a_session_handle() -> None:
    data = b"\r\nRDY\r\nFACE\r\n+CCHO: 000000000385a7cf\r\n00ab\r\nOK\r\n"
    collector = at.ReplyCollector('AT+CCHO="A000"', "+CCHO", bare_info=True)
    replies = [r for line in at.LineSplitter().feed(data) if (r := collector.feed(line))]
    assert at.parse_session(replies[0]).text == "000000000385a7cf"
    assert collector.urcs == ["RDY", "FACE", "00ab"]  # a bare candidate beside a +CCHO line is a URC


@pytest.mark.parametrize("line", ['6,"BF9000"', "6,bf9000", '"BF9000"', "BF9000", "3,BF9000", '6 , "BF9000"'])
def test_cgla_answer_without_its_prefix_parses(line: str) -> None:
    reply = at.parse_reply(CMD, f"\r\nRING\r\n{line}\r\nRDY\r\nOK\r\n".encode(), "+CGLA", bare_hex=True)
    assert at.parse_hex_response(reply, "+CGLA", bare=True) == bytes.fromhex("BF9000")


@pytest.mark.parametrize(("data", "urcs"), [
    (b"\r\n+CGLA: 4,9000\r\n6,BF9000\r\nOK\r\n", ["6,BF9000"]),   # the prefixed line wins
    (b"\r\n6,BF9000\r\n+CGLA: 4,9000\r\nOK\r\n", ["6,BF9000"]),
    (b"\r\nRING\r\n+CEREG: 1,5\r\n4,9000\r\nOK\r\n", ["RING", "+CEREG: 1,5"]),
])
def test_bare_cgla_lines_never_take_the_place_of_a_prefixed_answer_or_a_urc(data: bytes, urcs: list[str]) -> None:
    collector = at.ReplyCollector(CMD, "+CGLA", bare_hex=True)
    replies = [r for line in at.LineSplitter().feed(data) if (r := collector.feed(line))]
    assert at.parse_hex_response(replies[0], "+CGLA", bare=True) == b"\x90\x00"
    assert collector.urcs == urcs


@pytest.mark.parametrize("data", [b"\r\n4,9000\r\n6,BF9000\r\nOK\r\n", b"\r\n8,9000\r\nOK\r\n",
                                  b"\r\n\"90\"\r\nOK\r\n", b"\r\n4,90G0\r\nOK\r\n", b"\r\nOK\r\n"])
def test_ambiguous_or_malformed_bare_cgla_answers_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        at.parse_hex_response(at.parse_reply(CMD, data, "+CGLA", bare_hex=True), "+CGLA", bare=True)


def test_a_bare_cgla_answer_counts_only_when_the_driver_asks_for_it() -> None:
    data = b"\r\n4,9000\r\nOK\r\n"
    with pytest.raises(DecodeError):
        at.parse_hex_response(at.parse_reply(CMD, data, "+CGLA"), "+CGLA", bare=True)
    with pytest.raises(DecodeError):
        at.parse_hex_response(at.parse_reply(CMD, data, "+CGLA", bare_hex=True), "+CGLA")
    assert at.parse_hex_response(at.parse_reply(CMD, data, "+CGLA", bare_hex=True), "+CGLA", bare=True) == b"\x90\x00"


_BARE_URCS = st.sampled_from(["+CEREG: 1,5", "RING", "RDY", "SMS DONE", "PB DONE", "+CPIN: READY"])
# one line of text: a line break would make it two lines of the reply, which is another test's matter
_SESSION_TEXT = st.from_regex(r'"?[0-9A-Fa-f]{1,32}"?', fullmatch=True) \
    | st.text(st.characters(blacklist_characters="\r\n"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(session=_SESSION_TEXT, prefixed=st.booleans(), before=st.lists(_BARE_URCS, max_size=2))
def test_any_ccho_session_text_is_kept_exactly_or_is_a_decode_error(session: str, prefixed: bool,
                                                                     before: list[str]) -> None:
    """hex-session: decimal or hex, quoted or not, up to 32 digits, is kept as written."""
    line = f"+CCHO: {session}" if prefixed else session
    data = ("\r\n".join(before + [line, "OK"]) + "\r\n").encode("utf-8")
    try:
        parsed = at.parse_session(at.parse_reply('AT+CCHO="A000"', data, "+CCHO", bare_info=True))
    except GatewayError:
        return
    assert parsed.text == session.strip() and parsed.value.strip("0")
    assert at.cgla(parsed, b"\x00\xa4\x04\x00").startswith(f"AT+CGLA={session.strip()},")
    assert parsed.channel is None or (parsed.value.isdigit() and 1 <= parsed.channel <= 19)


@settings(max_examples=200, deadline=None)
@given(apdu=st.binary(min_size=4, max_size=40), channel=st.integers(1, 19),
       cla=st.sampled_from([0x00, 0x80]), mode=st.sampled_from(["basic", "session"]))
def test_cgla_class_byte_is_basic_unless_the_modem_wants_the_session_as_channel(
        apdu: bytes, channel: int, cla: int, mode: str) -> None:
    """modem-sets-cla: what the driver writes into CLA for a CGLA command (ModemConfig.cgla_cla)."""
    from gateway.spec.apdu import channel_of, with_channel

    session = at.Session(str(channel))
    host_apdu = with_channel(bytes((cla,)) + apdu[1:], 1 + channel % 19)  # the caller's host channel
    card = session.channel if mode == "session" else 0
    assert card is not None
    line = at.cgla(session, with_channel(host_apdu, card))
    sent = bytes.fromhex(line.rsplit(",", 1)[1].strip('"'))
    assert channel_of(sent[0]) == (channel if mode == "session" else 0)
    assert sent[0] & 0x80 == cla and sent[1:] == apdu[1:]


@settings(max_examples=300, deadline=None)
@given(response=st.binary(min_size=2, max_size=200), form=st.sampled_from(["length", "hex"]), quoted=st.booleans(),
       lower=st.booleans(), echo=st.booleans(), before=st.lists(_BARE_URCS, max_size=3),
       inside=st.lists(_BARE_URCS, max_size=3), eol=_EOL, chunk=st.integers(1, 64))
def test_bare_cgla_answer_amid_echo_and_urcs_yields_the_exact_response(
        response: bytes, form: str, quoted: bool, lower: bool, echo: bool, before: list[str], inside: list[str],
        eol: bytes, chunk: int) -> None:
    """bare-cgla: ``<2m>,"<hex>"`` or the hex alone, the URCs around it stay URCs."""
    hex_text = response.hex() if lower else response.hex().upper()
    value = f'"{hex_text}"' if quoted else hex_text
    answer = f"{len(hex_text)},{value}" if form == "length" else value
    lines = ([CMD] if echo else []) + before + [answer] + inside + ["OK"]
    data = eol + eol.join(line.encode() for line in lines) + eol
    splitter, collector = at.LineSplitter(), at.ReplyCollector(CMD, "+CGLA", bare_hex=True)
    replies = []
    for i in range(0, len(data), chunk):
        replies += [r for line in splitter.feed(data[i:i + chunk]) if (r := collector.feed(line))]
    assert len(replies) == 1
    assert at.parse_hex_response(replies[0], "+CGLA", bare=True) == response
    assert collector.urcs == before + inside


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_as_a_bare_cgla_reply_give_a_response_or_a_clear_error(data: bytes) -> None:
    try:
        response = at.parse_hex_response(at.parse_reply(CMD, data, "+CGLA", bare_hex=True), "+CGLA", bare=True)
    except GatewayError:
        return
    assert len(response) >= 2
