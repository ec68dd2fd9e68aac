"""One serial line to a modem (pyserial): a command line out, its reply in, URCs aside.

Theory of operation. `AtPort.command` first reads whatever is already waiting and files it
as unsolicited, writes the command line ended by CR, then feeds every line that arrives to a
`ReplyCollector` until a final result code or the deadline. AT replies carry no correlation
id, so after a timeout the late answer of the command that timed out could pass for the next
reply: the next command is therefore preceded by a *resync*, a command whose reply is
recognisable (``AT+CFUN?`` answers ``+CFUN:``, which nothing else here sends), and every
reply before it is discarded (waiting up to three command timeouts for it). Parsing is `gateway.links.serial.at`; this module only moves bytes and
keeps time. Calls are serialised by a lock, so one port can be shared by threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import serial

from gateway.errors import LocalProtocolError
from gateway.links.serial.at import AtReply, LineSplitter, ReplyCollector
from gateway.links.serial.errors import ModemError, ModemPortError, ModemTimeout

log = logging.getLogger(__name__)

_POLL_S = 0.05
RESYNC_COMMAND = "AT+CFUN?"
RESYNC_PREFIX = "+CFUN"


class AtPort:
    def __init__(self, port: Any, *, timeout_s: float = 5.0,
                 on_urc: Callable[[str], None] | None = None) -> None:
        self._serial = port
        self.timeout_s = timeout_s
        self.on_urc = on_urc
        self.urcs: deque[str] = deque(maxlen=256)
        self._splitter = LineSplitter()
        self._lines: deque[str] = deque()
        self._lock = threading.Lock()
        self._stale = False

    @classmethod
    def open(cls, device: str, *, baudrate: int = 115200, rtscts: bool = False, timeout_s: float = 5.0,
             on_urc: Callable[[str], None] | None = None) -> AtPort:
        try:
            port = serial.Serial(device, baudrate=baudrate, rtscts=rtscts, timeout=_POLL_S,
                                 write_timeout=timeout_s, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ModemPortError(f"cannot open {device}: {exc}") from exc
        return cls(port, timeout_s=timeout_s, on_urc=on_urc)

    def close(self) -> None:
        with self._lock:
            self._serial.close()

    def __enter__(self) -> AtPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, line: str, prefix: str | None = None, *, bare_info: bool = False,
                bare_hex: bool = False, timeout_s: float | None = None) -> AtReply:
        """Send `line`; its reply, or the typed ModemError of its final result code."""
        with self._lock:
            if self._stale:
                self._resync(3 * (self.timeout_s if timeout_s is None else timeout_s))
            self._take_pending()
            collector = ReplyCollector(line, prefix, bare_info=bare_info, bare_hex=bare_hex)
            log.debug("modem <- %s", line)
            if not line.isascii() or "\r" in line or "\n" in line:
                raise LocalProtocolError(f"AT command line {line[:40]!r} is not one line of ASCII")
            self._write(line.encode("ascii") + b"\r")
            deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
            try:
                while True:
                    reply = collector.feed(self._next_line(deadline))
                    if reply is not None:
                        log.debug("modem -> %s OK", reply.info)
                        return reply
            finally:
                for urc in collector.urcs:
                    self._urc(urc)

    def _next_line(self, deadline: float) -> str:
        """The next complete line, reading the port until one is there or the deadline passes."""
        while not self._lines:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._stale = True
                raise ModemTimeout("modem did not answer in time")
            try:
                self._serial.timeout = min(remaining, _POLL_S)
                chunk = self._serial.read(max(1, self._serial.in_waiting))
            except (serial.SerialException, OSError) as exc:
                raise ModemPortError(f"serial port failed: {exc}") from exc
            if chunk:
                self._lines.extend(self._splitter.feed(chunk))
        return self._lines.popleft()

    def _take_pending(self) -> None:
        """File what arrived after the last reply, and meanwhile, as URCs."""
        try:
            self._serial.timeout = 0
            while waiting := self._serial.in_waiting:
                self._lines.extend(self._splitter.feed(self._serial.read(waiting)))
        except (serial.SerialException, OSError) as exc:
            raise ModemPortError(f"serial port failed: {exc}") from exc
        while self._lines:
            self._urc(self._lines.popleft())

    def _resync(self, timeout_s: float) -> None:
        """Read past late replies until the answer to a recognisable command (see above)."""
        self._take_pending()
        self._write(RESYNC_COMMAND.encode("ascii") + b"\r")
        deadline = time.monotonic() + timeout_s
        collector = ReplyCollector(RESYNC_COMMAND, RESYNC_PREFIX)
        while True:
            try:
                reply = collector.feed(self._next_line(deadline))
            except ModemError:
                reply = None
            if not collector.done:
                continue
            for urc in collector.urcs:
                self._urc(urc)
            if reply is not None and reply.info:
                self._stale = False
                return
            log.info("modem: discarded a late reply while resynchronising")
            collector = ReplyCollector(RESYNC_COMMAND, RESYNC_PREFIX)

    def _write(self, data: bytes) -> None:
        try:
            self._serial.write(data)
            self._serial.flush()
        except serial.SerialTimeoutException as exc:
            self._stale = True
            raise ModemTimeout(f"modem did not take the command: {exc}") from exc
        except (serial.SerialException, OSError) as exc:
            raise ModemPortError(f"serial port failed: {exc}") from exc

    def _urc(self, line: str) -> None:
        self.urcs.append(line)
        log.debug("modem URC %s", line)
        if self.on_urc is not None:
            self.on_urc(line)
