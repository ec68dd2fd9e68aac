"""An AT-command cellular module in front of an eUICC, speaking over a serial device (a pty).

Theory of operation. `ModemEmulator.handle(line)` is the modem's command interpreter: one
command line in (without its CR), the bytes the modem would write back out, echo included.
It implements the SIM-access subset of 3GPP TS 27.007 (AT+CCHO / AT+CGLA / AT+CCHC, AT+CSIM)
on any card object with ``transmit(apdu) -> bytes`` (the software eUICC), plus what a driver
needs around it (AT, ATE0/1, AT+CMEE, AT+CGSN, AT+COPS, AT+CSQ, AT+CFUN). Like a real
module, echo is on after power-up and after a reset (which also prints RDY, +CPIN: READY,
SMS DONE and PB DONE), a session id from +CCHO is the card's channel number, and, as
27.007 §8.45 has it, the modem puts that channel into the class byte of every +CGLA command
(whatever channel bits the host sent).

`Quirks` switches on the misbehaviours seen in real modules, one at a time or together:

    echo              echo stays on whatever ATE0 says
    urc               unsolicited lines before, inside and after replies, and while idle
    max-apdu=N        +CME ERROR: 50 for a command APDU with more than N data bytes
    no-cgla           AT+CCHO / AT+CGLA / AT+CCHC (and their =? tests) answer ERROR
    ccho-refused      AT+CCHO answers +CME ERROR: 3 (modems that block opening the ISD-R)
    auto-get-response the modem chains 61xx with GET RESPONSE itself
    unquoted          hex in +CGLA / +CSIM answers is not quoted
    lowercase         hex in answers is lower case
    bare-ccho         AT+CCHO answers a bare session id line, without "+CCHO: "
    hex-session       session ids are 64-bit hex handles (000000000385a7cf), not channel
                      numbers (Sierra MC7455 / EM7590)
    cla-as-is         +CGLA passes the class byte to the card unchanged: the host must put the
                      channel into it (a modem ignoring 27.007; the session id is the channel)
    bare-cgla         AT+CGLA answers without "+CGLA: ": ``<2m>,<hex>`` on odd command lines,
                      the hex alone on even ones (Fibocom FM350-GL)
    cme-text          +CME ERROR in verbose text form whatever AT+CMEE says
    fragment          replies are written a few bytes at a time
    mute-after=N      after N command lines the modem reads but never answers again
    late=N            the answer to the N-th command line comes one second late

`serve(path, stop)` runs the interpreter on a serial device until `stop` is set; the command
line (``python -m hil.modem_emulator``) wraps it around a `SoftEuicc`.
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

log = logging.getLogger(__name__)

IMEI = "356938035643809"
LATE_S = 1.0
PLMN = "00101"


class Card(Protocol):
    def transmit(self, apdu: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Quirks:
    echo: bool = False
    urc: bool = False
    max_apdu: int | None = None
    no_cgla: bool = False
    ccho_refused: bool = False
    auto_get_response: bool = False
    unquoted: bool = False
    lowercase: bool = False
    bare_ccho: bool = False
    hex_session: bool = False
    cla_as_is: bool = False
    bare_cgla: bool = False
    cme_text: bool = False
    fragment: bool = False
    mute_after: int | None = None
    late: int | None = None

    @classmethod
    def parse(cls, text: str) -> Quirks:
        """``"echo,urc,max-apdu=128"`` -> Quirks; unknown names are a ValueError."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, arg = item.partition("=")
            key = name.replace("-", "_")
            if key not in known:
                raise ValueError(f"unknown quirk {name!r} (known: {', '.join(k.replace('_', '-') for k in known)})")
            if key in ("max_apdu", "mute_after", "late"):
                if not (arg.isascii() and arg.isdigit() and len(arg) < 7):
                    raise ValueError(f"quirk {name} needs a number: {name}=N")
                values[key] = int(arg)
            elif arg:
                raise ValueError(f"quirk {name} takes no value")
            else:
                values[key] = True
        return cls(**values)


