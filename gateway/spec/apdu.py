"""ES10b on the wire: short APDUs to the ISD-R, and what their status words mean.

Theory of operation. Every ES10 function is one DER object carried by STORE DATA
(GlobalPlatform Card Spec §11.11, SGP.22 §5.7): CLA 80, INS E2, P1 11 while more blocks
follow and 91 on the last one, P2 the block number from 0, at most `segment_size` data bytes
per block (255 by default; some modems need less). Commands are built for the basic
channel; `with_channel` puts the logical channel into the class byte (ISO 7816-4 §5.4.1)
just before sending, so the same batch works on whatever channel the agent opened.

Response data longer than one APDU comes back in pieces: SW 61xx says "xx more bytes, ask
with GET RESPONSE", 6Cxx says "wrong Le, repeat the command with Le = xx".
`ResponseAssembler` is the pure state machine that turns the responses of one command into
either the next APDU to send or the final (data, sw); the device agent drives it, the
gateway core can replay it, and neither owns any I/O. `check_sw` maps a final status word
to a typed `CardError` subclass, so callers decide by class.

Block numbers. P2 is one octet, so a STORE DATA sequence holds at most 256 blocks
(256 * segment_size bytes). A longer payload is refused with `LocalProtocolError` naming
the limit; `wrap_block_number=True` opts in to counting P2 modulo 256 for cards known to
accept it (GlobalPlatform leaves the behaviour past block 255 unspecified).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.errors import CardError, DecodeError, LocalProtocolError, RemoteProtocolError

ISD_R_AID: Final = bytes.fromhex("A0000005591010FFFFFFFF8900000100")

CLA_BASIC: Final = 0x00
CLA_GP: Final = 0x80
INS_MANAGE_CHANNEL: Final = 0x70
INS_SELECT: Final = 0xA4
INS_STORE_DATA: Final = 0xE2
INS_GET_RESPONSE: Final = 0xC0
P1_MORE_BLOCKS: Final = 0x11
P1_LAST_BLOCK: Final = 0x91
SW_OK: Final = 0x9000
MAX_CHANNEL: Final = 19
MAX_BLOCKS: Final = 256
DEFAULT_SEGMENT_SIZE: Final = 255
DEFAULT_MAX_RESPONSE: Final = 1 << 20


# --- status words -> typed errors (ISO 7816-4 §5.6, GP Card Spec §11.1.3) -----------------


class WrongLength(CardError):
    """6700: Lc/Le wrong for this command."""


class LogicalChannelNotSupported(CardError):
    """6881: the card has no such logical channel."""


class SecureMessagingNotSupported(CardError):
    """6882."""


class SecurityStatusNotSatisfied(CardError):
    """6982."""


class ConditionsNotSatisfied(CardError):
    """6985: command not allowed in the current state (e.g. no session for a BPP segment)."""


class CommandNotAllowed(CardError):
    """6986."""


class IncorrectData(CardError):
    """6A80: the data field (the DER object) was refused."""


class FunctionNotSupported(CardError):
    """6A81: e.g. MANAGE CHANNEL with no channel left."""


class FileNotFound(CardError):
    """6A82: application (such as the ISD-R AID) not found."""


class NotEnoughMemory(CardError):
    """6A84."""


class WrongP1P2(CardError):
    """6A86 / 6B00."""


class ReferencedDataNotFound(CardError):
    """6A88."""


class InsNotSupported(CardError):
    """6D00."""


class ClaNotSupported(CardError):
    """6E00: often a logical channel that is not open."""


class NoPreciseDiagnosis(CardError):
    """6F00."""


class MemoryFailure(CardError):
    """6581."""


class ExecutionError(CardError):
    """64xx: execution error, state unchanged."""


class WrongLe(CardError):
    """6Cxx reaching a caller, or a card that keeps answering 6Cxx."""


class UnknownStatus(CardError):
    """Any status word without a more specific class (including an unhandled 61xx)."""


class ResponseTooLong(RemoteProtocolError):
    """GET RESPONSE chaining went past its caps: total response length, or fetches without data."""


_SW_ERRORS: Final[dict[int, tuple[type[CardError], str]]] = {
    0x6700: (WrongLength, "wrong length"),
    0x6881: (LogicalChannelNotSupported, "logical channel not supported"),
    0x6882: (SecureMessagingNotSupported, "secure messaging not supported"),
    0x6982: (SecurityStatusNotSatisfied, "security status not satisfied"),
    0x6985: (ConditionsNotSatisfied, "conditions of use not satisfied"),
    0x6986: (CommandNotAllowed, "command not allowed"),
    0x6A80: (IncorrectData, "incorrect values in the data field"),
    0x6A81: (FunctionNotSupported, "function not supported"),
    0x6A82: (FileNotFound, "file or application not found"),
    0x6A84: (NotEnoughMemory, "not enough memory space"),
    0x6A86: (WrongP1P2, "incorrect P1-P2"),
    0x6B00: (WrongP1P2, "wrong parameters P1-P2"),
    0x6A88: (ReferencedDataNotFound, "referenced data not found"),
    0x6D00: (InsNotSupported, "instruction not supported"),
    0x6E00: (ClaNotSupported, "class not supported"),
    0x6F00: (NoPreciseDiagnosis, "no precise diagnosis"),
    0x6581: (MemoryFailure, "memory failure"),
}


def is_success(sw: int) -> bool:
    """9000, or 91xx (9000 with a proactive command pending, ETSI TS 102 221 §10.2.1.1)."""
    return sw == SW_OK or sw >> 8 == 0x91


def sw_error(sw: int) -> CardError:
    """The typed error for a failing status word."""
    known = _SW_ERRORS.get(sw)
    if known is not None:
        cls, text = known
        return cls(text, sw=sw)
    if sw >> 8 == 0x64:
        return ExecutionError("execution error, state unchanged", sw=sw)
    if sw >> 8 == 0x6C:
        return WrongLe(f"wrong Le, card offers {sw & 0xFF or 256} bytes", sw=sw)
    if sw >> 8 == 0x61:
        return UnknownStatus("response bytes still available (GET RESPONSE not chained)", sw=sw)
    return UnknownStatus("card refused the command", sw=sw)


def check_sw(sw: int) -> None:
    """Return if `sw` is a success, else raise its typed CardError."""
    if not is_success(sw):
        raise sw_error(sw)


# --- command builders ----------------------------------------------------------------------


def command(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None) -> bytes:
    """A short APDU (ISO 7816-4 §5.1): Lc 1..255 when there is data, Le 1..256 (256 -> 00)."""
    for name, v in (("CLA", cla), ("INS", ins), ("P1", p1), ("P2", p2)):
        if not 0 <= v <= 0xFF:
            raise LocalProtocolError(f"{name} {v} is not one octet")
    if len(data) > 255:
        raise LocalProtocolError(f"{len(data)} data bytes do not fit a short APDU")
    out = bytes((cla, ins, p1, p2))
    if data:
        out += bytes((len(data),)) + data
    if le is not None:
        if not 1 <= le <= 256:
            raise LocalProtocolError(f"Le {le} outside 1..256")
        out += bytes((le & 0xFF,))
    return out


def manage_channel_open() -> bytes:
    """MANAGE CHANNEL open, card assigns the channel (ISO 7816-4 §11.1.2); answers 1 byte."""
    return command(CLA_BASIC, INS_MANAGE_CHANNEL, 0x00, 0x00, le=1)


def opened_channel(data: bytes) -> int:
    """The channel number from the response data of `manage_channel_open`."""
    if len(data) != 1 or not 1 <= data[0] <= MAX_CHANNEL:
        raise DecodeError(f"MANAGE CHANNEL open answered {data.hex() or 'no data'}",
                          type_name="ManageChannel")
    return data[0]


def manage_channel_close(channel: int) -> bytes:
    """MANAGE CHANNEL close of `channel`, sent on the basic channel."""
    if not 1 <= channel <= MAX_CHANNEL:
        raise LocalProtocolError(f"cannot close logical channel {channel}")
    return command(CLA_BASIC, INS_MANAGE_CHANNEL, 0x80, channel)


def select(aid: bytes = ISD_R_AID) -> bytes:
    """SELECT by DF name, first occurrence, return FCI (P1 04, P2 00), Le 00."""
    if not 5 <= len(aid) <= 16:
        raise LocalProtocolError(f"AID of {len(aid)} bytes (ISO 7816-5: 5..16)")
    return command(CLA_BASIC, INS_SELECT, 0x04, 0x00, aid, le=256)


def get_response(le: int) -> bytes:
    """GET RESPONSE for `le` bytes (1..256; the xx of 61xx, with 00 meaning 256)."""
    return command(CLA_BASIC, INS_GET_RESPONSE, 0x00, 0x00, le=le)


def store_data_block_count(payload_len: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """How many STORE DATA blocks `store_data` makes of a payload of `payload_len` bytes."""
    _check_segment_size(segment_size)
    if payload_len <= 0:
        raise LocalProtocolError("STORE DATA needs a payload: an ES10 function is at least one TLV")
    return -(-payload_len // segment_size)


def _check_segment_size(segment_size: int) -> None:
    if not 1 <= segment_size <= 255:
        raise LocalProtocolError(f"STORE DATA segment size {segment_size} outside 1..255")


_STORE_DATA_MORE: Final = bytes((CLA_GP, INS_STORE_DATA, P1_MORE_BLOCKS))
_STORE_DATA_LAST: Final = bytes((CLA_GP, INS_STORE_DATA, P1_LAST_BLOCK))


def store_data(payload: bytes | memoryview, segment_size: int = DEFAULT_SEGMENT_SIZE, *,
               le_last: bool = False, wrap_block_number: bool = False) -> list[bytes]:
    """The STORE DATA blocks carrying one ES10 function's DER object (SGP.22 §5.7).

    `le_last` adds Le 00 to the last block (case 4) for links that need it to return data.
    """
    _check_segment_size(segment_size)
    size = len(payload)
    if size == 0:
        raise LocalProtocolError("STORE DATA needs a payload: an ES10 function is at least one TLV")
    blocks = -(-size // segment_size)
    if blocks > MAX_BLOCKS and not wrap_block_number:
        raise LocalProtocolError(
            f"{size} bytes need {blocks} STORE DATA blocks of {segment_size}; P2 numbers at most "
            f"{MAX_BLOCKS} blocks ({MAX_BLOCKS * segment_size} bytes at this segment size)")
    view = memoryview(payload)
    more = _STORE_DATA_MORE
    full_len = bytes((segment_size,))
    out = [more + bytes((i & 0xFF,)) + full_len + view[i * segment_size:(i + 1) * segment_size]
           for i in range(blocks - 1)]
    last = blocks - 1
    tail = view[last * segment_size:]
    out.append(_STORE_DATA_LAST + bytes((last & 0xFF, len(tail))) + tail + (b"\x00" if le_last else b""))
    return out


# --- logical channels (ISO 7816-4 §5.4.1, GP Card Spec §11.1.4) ----------------------------


def with_channel(apdu: bytes, channel: int) -> bytes:
    """`apdu` with its class byte set for logical `channel` (0..19).

    Channels 0-3 go in b2-b1 of a first-interindustry class byte, 4-19 as 0x40|(channel-4)
    in a further-interindustry one; the proprietary bit 0x80 and command chaining bit 0x10
    are kept. Secure messaging indicated in CLA is not supported (ES10 never uses it).
    """
    if not 0 <= channel <= MAX_CHANNEL:
        raise LocalProtocolError(f"logical channel {channel} outside 0..{MAX_CHANNEL}")
    if len(apdu) < 4:
        raise LocalProtocolError(f"APDU of {len(apdu)} bytes has no header")
    cla = apdu[0]
    if cla == 0xFF or cla & 0x60 == 0x20:
        raise LocalProtocolError(f"CLA {cla:02X} is not an interindustry-coded class byte")
    further = bool(cla & 0x40)
    if (cla & 0x20) if further else (cla & 0x0C):
        raise LocalProtocolError(f"CLA {cla:02X} indicates secure messaging")
    keep = cla & 0x90
    new = keep | channel if channel < 4 else keep | 0x40 | (channel - 4)
    return bytes((new,)) + apdu[1:]


def channel_of(cla: int) -> int:
    """The logical channel number coded in a class byte."""
    return 4 + (cla & 0x0F) if cla & 0x40 else cla & 0x03


# --- responses -----------------------------------------------------------------------------


def split_response(resp: bytes) -> tuple[bytes, int]:
    """(data, sw) of a response APDU."""
    if len(resp) < 2:
        raise DecodeError(f"response APDU of {len(resp)} bytes has no status word", type_name="R-APDU")
    return resp[:-2], (resp[-2] << 8) | resp[-1]


def _with_le(apdu: bytes, le: int) -> bytes:
    """The same short APDU with Le replaced (or added)."""
    if len(apdu) < 4:
        raise LocalProtocolError(f"APDU of {len(apdu)} bytes has no header")
    if len(apdu) <= 5:
        body = apdu[:4]
    else:
        lc = apdu[4]
        if len(apdu) not in (5 + lc, 6 + lc):
            raise LocalProtocolError(f"not a short APDU: {apdu[:5].hex()}... of {len(apdu)} bytes")
        body = apdu[:5 + lc]
    return body + bytes((le & 0xFF,))


@dataclass(frozen=True, slots=True)
class SendNext:
    """Send `apdu` next and feed its response to the assembler."""

    apdu: bytes
    reason: str  # "get-response" (61xx) or "resend-le" (6Cxx)


@dataclass(frozen=True, slots=True)
class Done:
    data: bytes
    sw: int

    def check(self) -> bytes:
        """The data if the command succeeded, else raise the status word's CardError."""
        check_sw(self.sw)
        return self.data


