"""eUICC backends of a rig: one small interface in front of a software card, a modem, a reader.

Theory of operation. A rig scenario, the reference device agent and the probes all need the
same thing from a card: one command APDU in, response data + SW out. `RigBackend` is that
interface plus what a rig operator needs to see (`name`, `description`) and what the device
link's batches ask for after an enable/disable (`refresh`). Three kinds:

- `SoftBackend`: the software eUICC (hil.euicc), optionally with its state file, so the same
  scenarios run with no hardware at all;
- `SerialBackend`: a cellular module on a serial port, through the gateway's own AT driver
  (gateway.links.serial.ModemEuicc: CCHO/CGLA or CSIM, STORE DATA re-segmenting, GET RESPONSE
  chaining, URC filtering). Nothing of the AT dialect is repeated here;
- `PcscBackend`: a card reader through PC/SC (pyscard, imported only when asked for: it needs
  pcscd and libpcsclite from the OS and is not a dependency of the gateway).

`parse_backend("soft" | "serial:/dev/ttyUSB2,segment=128" | "pcsc[:reader]")` builds one.
Backends are blocking; asyncio code wraps them with `AsyncBackend` (one call at a time, in a
worker thread) so a slow modem never stalls the peers running in the same event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import ConfigError, GatewayError, NetworkError

log = logging.getLogger(__name__)

BACKEND_SYNTAX = "soft[,eid=EID][,state=FILE] | serial:DEVICE[,segment=N][,baud=N][,mode=auto|cgla|csim]" \
                 "[,max_le=N][,timeout=S] | pcsc[:READER]"


class RigBackend(Protocol):
    """What every rig backend offers (the device agent only needs `transmit`)."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    def transmit(self, apdu: bytes) -> bytes: ...

    def refresh(self, kind: str) -> None: ...

    def close(self) -> None: ...


class CardUnavailable(NetworkError):
    """The reader or the card is not there (no reader, no card inserted, pyscard missing)."""


# --- the software eUICC ------------------------------------------------------------------------


@dataclass
class SoftBackend:
    """The software eUICC; `refresh` power-cycles it as a modem reset would."""

    card: Any                      # hil.euicc.SoftEuicc
    name: str = "soft"
    state_path: Path | None = None

    @property
    def description(self) -> str:
        where = f"state in {self.state_path}" if self.state_path else "state in memory"
        return f"software eUICC (hil.euicc), EID {self.card.eid.hex().upper()}, {where}"

    def transmit(self, apdu: bytes) -> bytes:
        return bytes(self.card.transmit(apdu))

    def refresh(self, kind: str) -> None:
        self.card.power_cycle()

    def close(self) -> None:
        return None


# --- a modem on a serial port ------------------------------------------------------------------


@dataclass
class SerialBackend:
    """A cellular module's eUICC through gateway.links.serial.ModemEuicc."""

    modem: Any                     # gateway.links.serial.ModemEuicc
    device: str
    name: str = "serial"

    @property
    def description(self) -> str:
        m = self.modem
        access = "CCHO/CGLA" if m.cgla_supported else "CSIM"
        return (f"AT modem on {self.device} ({access}, segment {m.config.segment_size}, "
                f"GET RESPONSE Le <= {m.config.max_le})")

    def transmit(self, apdu: bytes) -> bytes:
        return bytes(self.modem.transmit(apdu))

    def refresh(self, kind: str) -> None:
        self.modem.refresh(kind)

    def device_info(self) -> Any:
        return self.modem.device_info()

    def close(self) -> None:
        self.modem.close()


# --- a PC/SC reader ------------------------------------------------------------------------------


@dataclass
class PcscBackend:
    """A card in a PC/SC reader (pyscard). T=0 cards answer 61xx/6Cxx: callers chain as usual."""

    connection: Any                # smartcard.CardConnection
    reader: str
    name: str = "pcsc"
    atr: bytes = b""

    @property
    def description(self) -> str:
        return f"PC/SC reader {self.reader!r}, ATR {self.atr.hex().upper()}"

    def transmit(self, apdu: bytes) -> bytes:
        try:
            data, sw1, sw2 = self.connection.transmit(list(apdu))
        except Exception as exc:   # pyscard's CardConnectionException and friends: translate at the edge
            raise CardUnavailable(f"PC/SC transmit failed: {exc}") from exc
        return bytes(data) + bytes((sw1, sw2))

    def refresh(self, kind: str) -> None:
        """A warm reset of the card (the reader's equivalent of a modem reset)."""
        try:
            from smartcard.scard import SCARD_RESET_CARD  # type: ignore[import-not-found]
            self.connection.reconnect(disposition=SCARD_RESET_CARD)
        except Exception as exc:
            raise CardUnavailable(f"PC/SC reset failed: {exc}") from exc

    def close(self) -> None:
        try:
            self.connection.disconnect()
        except Exception as exc:
            log.warning("PC/SC disconnect: %s", exc)


def pcsc_readers() -> list[str]:
    """Names of the PC/SC readers present; CardUnavailable when pyscard or pcscd is missing."""
    try:
        from smartcard.System import readers  # type: ignore[import-not-found]
    except ImportError as exc:
        raise CardUnavailable("pyscard is not installed (pip install pyscard; apt-get install pcscd "
                              "libpcsclite-dev)") from exc
    try:
        return [str(r) for r in readers()]
    except Exception as exc:   # pcscd not running
        raise CardUnavailable(f"PC/SC is not available: {exc}") from exc