_CME_TEXT = {3: "operation not allowed", 4: "operation not supported", 10: "SIM not inserted",
             13: "SIM failure", 21: "invalid index", 50: "incorrect parameters", 100: "unknown"}
_HEX_ARG = r'"?([0-9A-Fa-f]*)"?'
_SESSION_ARG = r'"?([0-9A-Fa-f]{1,32})"?'
_CGLA = re.compile(rf"AT\+CGLA={_SESSION_ARG},([0-9]{{1,6}}),{_HEX_ARG}$", re.I)
_CSIM = re.compile(rf"AT\+CSIM=([0-9]{{1,6}}),{_HEX_ARG}$", re.I)
_CCHO = re.compile(rf"AT\+CCHO={_HEX_ARG}$", re.I)
_CCHC = re.compile(rf"AT\+CCHC={_SESSION_ARG}$", re.I)
HANDLE_BASE = 0x385A7CE  # hex-session handles: HANDLE_BASE + channel, 16 lower-case digits


class Reply(Exception):
    """A final error result code (carried as an exception to leave the handler early)."""

    def __init__(self, cme: int | None) -> None:
        self.cme = cme
        super().__init__(cme)


@dataclass
class ModemEmulator:
    card: Card
    quirks: Quirks = field(default_factory=Quirks)
    echo: bool = True
    cmee: int = 0
    cfun: int = 1
    sessions: set[int] = field(default_factory=set)
    commands: list[str] = field(default_factory=list)
    muted: bool = False
    _urc_count: int = 0
    _after: bytes = b""  # lines a reset prints after its OK

    # -- the interpreter ---------------------------------------------------------------

    def handle(self, line: str) -> bytes:
        """The modem's output for one command line (echo, information, final result code)."""
        if self.muted:
            return b""
        self.commands.append(line)
        if self.quirks.mute_after is not None and len(self.commands) > self.quirks.mute_after:
            self.muted = True
            return b""
        out = (line + "\r").encode("latin-1") if self.echo or self.quirks.echo else b""
        if self.quirks.urc and len(self.commands) % 2:
            out += self._urc_line()
        if self.quirks.late == len(self.commands):
            time.sleep(LATE_S)
        try:
            info = self._execute(line.strip())
        except Reply as r:
            return out + self._final_error(r.cme)
        for i, text in enumerate(info):
            out += b"\r\n" + text.encode("latin-1") + b"\r\n"
            if self.quirks.urc and i == len(info) - 1:
                out += b"\r\nRING\r\n"
        out += b"\r\nOK\r\n" + self._after
        self._after = b""
        if self.quirks.urc and len(self.commands) % 3 == 0:
            out += self._urc_line()
        return out

    def idle_urc(self) -> bytes:
        return self._urc_line() if self.quirks.urc and not self.muted else b""

    def _urc_line(self) -> bytes:
        self._urc_count += 1
        urcs = ("+CEREG: 1,5", '+QIND: "csq",20,99', '+CREG: 1,"00AF","0123ABCD",7', "+CGEV: ME PDN ACT 1")
        return b"\r\n" + urcs[self._urc_count % len(urcs)].encode() + b"\r\n"

    def _final_error(self, cme: int | None) -> bytes:
        if cme is None or (self.cmee == 0 and not self.quirks.cme_text):
            return b"\r\nERROR\r\n"
        if self.cmee == 2 or self.quirks.cme_text:
            return f"\r\n+CME ERROR: {_CME_TEXT.get(cme, 'unknown')}\r\n".encode()
        return f"\r\n+CME ERROR: {cme}\r\n".encode()

    def _hex(self, data: bytes) -> str:
        text = data.hex() if self.quirks.lowercase else data.hex().upper()
        return text if self.quirks.unquoted else f'"{text}"'

    def _execute(self, line: str) -> list[str]:
        upper = line.upper()
        if upper in ("AT", "ATZ", "AT&F"):
            return []
        if upper in ("ATE0", "ATE1", "ATE"):
            self.echo = upper == "ATE1"
            return []
        if upper == "ATI":
            return ["ipae-gateway modem emulator", "Revision: 1"]
        if upper.startswith("AT+CMEE="):
            value = upper[8:]
            if value not in ("0", "1", "2"):
                raise Reply(50)
            self.cmee = int(value)
            return []
        if upper in ("AT+CCHO=?", "AT+CGLA=?", "AT+CCHC=?"):
            if self.quirks.no_cgla:
                raise Reply(None)
            return []
        if upper == "AT+CSIM=?":
            return []
        if upper == "AT+CGSN":
            return [IMEI]
        if upper == "AT+COPS=3,2":
            return []
        if upper == "AT+COPS?":
            return [f'+COPS: 0,2,"{PLMN}",7']
        if upper == "AT+CSQ":
            return ["+CSQ: 20,99"]
        if upper.startswith("AT+CFUN"):
            return self._cfun(upper)
        if upper.startswith(("AT+CCHO", "AT+CGLA", "AT+CCHC")) and self.quirks.no_cgla:
            raise Reply(None)
        if self.cfun != 1 and upper.startswith(("AT+CCHO", "AT+CGLA", "AT+CCHC", "AT+CSIM")):
            raise Reply(10)
        if m := _CCHO.match(line):
            return self._ccho(m.group(1))
        if m := _CCHC.match(line):
            session = self._channel_of(m.group(1))
            self.sessions.discard(session)
            self._transmit(bytes((0x00, 0x70, 0x80, session)))
            return []
        if m := _CGLA.match(line):
            session, apdu = self._channel_of(m.group(1)), self._apdu(m.group(2), m.group(3))
            response = self._chained(apdu if self.quirks.cla_as_is else _with_channel(apdu, session))
            if not self.quirks.bare_cgla:
                return [f"+CGLA: {2 * len(response)},{self._hex(response)}"]
            return [f"{2 * len(response)},{self._hex(response)}" if len(self.commands) % 2 else self._hex(response)]
        if m := _CSIM.match(line):
            response = self._chained(self._apdu(m.group(1), m.group(2)))
            return [f"+CSIM: {2 * len(response)},{self._hex(response)}"]
        raise Reply(None if not upper.startswith("AT+") else 4)

    def _cfun(self, upper: str) -> list[str]:
        if upper == "AT+CFUN?":
            return [f"+CFUN: {self.cfun}"]
        if upper == "AT+CFUN=1,1":
            self._power_cycle()
            self.echo = True
            self._after = b"\r\nRDY\r\n\r\n+CPIN: READY\r\n\r\nSMS DONE\r\n\r\nPB DONE\r\n"
            return []
        if upper in ("AT+CFUN=0", "AT+CFUN=4"):
            self.cfun = int(upper[-1])
            self.sessions.clear()
            return []
        if upper == "AT+CFUN=1":
            if self.cfun != 1:
                self._power_cycle()
            self.cfun = 1
            return []
        raise Reply(50)

    def _power_cycle(self) -> None:
        self.sessions.clear()
        power_cycle = getattr(self.card, "power_cycle", None)
        if callable(power_cycle):
            power_cycle()

    def _apdu(self, length: str, hex_text: str) -> bytes:
        if int(length) != len(hex_text) or len(hex_text) % 2 or len(hex_text) < 8:
            raise Reply(50)
        apdu = bytes.fromhex(hex_text)
        lc = apdu[4] if len(apdu) > 5 else 0
        if self.quirks.max_apdu is not None and lc > self.quirks.max_apdu:
            raise Reply(50)
        return apdu

    def _ccho(self, aid_hex: str) -> list[str]:
        if self.quirks.ccho_refused or not 10 <= len(aid_hex) <= 32 or len(aid_hex) % 2:
            raise Reply(3)
        opened = self._transmit(bytes.fromhex("0070000001"))
        if len(opened) != 3 or opened[1:] != b"\x90\x00":
            raise Reply(3)
        channel = opened[0]
        aid = bytes.fromhex(aid_hex)
        selected = self._chained(_with_channel(bytes((0, 0xA4, 4, 0, len(aid))) + aid + b"\x00", channel))
        if selected[-2:] != b"\x90\x00":
            self._transmit(bytes((0x00, 0x70, 0x80, channel)))
            raise Reply(3)
        self.sessions.add(channel)
        session = f"{HANDLE_BASE + channel:016x}" if self.quirks.hex_session else str(channel)
        return [session if self.quirks.bare_ccho else f"+CCHO: {session}"]

    def _channel_of(self, session: str) -> int:
        """The card channel of a +CGLA / +CCHC session id; +CME ERROR 21 for an unknown one."""
        if self.quirks.hex_session:
            channel = int(session, 16) - HANDLE_BASE
        else:
            channel = int(session) if session.isdigit() else -1
        if channel not in self.sessions:
            raise Reply(21)
        return channel

    def _chained(self, apdu: bytes) -> bytes:
        response = self._transmit(apdu)
        if not self.quirks.auto_get_response:
            return response
        data = b""
        while response[-2] == 0x61:
            data += response[:-2]
            le = response[-1]
            response = self._transmit(bytes((apdu[0] & 0x03 if apdu[0] & 0x40 == 0 else apdu[0] & 0x4F,
                                             0xC0, 0, 0, le)))
        return data + response

    def _transmit(self, apdu: bytes) -> bytes:
        try:
            return self.card.transmit(apdu)
        except Exception as exc:  # a card that fails (PowerLoss) is a SIM failure to the host
            log.warning("card failed on %s: %s", apdu[:4].hex(), exc)
            raise Reply(13) from exc

    # -- the serial device -------------------------------------------------------------

    def serve(self, path: str, stop: threading.Event, *, idle_urc_s: float = 0.3) -> None:
        """Answer command lines on the serial device at `path` until `stop` is set."""
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            pending = b""
            last_activity = time.monotonic()
            while not stop.is_set():
                readable, _, _ = select.select([fd], [], [], 0.05)
                if not readable:
                    if idle_urc_s and time.monotonic() - last_activity > idle_urc_s:
                        self._write(fd, self.idle_urc())
                        last_activity = time.monotonic()
                    continue
                try:
                    chunk = os.read(fd, 4096)
                except BlockingIOError:
                    continue
                except OSError:
                    break  # the other end of the pty went away
                if not chunk:
                    break
                last_activity = time.monotonic()
                pending += chunk
                while b"\r" in pending:
                    raw, pending = pending.split(b"\r", 1)
                    line = raw.replace(b"\n", b"").decode("latin-1")
                    if line.strip():
                        self._write(fd, self.handle(line))
                if len(pending) > 200_000:
                    pending = b""
        finally:
            os.close(fd)

    def _write(self, fd: int, data: bytes) -> None:
        step = 7 if self.quirks.fragment else len(data) or 1
        for i in range(0, len(data), step):
            view = memoryview(data[i:i + step])
            while view:
                select.select([], [fd], [], 1.0)
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    continue
            if self.quirks.fragment:
                time.sleep(0.001)


def _with_channel(apdu: bytes, channel: int) -> bytes:
    """The class byte of an interindustry command set to `channel` (ISO 7816-4 §5.4.1)."""
    cla = apdu[0]
    keep = cla & 0x90
    new = keep | channel if channel < 4 else keep | 0x40 | (channel - 4)
    return bytes((new,)) + apdu[1:]


class EmulatorThread:
    """`ModemEmulator.serve` in a background thread (context manager), for tests."""

    def __init__(self, emulator: ModemEmulator, path: str, *, idle_urc_s: float = 0.3) -> None:
        self.emulator = emulator
        self._stop = threading.Event()
        self._thread = threading.Thread(target=emulator.serve, args=(path, self._stop),
                                        kwargs={"idle_urc_s": idle_urc_s}, daemon=True, name="modem-emulator")

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
