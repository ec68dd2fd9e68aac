"""The ISO 7816-4 / GlobalPlatform APDU layer of the software eUICC's ISD-R.

Theory of operation. `ApduLayer.transmit` takes one short command APDU and returns
response data + SW, exactly as a card on T=1 would (and as a modem relays with AT+CGLA):

- CLA: first interindustry class (b8-b7 = 00, or 10 for the proprietary 0x80 range) carries
  logical channels 0-3 in b2-b1; further interindustry class (b7 = 1) carries 4-19 in b4-b1.
  Secure messaging is refused (6882), command chaining by CLA too (6884), an unknown class
  byte gets 6E00, a channel that is not open 6881.
- MANAGE CHANNEL (INS 70) opens the lowest free channel (P2 00) or a given one, answers the
  channel number, and closes (P1 80) any channel but the basic one.
- SELECT (INS A4, P1 04 by DF name) of the ISD-R AID on a channel; other AIDs give 6A82.
- STORE DATA (INS E2, CLA 80|ch): P1 11 = more blocks, 91 = last block; P2 = block number
  from 0, checked in order (6A86 otherwise); blocks of any size are reassembled up to
  `max_command_size` (6A84 beyond: the card has no room to buffer it). The reassembled
  bytes must be exactly one BER TLV (6A80 otherwise) and go to the ES10 dispatcher.
- Response data: returned at once when Le covers it; otherwise (Le absent, as ES10 STORE
  DATA is sent, or too small) the card answers 61xx and keeps the data for GET RESPONSE
  (INS C0) on that channel, 256 bytes at most per answer. A GET RESPONSE whose Le exceeds
  what remains (and is not 00 = "up to 256") gets 6Cxx with the exact length.
  Any other command on the channel discards what was pending, as on a real card.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hil.euicc.faults import Faults

ISD_R_AID = bytes.fromhex("A0000005591010FFFFFFFF8900000100")

SW_OK = 0x9000
SW_WRONG_LENGTH = 0x6700
SW_CHANNEL_NOT_SUPPORTED = 0x6881
SW_SM_NOT_SUPPORTED = 0x6882
SW_CHAINING_NOT_SUPPORTED = 0x6884
SW_CONDITIONS_NOT_SATISFIED = 0x6985
SW_WRONG_DATA = 0x6A80
SW_FUNCTION_NOT_SUPPORTED = 0x6A81
SW_FILE_NOT_FOUND = 0x6A82
SW_NOT_ENOUGH_MEMORY = 0x6A84
SW_WRONG_P1P2 = 0x6A86
SW_REFERENCED_DATA_NOT_FOUND = 0x6A88
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00
SW_NO_PRECISE_DIAGNOSIS = 0x6F00

INS_MANAGE_CHANNEL = 0x70
INS_SELECT = 0xA4
INS_STORE_DATA = 0xE2
INS_GET_RESPONSE = 0xC0


class StatusWord(Exception):
    """Raised by an ES10 handler (or inside this layer) to answer with a bare status word."""

    def __init__(self, sw: int, why: str = "") -> None:
        self.sw = sw
        super().__init__(f"SW {sw:04X} {why}".strip())


@dataclass
class Command:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None   # None: no Le field; 256 for Le=00


@dataclass
class _Channel:
    selected: bool = False
    store_data: bytearray | None = None
    next_block: int = 0
    pending: bytes = b""


def parse_command(apdu: bytes) -> Command:
    """Short APDUs only (cases 1-4); extended length is refused with 6700."""
    if len(apdu) < 4:
        raise StatusWord(SW_WRONG_LENGTH, "shorter than a header")
    cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
    body = apdu[4:]
    if not body:
        return Command(cla, ins, p1, p2, b"", None)
    if len(body) == 1:
        return Command(cla, ins, p1, p2, b"", body[0] or 256)
    lc = body[0]
    if lc == 0:
        raise StatusWord(SW_WRONG_LENGTH, "extended length not supported")
    if len(body) == 1 + lc:
        return Command(cla, ins, p1, p2, bytes(body[1:]), None)
    if len(body) == 2 + lc:
        return Command(cla, ins, p1, p2, bytes(body[1:1 + lc]), body[-1] or 256)
    raise StatusWord(SW_WRONG_LENGTH, f"Lc {lc} does not match {len(body) - 1} data bytes")


def decode_cla(cla: int) -> tuple[int, bool]:
    """(logical channel, proprietary class) of a CLA byte, or StatusWord for what we refuse."""
    if cla == 0xFF:
        raise StatusWord(SW_CLA_NOT_SUPPORTED, "invalid CLA FF")
    proprietary = bool(cla & 0x80)
    if cla & 0x40:
        if cla & 0x20:
            raise StatusWord(SW_SM_NOT_SUPPORTED)
        if cla & 0x10:
            raise StatusWord(SW_CHAINING_NOT_SUPPORTED)
        return 4 + (cla & 0x0F), proprietary
    if cla & 0x20:
        raise StatusWord(SW_CLA_NOT_SUPPORTED, "reserved class")
    if cla & 0x0C:
        raise StatusWord(SW_SM_NOT_SUPPORTED)
    if cla & 0x10:
        raise StatusWord(SW_CHAINING_NOT_SUPPORTED)
    return cla & 0x03, proprietary


def _sw_bytes(sw: int) -> bytes:
    return bytes([sw >> 8, sw & 0xFF])


@dataclass
class ApduLayer:
    """Channels, SELECT, STORE DATA reassembly and GET RESPONSE in front of an ES10 dispatcher.

    `es10(request) -> response` gets one complete ES10 DER object and returns the response
    object (possibly empty); it raises `StatusWord` to answer with a bare status word.
    """

    es10: Callable[[bytes], bytes]
    faults: Faults = field(default_factory=Faults)
    channels_supported: int = 20
    max_command_size: int = 65536
    _channels: dict[int, _Channel] = field(default_factory=lambda: {0: _Channel()})

    def transmit(self, apdu: bytes) -> bytes:
        injected = self.faults.next_command()
        if self.faults.delay_s:
            time.sleep(self.faults.delay_s)
        if injected is not None:
            return _sw_bytes(injected)
        try:
            data, sw = self._process(bytes(apdu))
        except StatusWord as refusal:
            return _sw_bytes(refusal.sw)
        return data + _sw_bytes(sw)

    def reset(self) -> None:
        """Power cycle / card reset: only the basic channel survives, nothing is selected."""
        self._channels = {0: _Channel()}

    def open_channels(self) -> list[int]:
        return sorted(self._channels)

    def _process(self, apdu: bytes) -> tuple[bytes, int]:
        cmd = parse_command(apdu)
        if cmd.ins & 0x01 or (cmd.ins & 0xF0) in (0x60, 0x90):
            raise StatusWord(SW_INS_NOT_SUPPORTED, "invalid INS")
        channel_no, proprietary = decode_cla(cmd.cla)
        if channel_no >= self.channels_supported:
            raise StatusWord(SW_CHANNEL_NOT_SUPPORTED)
        channel = self._channels.get(channel_no)
        if channel is None:
            raise StatusWord(SW_CHANNEL_NOT_SUPPORTED, f"channel {channel_no} is not open")
        if cmd.ins == INS_GET_RESPONSE:
            return self._get_response(channel, cmd)
        channel.pending = b""
        if cmd.ins == INS_MANAGE_CHANNEL:
            self._interindustry(proprietary)
            return self._manage_channel(channel_no, cmd)
        if cmd.ins == INS_SELECT:
            self._interindustry(proprietary)
            return self._select(channel, cmd)
        if cmd.ins == INS_STORE_DATA:
            if not proprietary:
                raise StatusWord(SW_CLA_NOT_SUPPORTED, "STORE DATA needs a proprietary CLA")
            return self._store_data(channel, cmd)
        raise StatusWord(SW_INS_NOT_SUPPORTED)

    @staticmethod
    def _interindustry(proprietary: bool) -> None:
        if proprietary:
            raise StatusWord(SW_CLA_NOT_SUPPORTED, "interindustry command with a proprietary CLA")

    def _manage_channel(self, origin: int, cmd: Command) -> tuple[bytes, int]:
        if cmd.p1 == 0x00:
            if cmd.data:
                raise StatusWord(SW_WRONG_LENGTH)
            if cmd.p2 == 0x00:
                free = [n for n in range(1, self.channels_supported) if n not in self._channels]
                if not free:
                    raise StatusWord(SW_FUNCTION_NOT_SUPPORTED, "no free logical channel")
                number = free[0]
            else:
                number = cmd.p2
                if number >= self.channels_supported or number in self._channels:
                    raise StatusWord(SW_WRONG_P1P2, f"channel {number} unavailable")
            self._channels[number] = _Channel()
            return (bytes([number]) if cmd.p2 == 0x00 else b""), SW_OK
        if cmd.p1 == 0x80:
            if cmd.data or cmd.le is not None:
                raise StatusWord(SW_WRONG_LENGTH)
            number = cmd.p2 or origin
            if number == 0:
                raise StatusWord(SW_WRONG_P1P2, "the basic channel cannot be closed")
            if number not in self._channels:
                raise StatusWord(SW_WRONG_P1P2, f"channel {number} is not open")
            del self._channels[number]
            return b"", SW_OK
        raise StatusWord(SW_WRONG_P1P2)

    def _select(self, channel: _Channel, cmd: Command) -> tuple[bytes, int]:
        if cmd.p1 != 0x04 or cmd.p2 not in (0x00, 0x0C):
            raise StatusWord(SW_WRONG_P1P2)
        if not cmd.data:
            raise StatusWord(SW_WRONG_LENGTH)
        if cmd.data != ISD_R_AID:
            channel.selected = False
            raise StatusWord(SW_FILE_NOT_FOUND)
        channel.selected = True
        channel.store_data = None
        if cmd.p2 == 0x0C:
            return b"", SW_OK
        return self._respond(channel, _fci(), cmd.le)

    def _store_data(self, channel: _Channel, cmd: Command) -> tuple[bytes, int]:
        if not channel.selected:
            raise StatusWord(SW_CONDITIONS_NOT_SATISFIED, "ISD-R not selected on this channel")
        if cmd.p1 not in (0x11, 0x91):
            raise StatusWord(SW_WRONG_P1P2, f"P1 {cmd.p1:02X}")
        if not cmd.data:
            raise StatusWord(SW_WRONG_LENGTH, "STORE DATA without data")
        wrapped = channel.store_data is not None and channel.next_block == 0 and bool(channel.store_data)
        if cmd.p2 == 0 and not wrapped:
            channel.store_data = bytearray()
            channel.next_block = 0
        if channel.store_data is None or cmd.p2 != channel.next_block:
            channel.store_data = None
            raise StatusWord(SW_WRONG_P1P2, f"block {cmd.p2} out of sequence")
        if len(channel.store_data) + len(cmd.data) > self.max_command_size:
            channel.store_data = None
            raise StatusWord(SW_NOT_ENOUGH_MEMORY, "STORE DATA sequence too long")
        channel.store_data += cmd.data
        channel.next_block = (channel.next_block + 1) & 0xFF
        if cmd.p1 == 0x11:
            return b"", SW_OK
        request = bytes(channel.store_data)
        channel.store_data = None
        response = self.es10(request)
        return self._respond(channel, response, cmd.le)

    @staticmethod
    def _respond(channel: _Channel, data: bytes, le: int | None) -> tuple[bytes, int]:
        if not data:
            return b"", SW_OK
        if le is not None and len(data) <= le:
            return data, SW_OK
        sent = b"" if le is None else data[:le]
        channel.pending = data[len(sent):]
        return sent, 0x6100 | (min(len(channel.pending), 256) & 0xFF)

    @staticmethod
    def _get_response(channel: _Channel, cmd: Command) -> tuple[bytes, int]:
        if cmd.p1 or cmd.p2:
            raise StatusWord(SW_WRONG_P1P2)
        if cmd.data:
            raise StatusWord(SW_WRONG_LENGTH)
        if not channel.pending:
            raise StatusWord(SW_CONDITIONS_NOT_SATISFIED, "no response data pending")
        le = 256 if cmd.le is None else cmd.le
        remaining = len(channel.pending)
        if le > remaining and le != 256:
            return b"", 0x6C00 | remaining
        chunk, channel.pending = channel.pending[:le], channel.pending[le:]
        if channel.pending:
            return chunk, 0x6100 | (min(len(channel.pending), 256) & 0xFF)
        return chunk, SW_OK


def _fci() -> bytes:
    """FCI template of the ISD-R: AID (84) and proprietary data (A5) with the max command size."""
    aid = b"\x84" + bytes([len(ISD_R_AID)]) + ISD_R_AID
    proprietary = bytes.fromhex("A5039F6501FF")
    body = aid + proprietary
    return b"\x6F" + bytes([len(body)]) + body