def open_pcsc(reader: str | None) -> PcscBackend:
    names = pcsc_readers()
    if not names:
        raise CardUnavailable("no PC/SC reader found")
    if reader is None:
        chosen = names[0]
    elif reader.isdigit() and int(reader) < len(names):
        chosen = names[int(reader)]
    else:
        matches = [n for n in names if reader.lower() in n.lower()]
        if not matches:
            raise CardUnavailable(f"no PC/SC reader matches {reader!r} (readers: {', '.join(names)})")
        chosen = matches[0]
    from smartcard.System import readers

    try:
        connection = next(r for r in readers() if str(r) == chosen).createConnection()
        connection.connect()
    except Exception as exc:   # no card inserted, reader busy
        raise CardUnavailable(f"cannot connect to the card in {chosen!r}: {exc}") from exc
    return PcscBackend(connection, chosen, atr=bytes(connection.getATR()))


# --- the --backend parser ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackendSpec:
    kind: str                                  # soft | serial | pcsc
    target: str | None = None                  # serial device or reader name
    options: dict[str, str] = field(default_factory=dict)


_OPTIONS = {"soft": {"eid", "state"}, "serial": {"segment", "baud", "mode", "max_le", "timeout"},
            "pcsc": set()}


def parse_spec(text: str) -> BackendSpec:
    """`soft` | `serial:/dev/ttyUSB2,segment=128` | `pcsc:Reader name` -> BackendSpec; ConfigError."""
    head, _, rest = text.partition(",")
    kind, _, target = head.partition(":")
    kind = kind.strip().lower()
    if kind not in _OPTIONS:
        raise ConfigError(f"unknown backend {kind!r} (use {BACKEND_SYNTAX})", key="--backend")
    if kind == "pcsc":
        # reader names contain commas and spaces: everything after "pcsc:" is the name
        name = text.partition(":")[2].strip()
        return BackendSpec("pcsc", name or None)
    if kind == "serial" and not target:
        raise ConfigError("serial needs a device: serial:/dev/ttyUSB2", key="--backend")
    if kind == "soft" and target:
        raise ConfigError("soft takes options, not a target: soft,eid=...,state=FILE", key="--backend")
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not value:
            raise ConfigError(f"option {item!r} is not KEY=VALUE", key="--backend")
        if key not in _OPTIONS[kind]:
            raise ConfigError(f"{kind} has no option {key!r} (options: {', '.join(sorted(_OPTIONS[kind]))})",
                              key="--backend")
        options[key] = value
    return BackendSpec(kind, target or None, options)


def _int(spec: BackendSpec, key: str, default: int) -> int:
    text = spec.options.get(key)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a whole number", key="--backend") from None


def _float(spec: BackendSpec, key: str, default: float) -> float:
    text = spec.options.get(key)
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a number", key="--backend") from None


def open_backend(spec: BackendSpec | str, *, pki_dir: Path | None = None) -> RigBackend:
    """Open the backend `spec` names; the software eUICC needs the PKI directory."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    if spec.kind == "soft":
        if pki_dir is None:
            raise ConfigError("the software eUICC needs --pki", key="--pki")
        from hil.euicc import SoftEuicc
        from hil.pki import RspPki

        pki = RspPki.load(pki_dir)
        eid_text = spec.options.get("eid", pki.eid)
        try:
            eid = bytes.fromhex(eid_text)
        except ValueError:
            raise ConfigError(f"eid={eid_text!r} is not 32 hex digits", key="--backend") from None
        state = Path(spec.options["state"]) if "state" in spec.options else None
        try:
            card = SoftEuicc(pki, eid, state)
        except ValueError as exc:
            raise ConfigError(str(exc), key="--backend") from None
        return SoftBackend(card, state_path=state)
    if spec.kind == "serial":
        from gateway.links.serial import ModemConfig, ModemEuicc

        mode = spec.options.get("mode", "auto")
        if mode not in ("auto", "cgla", "csim"):
            raise ConfigError(f"mode={mode!r} is not auto, cgla or csim", key="--backend")
        try:
            config = ModemConfig(segment_size=_int(spec, "segment", 255), max_le=_int(spec, "max_le", 256),
                                 mode=mode, timeout_s=_float(spec, "timeout", 5.0))  # type: ignore[arg-type]
        except GatewayError as exc:
            raise ConfigError(str(exc), key="--backend") from None
        assert spec.target is not None
        modem = ModemEuicc.open(spec.target, config, baudrate=_int(spec, "baud", 115200))
        return SerialBackend(modem, spec.target)
    return open_pcsc(spec.target)


# --- counting and asyncio ----------------------------------------------------------------------


@dataclass
class Counting:
    """A backend that counts APDUs (and their time), for the scenarios' step log."""

    inner: RigBackend
    apdus: int = 0
    seconds: float = 0.0
    clock: Callable[[], float] = time.monotonic

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def description(self) -> str:
        return self.inner.description

    def transmit(self, apdu: bytes) -> bytes:
        started = self.clock()
        try:
            return self.inner.transmit(apdu)
        finally:
            self.apdus += 1
            self.seconds += self.clock() - started

    def refresh(self, kind: str) -> None:
        self.inner.refresh(kind)

    def close(self) -> None:
        self.inner.close()


@dataclass
class AsyncBackend:
    """A blocking backend for the asyncio device agent: each call in a worker thread, in turn."""

    inner: RigBackend
    refreshes: list[str] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def transmit(self, apdu: bytes) -> bytes:
        async with self._lock:
            return await asyncio.to_thread(self.inner.transmit, apdu)

    async def refresh(self, kind: str) -> None:
        self.refreshes.append(kind)
        async with self._lock:
            await asyncio.to_thread(self.inner.refresh, kind)