class ResponseAssembler:
    """Collects the responses of one command (61xx / 6Cxx chaining), without I/O.

    `feed(response)` returns `SendNext(apdu)` while the card has more to give, and
    `Done(data, sw)` once a final status word arrives. GET RESPONSE is sent on the command's
    channel; `max_le` caps each GET RESPONSE (modems that fail on Le 00 want 255);
    `max_length` caps the total data fetched; `max_le_retries` caps consecutive 6Cxx;
    `max_empty_fetches` caps consecutive 61xx answers that carry no data (a broken card or
    modem could otherwise keep a device's batch fetching forever).
    """

    def __init__(self, command_apdu: bytes, *, max_length: int = DEFAULT_MAX_RESPONSE,
                 max_le: int = 256, max_le_retries: int = 2, max_empty_fetches: int = 2) -> None:
        if len(command_apdu) < 4:
            raise LocalProtocolError(f"APDU of {len(command_apdu)} bytes has no header")
        if not 1 <= max_le <= 256:
            raise LocalProtocolError(f"max_le {max_le} outside 1..256")
        self._channel = channel_of(command_apdu[0])
        self._last = command_apdu
        self._parts: list[bytes] = []
        self._total = 0
        self._max_length = max_length
        self._max_le = max_le
        self._max_le_retries = max_le_retries
        self._le_retries = 0
        self._max_empty_fetches = max_empty_fetches
        self._empty_fetches = 0
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, response: bytes) -> SendNext | Done:
        if self._done:
            raise LocalProtocolError("response fed to an assembler that is already done")
        data, sw = split_response(response)
        if data:
            self._total += len(data)
            if self._total > self._max_length:
                raise ResponseTooLong(f"response exceeds {self._max_length} bytes")
            self._parts.append(data)
        sw1 = sw >> 8
        if sw1 == 0x61:
            self._le_retries = 0
            self._empty_fetches = 0 if data else self._empty_fetches + 1
            if self._empty_fetches > self._max_empty_fetches:
                raise ResponseTooLong(f"{self._empty_fetches} GET RESPONSE answers in a row carried no data")
            le = min(sw & 0xFF or 256, self._max_le)
            self._last = with_channel(get_response(le), self._channel)
            return SendNext(self._last, "get-response")
        if sw1 == 0x6C:
            self._le_retries += 1
            if self._le_retries > self._max_le_retries:
                raise sw_error(sw)
            self._last = _with_le(self._last, sw & 0xFF or 256)
            return SendNext(self._last, "resend-le")
        self._done = True
        return Done(b"".join(self._parts), sw)
