"""``python -m hil.modem_emulator``: an AT modem with a software eUICC on a serial device.

Serves until SIGTERM / SIGINT or until the other end of the device goes away; prints one
"ready" line on stdout once it listens.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from hil.modem_emulator.emulator import ModemEmulator, Quirks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.modem_emulator", description=__doc__)
    parser.add_argument("--pty", required=True, help="serial device to serve (one end of a socat pty pair)")
    parser.add_argument("--pki", required=True, type=Path, help="test PKI directory (generated there if empty)")
    parser.add_argument("--eid", required=True, help="EID, 32 hex digits")
    parser.add_argument("--state", type=Path, default=None, help="JSON file of the eUICC's non-volatile state")
    parser.add_argument("--quirks", default="", help="comma-separated: " + ", ".join(
        ("echo", "urc", "max-apdu=N", "no-cgla", "ccho-refused", "auto-get-response", "unquoted",
         "lowercase", "bare-ccho", "hex-session", "cla-as-is", "bare-cgla", "cme-text", "fragment",
         "mute-after=N", "late=N")))
    parser.add_argument("--idle-urc-s", type=float, default=0.3, help="URC period when idle (urc quirk)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    try:
        quirks = Quirks.parse(args.quirks)
    except ValueError as exc:
        parser.error(str(exc))

    from hil.euicc import SoftEuicc

    card = SoftEuicc(args.pki, args.eid, args.state)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"modem emulator ready on {args.pty} (EID {card.eid.hex().upper()}, quirks {args.quirks or 'none'})",
          flush=True)
    ModemEmulator(card, quirks).serve(args.pty, stop, idle_urc_s=args.idle_urc_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
