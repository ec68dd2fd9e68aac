"""Errors of a cellular module's SIM access, placed in the gateway's one exception tree.

A modem that answers ERROR / +CME ERROR is a *transport* failure (the command never reached
the card, or the modem refused to carry it): `ModemError` and its subclasses are
`TransportError`s. Whether to retry is the class's `retryable`: a busy or missing SIM may come
back, a refused command will be refused again. A status word from the card itself is never a
ModemError: it comes back as data and maps to `gateway.spec.apdu`'s CardError subclasses.
"""

from __future__ import annotations

from gateway.errors import NetworkError, TransportError, TransportTimeout


class ModemError(TransportError):
    """The modem answered a command with a final error result code."""

    def __init__(self, message: str, *, command: str = "", cme: int | None = None) -> None:
        self.command = command
        self.cme = cme
        super().__init__(f"{command}: {message}" if command else message)


class ModemCommandRejected(ModemError):
    """ERROR, or a +CME ERROR that will not change on a retry (bad parameters, not allowed)."""

    retryable = False


class CommandNotSupported(ModemCommandRejected):
    """Plain ERROR or +CME ERROR 4 "operation not supported": the command set lacks it."""


class SimNotReady(ModemError):
    """+CME ERROR 10-18: no SIM, SIM failure, SIM busy, PIN needed. May clear after a reset."""


class ModemTimeout(TransportTimeout):
    """No final result code within the command's timeout (the modem stopped answering)."""


class ModemPortError(NetworkError):
    """The serial port itself failed (device unplugged, I/O error)."""
