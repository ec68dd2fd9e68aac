"""The serial device link: an eUICC in a cellular module, reached with AT commands (pyserial).

Modules: `at` (the AT dialect, pure parsing), `port` (pyserial I/O), `modem` (SIM access over
CCHO/CGLA/CCHC or CSIM, as a `transmit(apdu)` backend), `local` (a modem on the gateway's own
port, for which the gateway plays the device agent), `errors`. See docs/serial-modem.md.
"""

from gateway.links.serial.errors import (
    CommandNotSupported,
    ModemCommandRejected,
    ModemError,
    ModemPortError,
    ModemTimeout,
    SimNotReady,
)
from gateway.links.serial.modem import AsyncModemEuicc, DeviceInfo, ModemConfig, ModemEuicc
from gateway.links.serial.port import AtPort

__all__ = ["AsyncModemEuicc", "AtPort", "CommandNotSupported", "DeviceInfo", "ModemCommandRejected",
           "ModemConfig", "ModemError", "ModemEuicc", "ModemPortError", "ModemTimeout", "SimNotReady"]
