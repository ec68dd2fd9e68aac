"""The AT dialect of a cellular module's SIM access, as pure functions (no I/O).

Theory of operation. A modem answers a command line with zero or more *information lines*
and one *final result code* (OK, ERROR, +CME ERROR: n; 3GPP TS 27.007 §9.2, V.250 §5.7).
Anything else that arrives meanwhile is either the echo of the command (ATE1, or a modem
that ignores ATE0) or an *unsolicited result code* (+CREG:, +CEREG:, RING, +QIND:, ...),
which may land before, between or after the information lines. `LineSplitter` turns bytes
into lines (CR, LF or CRLF; empty lines dropped; bounded length); `ReplyCollector` sorts the
lines of one command into echo / information / URC and raises the typed `ModemError` of a
failing final result code; the `parse_*` functions read the information lines of the SIM
commands used here:

    AT+CCHO="<AID>"            -> +CCHO: <session> | <session>      (27.007 §8.45)
    AT+CGLA=<s>,<2n>,"<hex>"   -> +CGLA: <2m>,"<hex>" | <2m>,"<hex>" | "<hex>"   (27.007 §8.43)
    AT+CCHC=<s>                -> OK                                (27.007 §8.46)
    AT+CSIM=<2n>,"<hex>"       -> +CSIM: <2m>,"<hex>"               (27.007 §8.17)

Lengths count hex characters; the hex may come quoted or bare, upper or lower case. A
session id is an opaque handle (decimal, or hex as Sierra modules give it) kept exactly as the
modem wrote it. Bare information lines (a +CCHO session id, a +CGLA answer without its prefix,
as Fibocom modules give them) count only when they have the shape of that answer and no
prefixed line answers the command; otherwise they are URCs.
Any input gives an `AtReply`, a `ModemError` from the error tree or a `DecodeError` /
`RemoteProtocolError`: never another exception (fuzzed in tests/links/test_serial_at.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from gateway.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from gateway.links.serial.errors import (
    CommandNotSupported,
    ModemCommandRejected,
    ModemError,
    SimNotReady,
)
from gateway.spec.apdu import MAX_CHANNEL

MAX_LINE: Final = 140_000  # a CGLA answer of 65 535 + 2 bytes in hex, with its prefix
_MAX_HEX_BYTES: Final = 65_537

CME_TEXT: Final[dict[str, int]] = {  # 27.007 §9.2.1, for modems in verbose mode (AT+CMEE=2)
    "phone failure": 0,
    "operation not allowed": 3,
    "operation not supported": 4,
    "sim not inserted": 10,
    "sim pin required": 11,
    "sim puk required": 12,
    "sim failure": 13,
    "sim busy": 14,
    "sim wrong": 15,
    "incorrect password": 16,
    "sim pin2 required": 17,
    "sim puk2 required": 18,
    "invalid index": 21,
    "not found": 22,
    "incorrect parameters": 50,
    "invalid input value": 53,
    "unknown": 100,
}
_CME_NAME: Final = {v: k for k, v in CME_TEXT.items()}
_SIM_NOT_READY: Final = frozenset(range(10, 19))
_OTHER_FINAL_ERRORS: Final = frozenset({"NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE",
                                        "COMMAND NOT SUPPORT"})
_HEX: Final = re.compile(r"[0-9A-Fa-f]*")
_BARE_NUMBER: Final = re.compile(r'"?[0-9]{1,20}"?')
_SESSION: Final = re.compile(r'(")?([0-9A-Fa-f]{1,32})(?(1)")')
_BARE_HEX_ANSWER: Final = re.compile(r'(?:[0-9]{1,7} ?, ?)?"?(?:[0-9A-Fa-f]{2}){2,}"?')


def decimal(text: str, max_digits: int) -> int | None:
    """`text` as a number of ASCII digits (str.isdigit() also takes "²"), else None."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


# --- lines ---------------------------------------------------------------------------------


