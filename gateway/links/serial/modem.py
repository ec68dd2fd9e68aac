"""An eUICC reached through a cellular module's AT commands: CCHO/CGLA/CCHC, or CSIM.

Theory of operation. Modems do not let the host send MANAGE CHANNEL through AT+CGLA: the
modem opens the logical channel itself (AT+CCHO="<AID>", which also SELECTs the AID) and
hands back a session id for AT+CGLA. `ModemEuicc.transmit` nevertheless takes any command
APDU, as the device agent's backends do, by keeping *host channels* (what the caller sees
in MANAGE CHANNEL answers and class bytes) apart from the modem's sessions:

- MANAGE CHANNEL open is answered locally with a free host channel, held until the SELECT by
  AID that follows; that SELECT becomes AT+CCHO (answering 9000 without FCI). If the modem
  lacks CCHO/CGLA, or refuses CCHO for this AID, the channel is opened with MANAGE CHANNEL
  and SELECT sent through AT+CSIM instead;
- a command on a host channel goes out by that channel's route (CGLA with the session id,
  or CSIM) with the class byte rewritten: through CSIM to the card's channel; through CGLA to
  the basic channel (27.007 §8.45: the modem sets the channel bits for the session), or, for
  modems configured with ``cgla_cla="session"``, to the session id read as a channel number;
  the basic channel uses CSIM;
- MANAGE CHANNEL close becomes AT+CCHC (or MANAGE CHANNEL close through CSIM).

Every command is also fitted to the modem: STORE DATA blocks longer than `segment_size`
(modems reject 255-byte blocks) are cut into smaller blocks renumbered in P2 (the caller's
numbering is mapped onto the card's), and 61xx / 6Cxx are chained with GET RESPONSE on the
same route (`ResponseAssembler`), capped at `max_le`. Modems that chain 61xx themselves just
answer the whole response; `modem_chains_responses` records having seen that.

`AsyncModemEuicc` runs the blocking port I/O in a worker thread for the asyncio agent and the
gateway's own serial device (`gateway.links.serial.local`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Final, Literal

from gateway.errors import DecodeError, GatewayError, LocalProtocolError
from gateway.links.serial import at
from gateway.links.serial.errors import ModemCommandRejected, ModemPortError, ModemTimeout, SimNotReady
from gateway.links.serial.port import AtPort
from gateway.spec.apdu import (
    INS_MANAGE_CHANNEL,
    INS_SELECT,
    INS_STORE_DATA,
    ISD_R_AID,
    MAX_CHANNEL,
    Done,
    ResponseAssembler,
    check_sw,
    channel_of,
    manage_channel_close,
    manage_channel_open,
    opened_channel,
    select,
    split_response,
    store_data,
    with_channel,
)

log = logging.getLogger(__name__)

Route = Literal["cgla", "csim"]
Mode = Literal["auto", "cgla", "csim"]
ClaMode = Literal["basic", "session"]
CLA_MODES: Final[tuple[ClaMode, ...]] = ("basic", "session")

_SW_OK: Final = b"\x90\x00"
_SW_NO_CHANNEL: Final = b"\x6a\x81"
_SW_CHANNEL_CLOSED: Final = b"\x68\x81"
_SHORT_APDU_MAX: Final = 256


@dataclass(frozen=True, slots=True)
class ModemConfig:
    segment_size: int = 255        # most data bytes one APDU may carry through this modem
    max_le: int = 256              # cap of each GET RESPONSE's Le (some modems fail on 00)
    mode: Mode = "auto"            # auto: CCHO/CGLA when the modem has them, else CSIM
    timeout_s: float = 5.0         # per AT command
    cgla_cla: ClaMode = "basic"    # CGLA class byte: basic (the modem sets the channel), or the session id
    init: tuple[str, ...] = ("ATE0", "AT+CMEE=1")
    modem_reset: tuple[str, ...] = ("AT+CFUN=1,1",)
    uicc_reset: tuple[str, ...] = ("AT+CFUN=0", "AT+CFUN=1")

    def __post_init__(self) -> None:
        if not 1 <= self.segment_size <= 255:
            raise LocalProtocolError(f"segment size {self.segment_size} outside 1..255")
        if not 1 <= self.max_le <= 256:
            raise LocalProtocolError(f"max_le {self.max_le} outside 1..256")
        if self.cgla_cla not in CLA_MODES:
            raise LocalProtocolError(f"cgla_cla {self.cgla_cla!r} is not one of {', '.join(CLA_MODES)}")


@dataclass(slots=True)
class _Channel:
    route: Route
    card_channel: int                 # channel the driver writes into CLA (0: basic / the modem's)
    session: at.Session | None = None  # +CCHO session id (CGLA route)
    next_block: int = 0       # STORE DATA P2 for the card, after re-segmenting


@dataclass(slots=True)
class ModemStats:
    at_commands: int = 0
    get_responses: int = 0
    resegmented_blocks: int = 0
    csim_fallbacks: int = 0


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    imei: str | None
    plmn: str | None
    signal_dbm: int | None


class ModemEuicc:
    """The eUICC in a modem, as a `transmit(apdu) -> response` backend and a gateway-side API."""

    def __init__(self, port: AtPort, config: ModemConfig = ModemConfig()) -> None:
        self.port = port
        self.config = config
        self.cgla_supported = config.mode == "cgla"
        self.csim_supported = config.mode == "csim"
        self.modem_chains_responses = False
        self.stats = ModemStats()
        self._channels: dict[int, _Channel | None] = {}
        self._basic_next_block = 0

    @classmethod
    def open(cls, device: str, config: ModemConfig = ModemConfig(), *, baudrate: int = 115200) -> ModemEuicc:
        port = AtPort.open(device, baudrate=baudrate, timeout_s=config.timeout_s)
        try:
            modem = cls(port, config)
            modem.start()
        except BaseException:
            port.close()
            raise
        return modem

    def close(self) -> None:
        """Close the channels still open (best effort), then the port."""
        try:
            for host in list(self._channels):
                try:
                    self.close_channel(host)
                except GatewayError as exc:
                    log.warning("closing channel %d: %s", host, exc)
                    if isinstance(exc, (ModemTimeout, ModemPortError)):
                        break
        finally:
            self._channels.clear()
            self.port.close()

    def __enter__(self) -> ModemEuicc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- set-up --------------------------------------------------------------------------

    def _at(self, line: str, prefix: str | None = None, *, bare_info: bool = False, bare_hex: bool = False,
            timeout_s: float | None = None) -> at.AtReply:
        self.stats.at_commands += 1
        return self.port.command(line, prefix, bare_info=bare_info, bare_hex=bare_hex, timeout_s=timeout_s)

    def start(self) -> None:
        """Wake the command interpreter, apply `init`, and find which SIM commands exist."""
        for attempt in range(3):
            try:
                self._at("AT", timeout_s=min(1.0, self.config.timeout_s))
                break
            except ModemTimeout:
                if attempt == 2:
                    raise
        for line in self.config.init:
            self._at(line)
        if self.config.mode == "auto":
            self.cgla_supported = self._supports("AT+CCHO=?") and self._supports("AT+CGLA=?")
            self.csim_supported = self._supports("AT+CSIM=?")
            if not (self.cgla_supported or self.csim_supported):
                raise ModemCommandRejected("modem has neither AT+CCHO/AT+CGLA nor AT+CSIM")
        log.info("modem SIM access: %s", "CCHO/CGLA" if self.cgla_supported else "CSIM")

    def _supports(self, test_line: str) -> bool:
        try:
            self._at(test_line)
        except ModemCommandRejected:
            return False
        return True

    def device_info(self) -> DeviceInfo:
        """IMEI (AT+CGSN), registered PLMN (AT+COPS? numeric) and signal (AT+CSQ), best effort."""
        imei = plmn = None
        signal = None
        try:
            line = self._at("AT+CGSN", "+CGSN", bare_info=True).info[0]
            imei = (line[len("+CGSN:"):] if line.upper().startswith("+CGSN:") else line).strip().strip('"')
        except (ModemCommandRejected, IndexError):
            pass
        try:
            self._at("AT+COPS=3,2")
            m = re.search(r'"(\d{5,6})"', at.parse_plain(self._at("AT+COPS?", "+COPS"), "+COPS"))
            plmn = m.group(1) if m else None
        except (ModemCommandRejected, DecodeError):
            pass
        try:
            rssi = at.parse_plain(self._at("AT+CSQ", "+CSQ"), "+CSQ").split(",")[0].strip()
            level = at.decimal(rssi, 2)
            if level is not None and level <= 31:
                signal = -113 + 2 * level
        except (ModemCommandRejected, DecodeError):
            pass
        return DeviceInfo(imei if imei and at.decimal(imei, 17) is not None else None, plmn, signal)

    # -- gateway-side API ----------------------------------------------------------------

    def open_channel(self, aid: bytes = ISD_R_AID) -> int:
        """A host channel with `aid` selected; CardError if the card refuses the SELECT."""
        host = self._free_host_channel()
        if host is None:
            raise ModemCommandRejected("no logical channel left")
        self._channels[host] = None
        try:
            data, sw = split_response(self._bind(host, aid))
        except BaseException:
            if self._channels.get(host) is None:
                self._channels.pop(host, None)
            raise
        if sw != 0x9000:
            self.close_channel(host)
            check_sw(sw)
        return host

    def close_channel(self, host: int) -> None:
        channel = self._channels.pop(host, None)
        if channel is None:
            return
        if channel.session is not None:
            self._at(at.cchc(channel.session))
        else:
            self._raw(_Channel("csim", 0), manage_channel_close(channel.card_channel))

    def send(self, apdu: bytes) -> tuple[bytes, int]:
        """One command on the host channel in its class byte: (all response data, final SW)."""
        host = channel_of(apdu[0]) if len(apdu) >= 4 else 0
        return self._command(host, apdu)

    def es10(self, payload: bytes, host: int) -> bytes:
        """One ES10 function (its DER request) on `host`: the response data; CardError on failure."""
        blocks = store_data(payload, self.config.segment_size)
        data, sw = b"", 0x9000
        for block in blocks:
            data, sw = self._command(host, with_channel(block, host))
            check_sw(sw)
        return data

    def refresh(self, kind: str) -> None:
        """The batch's refresh instruction: "modem-reset" or "uicc-reset"; sessions are gone after."""
        lines = {"modem-reset": self.config.modem_reset, "uicc-reset": self.config.uicc_reset}.get(kind)
        if lines is None:
            raise LocalProtocolError(f"unknown refresh {kind!r}")
        self._channels.clear()
        self._basic_next_block = 0
        for line in lines:
            self._at(line, timeout_s=max(self.config.timeout_s, 15.0))

    # -- the backend contract ------------------------------------------------------------

    def transmit(self, apdu: bytes) -> bytes:
        """Any command APDU in, response data + SW out (after 61xx/6Cxx chaining)."""
        if len(apdu) < 4:
            raise LocalProtocolError(f"APDU of {len(apdu)} bytes has no header")
        cla, ins, p1, p2 = apdu[:4]
        host = channel_of(cla)
        if ins == INS_MANAGE_CHANNEL and host == 0 and cla & 0x80 == 0:
            if p1 == 0x00 and p2 == 0x00:
                opened = self._free_host_channel()
                if opened is None:
                    return _SW_NO_CHANNEL
                self._channels[opened] = None
                return bytes((opened,)) + _SW_OK
            if p1 == 0x80 and p2 in self._channels:
                self.close_channel(p2)
                return _SW_OK
        if host in self._channels and self._channels[host] is None:
            if ins == INS_SELECT and p1 == 0x04 and len(apdu) > 5 and cla & 0x80 == 0:
                return self._bind(host, apdu[5:5 + apdu[4]])
            self._bind_csim(host)
        data, sw = self._command(host, apdu)
        return data + sw.to_bytes(2, "big")

    # -- internals -----------------------------------------------------------------------

    def _free_host_channel(self) -> int | None:
        return next((c for c in range(1, MAX_CHANNEL + 1) if c not in self._channels), None)

    def _bind(self, host: int, aid: bytes) -> bytes:
        """Open the card's channel for a pending host channel and select `aid` on it."""
        if self.cgla_supported:
            try:
                session = at.parse_session(self._at(at.ccho(aid), "+CCHO", bare_info=True))
            except SimNotReady:
                raise
            except ModemCommandRejected as exc:
                if not self.csim_supported:
                    raise
                log.info("AT+CCHO refused (%s): opening the channel through AT+CSIM", exc)
                self.stats.csim_fallbacks += 1
            else:
                card = 0
                if self.config.cgla_cla == "session":
                    if session.channel is None:
                        self._at(at.cchc(session))
                        raise LocalProtocolError(
                            f"cgla_cla=session, but the modem's session id {session} is not a channel "
                            f"number 1..{MAX_CHANNEL}: this modem sets the class byte itself (cgla_cla=basic)")
                    card = session.channel
                self._channels[host] = _Channel("cgla", card, session)
                return _SW_OK
        channel = self._bind_csim(host)
        return self._raw(channel, select(aid))

    def _bind_csim(self, host: int) -> _Channel:
        if not self.csim_supported:
            raise ModemCommandRejected("this modem cannot open a channel without an AID (no AT+CSIM)")
        basic = _Channel("csim", 0)
        data, sw = split_response(self._raw(basic, manage_channel_open()))
        if sw != 0x9000:
            del self._channels[host]
            check_sw(sw)
        number = opened_channel(data)
        channel = _Channel("csim", number)
        self._channels[host] = channel
        return channel

    def _route(self, host: int) -> _Channel | None:
        if host == 0:
            if not self.csim_supported:
                raise ModemCommandRejected("the basic channel needs AT+CSIM, which this modem lacks")
            return _Channel("csim", 0)
        return self._channels.get(host)

    def _command(self, host: int, apdu: bytes) -> tuple[bytes, int]:
        channel = self._route(host)
        if channel is None:
            if not self.csim_supported:
                return split_response(_SW_CHANNEL_CLOSED)
            channel = _Channel("csim", host)
        blocks = self._fit(channel, host, apdu)
        for i, block in enumerate(blocks):
            assembler = ResponseAssembler(block, max_le=self.config.max_le)
            step = assembler.feed(self._raw(channel, block))
            while not isinstance(step, Done):
                self.stats.get_responses += 1
                step = assembler.feed(self._raw(channel, step.apdu))
            if i == len(blocks) - 1 or step.sw != 0x9000 or step.data:
                return step.data, step.sw
        raise LocalProtocolError("no block to send")

    def _fit(self, channel: _Channel, host: int, apdu: bytes) -> list[bytes]:
        """`apdu` as the modem can carry it: STORE DATA re-cut to `segment_size`, P2 renumbered."""
        if len(apdu) <= 5 or len(apdu) < 5 + apdu[4] or apdu[4] == 0:
            return [apdu]
        lc = apdu[4]
        if apdu[1] != INS_STORE_DATA or apdu[0] & 0x80 == 0:
            if lc > self.config.segment_size:
                raise LocalProtocolError(
                    f"APDU {apdu[:4].hex()} carries {lc} bytes; this modem takes at most {self.config.segment_size}")
            return [apdu]
        start = 0 if apdu[3] == 0 else (channel.next_block if host else self._basic_next_block)
        data = apdu[5:5 + lc]
        size = self.config.segment_size
        pieces = [data[i:i + size] for i in range(0, lc, size)]
        last_p1 = apdu[2]
        out = []
        for i, piece in enumerate(pieces):
            p1 = last_p1 if i == len(pieces) - 1 else (last_p1 & 0x7F) | 0x01
            out.append(apdu[:2] + bytes((p1, (start + i) & 0xFF, len(piece))) + piece)
        if len(pieces) > 1 or start != apdu[3]:
            out[-1] += apdu[5 + lc:]
            self.stats.resegmented_blocks += len(pieces) - 1
        else:
            out = [apdu]
        if host:
            channel.next_block = start + len(pieces)
        else:
            self._basic_next_block = start + len(pieces)
        return out

    def _raw(self, channel: _Channel, apdu: bytes) -> bytes:
        """One APDU through the modem, as is apart from the class byte's channel bits."""
        apdu = with_channel(apdu, channel.card_channel)
        if channel.session is not None:
            reply = self._at(at.cgla(channel.session, apdu), "+CGLA", bare_hex=True)
            response = at.parse_hex_response(reply, "+CGLA", bare=True)
        else:
            response = at.parse_hex_response(self._at(at.csim(apdu), "+CSIM"), "+CSIM")
        if len(response) > _SHORT_APDU_MAX + 2:
            self.modem_chains_responses = True
        return response


@dataclass
class AsyncModemEuicc:
    """`ModemEuicc` for asyncio code: each call runs in a worker thread, one at a time."""

    modem: ModemEuicc
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def transmit(self, apdu: bytes) -> bytes:
        async with self._lock:
            return await asyncio.to_thread(self.modem.transmit, apdu)

    async def refresh(self, kind: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self.modem.refresh, kind)

    async def open_channel(self, aid: bytes = ISD_R_AID) -> int:
        async with self._lock:
            return await asyncio.to_thread(self.modem.open_channel, aid)

    async def close_channel(self, host: int) -> None:
        async with self._lock:
            await asyncio.to_thread(self.modem.close_channel, host)

    async def send(self, apdu: bytes) -> tuple[bytes, int]:
        async with self._lock:
            return await asyncio.to_thread(self.modem.send, apdu)

    async def device_info(self) -> DeviceInfo:
        async with self._lock:
            return await asyncio.to_thread(self.modem.device_info)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self.modem.close)
