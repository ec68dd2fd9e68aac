"""APDU shell of the software eUICC: one command APDU per line in hex on stdin, response hex out.

    python -m hil.euicc --pki DIR --eid EID --state FILE [--delay S] [--memory-full]

Blank lines and lines starting with '#' are skipped. A line that is not hex gets 6700 (as a
card answers a malformed command). Output is upper-case hex, one response per line, flushed
at once, so a rig or another process can drive the eUICC line by line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hil.euicc import Faults, PowerLoss, SoftEuicc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.euicc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pki", required=True, type=Path, help="test PKI directory (python -m hil.pki DIR)")
    parser.add_argument("--eid", required=True, help="EID, 32 decimal digits")
    parser.add_argument("--state", required=True, type=Path, help="JSON file with the eUICC's persistent state")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each response")
    parser.add_argument("--memory-full", action="store_true", help="refuse new Profiles and eIMs")
    args = parser.parse_args(argv)
    try:
        euicc = SoftEuicc(args.pki, bytes.fromhex(args.eid), args.state,
                          Faults(delay_s=args.delay, memory_full=args.memory_full))
    except (ValueError, OSError) as exc:
        print(f"hil.euicc: {exc}", file=sys.stderr)
        return 2
    for line in sys.stdin:
        text = "".join(line.split())
        if not text or text.startswith("#"):
            continue
        try:
            command = bytes.fromhex(text)
        except ValueError:
            response = b"\x67\x00"
        else:
            try:
                response = euicc.transmit(command)
            except PowerLoss:
                print("hil.euicc: power lost", file=sys.stderr)
                return 3
        sys.stdout.write(response.hex().upper() + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