class LineSplitter:
    """Bytes in, complete lines out; CR, LF and CRLF all end a line; blank lines vanish."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._partial = bytearray()
        self._max_line = max_line

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        start = 0
        for i, b in enumerate(data):
            if b in (0x0D, 0x0A):
                self._add(data[start:i])
                if self._partial:
                    lines.append(self._partial.decode("latin-1").strip())
                    self._partial.clear()
                start = i + 1
        self._add(data[start:])
        return [line for line in lines if line]

    def _add(self, chunk: bytes) -> None:
        self._partial += chunk
        if len(self._partial) > self._max_line:
            self._partial.clear()
            raise RemoteProtocolError(f"modem line longer than {self._max_line} characters")

    @property
    def pending(self) -> bytes:
        """Bytes of a line not yet ended (a prompt, or a line still arriving)."""
        return bytes(self._partial)


# --- replies -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AtReply:
    command: str
    info: tuple[str, ...]


def cme_error(command: str, detail: str) -> ModemError:
    """The typed error of ``+CME ERROR: <detail>`` (numeric or verbose form)."""
    text = detail.strip().strip('"').strip()
    code = decimal(text, 5)
    if code is None:
        code = CME_TEXT.get(text.lower())
    name = _CME_NAME.get(code, text) if code is not None else text
    message = f"+CME ERROR {code if code is not None else '?'} ({name})"
    if code in _SIM_NOT_READY:
        return SimNotReady(message, command=command, cme=code)
    if code == 4:
        return CommandNotSupported(message, command=command, cme=code)
    return ModemCommandRejected(message, command=command, cme=code)


def final_error(command: str, line: str) -> ModemError | None:
    """The error a final result code stands for, or None if `line` is not one."""
    upper = line.upper()
    if upper == "ERROR":
        return ModemCommandRejected("ERROR", command=command)
    if upper.startswith("+CME ERROR:"):
        return cme_error(command, line[len("+CME ERROR:"):])
    if upper.startswith("+CMS ERROR:"):
        return ModemCommandRejected(line, command=command)
    if upper in _OTHER_FINAL_ERRORS:
        return ModemCommandRejected(line, command=command)
    return None


class ReplyCollector:
    """Sorts the lines that follow one command line into echo, information and URCs.

    `prefix` ("+CGLA") marks information lines. With `bare_info` a line that is only a
    number or session handle, maybe quoted, may be information too (+CCHO's bare session id,
    +CGSN's IMEI); with `bare_hex` a line that is only a hex answer (``<2m>,"<hex>"`` or the
    hex alone) may be (+CGLA without its prefix). Such bare lines are information only if no
    prefixed line answers the command, and URCs otherwise, as are all other bare lines
    (Quectel's RDY, "SMS DONE", "PB DONE" after a reset, RING).
    `feed` returns the `AtReply` on OK, raises the `ModemError` of a failing final result
    code, and returns None while the reply goes on. URCs are appended to `urcs` (bare
    candidates that turn out not to be the answer join them when the reply ends).
    """

    def __init__(self, command: str, prefix: str | None = None, *, bare_info: bool = False,
                 bare_hex: bool = False) -> None:
        self.command = command
        self._echo = command.strip().upper()
        self._prefix = prefix.upper() + ":" if prefix else None
        self._bare_info = bare_info
        self._bare_hex = bare_hex
        self._info: list[str] = []
        self._bare: list[str] = []
        self._echo_seen = False
        self.urcs: list[str] = []
        self.done = False

    def feed(self, line: str) -> AtReply | None:
        if self.done:
            raise LocalProtocolError("line fed to a finished AT reply")
        upper = line.upper()
        if upper == "OK":
            self.done = True
            if self._info:
                self.urcs.extend(self._bare)
                return AtReply(self.command, tuple(self._info))
            return AtReply(self.command, tuple(self._bare))
        error = final_error(self.command, line)
        if error is not None:
            self.done = True
            self.urcs.extend(self._bare)
            raise error
        if not self._echo_seen and not self._info and not self._bare and upper == self._echo:
            self._echo_seen = True
        elif self._prefix is not None and upper.startswith(self._prefix):
            self._info.append(line)
        elif self._bare_info and (_BARE_NUMBER.fullmatch(line) or _bare_session(line)):
            self._bare.append(line)
        elif self._bare_hex and _BARE_HEX_ANSWER.fullmatch(line):
            self._bare.append(line)
        else:
            self.urcs.append(line)
        return None


def _bare_session(line: str) -> bool:
    """A hex session handle alone on a line; it must hold a digit, so that words stay URCs."""
    return _SESSION.fullmatch(line) is not None and any(c.isdigit() for c in line)


def parse_reply(command: str, data: bytes, prefix: str | None = None, *, bare_info: bool = False,
                bare_hex: bool = False) -> AtReply:
    """The reply to `command` found in `data` (for tests, tools and fuzzing)."""
    collector = ReplyCollector(command, prefix, bare_info=bare_info, bare_hex=bare_hex)
    for line in LineSplitter().feed(data):
        reply = collector.feed(line)
        if reply is not None:
            return reply
    raise DecodeError("no final result code", type_name="AT reply")


# --- command lines -------------------------------------------------------------------------


def _hex(apdu: bytes) -> str:
    return apdu.hex().upper()


def ccho(aid: bytes) -> str:
    if not 1 <= len(aid) <= 16:
        raise LocalProtocolError(f"AID of {len(aid)} bytes")
    return f'AT+CCHO="{_hex(aid)}"'


def cchc(session: Session | int) -> str:
    return f"AT+CCHC={session}"


def cgla(session: Session | int, apdu: bytes) -> str:
    return f'AT+CGLA={session},{2 * len(apdu)},"{_hex(apdu)}"'


def csim(apdu: bytes) -> str:
    return f'AT+CSIM={2 * len(apdu)},"{_hex(apdu)}"'


# --- information lines ---------------------------------------------------------------------


def _value_of(line: str, prefix: str) -> str:
    head = prefix.upper() + ":"
    if not line.upper().startswith(head):
        raise DecodeError(f"expected {prefix}: got {line[:40]!r}", type_name=prefix)
    return line[len(head):].strip()


def parse_hex_response(reply: AtReply, prefix: str, *, bare: bool = False) -> bytes:
    """The response APDU in ``<prefix>: <length>,<hex>`` (hex quoted or bare).

    The length counts hex characters (27.007); modems that count bytes are accepted too.
    With `bare`, a reply whose only information line lacks the prefix is read as
    ``<length>,<hex>`` or as the hex alone (Fibocom FM350-GL's +CGLA).
    """
    head = prefix.upper() + ":"
    lines = [line for line in reply.info if line.upper().startswith(head)]
    if bare and not lines and len(reply.info) == 1:
        value = reply.info[0].strip()
        length_text, sep, hex_text = value.partition(",") if "," in value else ("", ",", value)
    else:
        if len(lines) != 1:
            raise DecodeError(f"{len(lines)} {prefix} lines in the reply", type_name=prefix)
        value = _value_of(lines[0], prefix)
        length_text, sep, hex_text = value.partition(",")
    if not sep:
        raise DecodeError(f"no length,data in {value[:40]!r}", type_name=prefix)
    length_text = length_text.strip()
    hex_text = hex_text.strip()
    if len(hex_text) >= 2 and hex_text[0] == '"' and hex_text[-1] == '"':
        hex_text = hex_text[1:-1].strip()
    length = decimal(length_text, 7) if length_text else len(hex_text)
    if length is None:
        raise DecodeError(f"length {length_text[:20]!r} is not a number", type_name=prefix)
    if _HEX.fullmatch(hex_text) is None or len(hex_text) % 2:
        raise DecodeError(f"response {hex_text[:40]!r} is not an even run of hex digits", type_name=prefix)
    if length not in (len(hex_text), len(hex_text) // 2):
        raise DecodeError(f"length {length} but {len(hex_text)} hex digits", type_name=prefix)
    response = bytes.fromhex(hex_text)
    if not 2 <= len(response) <= _MAX_HEX_BYTES:
        raise DecodeError(f"response APDU of {len(response)} bytes", type_name=prefix)
    return response


@dataclass(frozen=True, slots=True)
class Session:
    """A +CCHO session id exactly as the modem wrote it (`text`, quotes included if any).

    27.007 makes it an opaque handle for +CGLA / +CCHC, not a channel number: Sierra modules
    give ``000000000385a7cf``. `channel` is the value when it reads as a decimal logical
    channel number (1..19), for the modems that want the channel in the class byte.
    """

    text: str

    @property
    def value(self) -> str:
        return self.text.strip('"')

    @property
    def channel(self) -> int | None:
        number = decimal(self.value, 2)
        return number if number is not None and 1 <= number <= MAX_CHANNEL else None

    def __str__(self) -> str:
        return self.text


def parse_session(reply: AtReply) -> Session:
    """The session id of an AT+CCHO reply: ``+CCHO: <id>`` or a bare ``<id>``, maybe quoted.

    The id is decimal or hex, up to 32 digits (a 128-bit handle), kept as written.
    """
    if len(reply.info) != 1:
        raise DecodeError(f"{len(reply.info)} information lines in a +CCHO reply", type_name="+CCHO")
    line = reply.info[0]
    value = _value_of(line, "+CCHO") if line.startswith("+") else line.strip()
    if _SESSION.fullmatch(value) is None:
        raise DecodeError(f"session id {value[:40]!r} is neither decimal nor hex", type_name="+CCHO")
    if not value.strip('"').strip("0"):
        raise DecodeError("session id 0 (the basic channel) from +CCHO", type_name="+CCHO")
    return Session(value)


def parse_plain(reply: AtReply, prefix: str | None = None) -> str:
    """The single value of a reply: ``<prefix>: value`` or a bare line."""
    for line in reply.info:
        if prefix is None:
            return line
        if line.upper().startswith(prefix.upper() + ":"):
            return _value_of(line, prefix)
    raise DecodeError(f"no {prefix or 'information'} line in the reply", type_name=prefix or "AT reply")
