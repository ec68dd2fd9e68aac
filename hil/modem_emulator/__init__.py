"""An AT-command modem emulator wrapping the software eUICC (see emulator.py for the dialect).

    python -m hil.modem_emulator --pty PATH --pki DIR --eid EID --state FILE [--quirks echo,urc,...]
"""

from hil.modem_emulator.emulator import EmulatorThread, ModemEmulator, Quirks

__all__ = ["EmulatorThread", "ModemEmulator", "Quirks"]
