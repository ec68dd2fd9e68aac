"""python -m hil.peers.smdpp --pki DIR --host 127.0.0.1 --port P [--state FILE]"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hil.peers.common import run_until_sigterm
from hil.peers.smdpp import SmdppServer
from hil.pki import generate_pki


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.peers.smdpp",
                                     description="test SM-DP+ (ES9+ JSON binding) on the test PKI")
    parser.add_argument("--pki", type=Path, required=True, help="test PKI directory (generated if empty)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--address", help="SM-DP+ address signed into serverSigned1 (default host:port)")
    parser.add_argument("--state", type=Path, help="JSON file keeping orders and notifications")
    parser.add_argument("--session-ttl", type=float, default=300.0, help="RSP session lifetime, seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        pki = generate_pki(args.pki)
        server = SmdppServer(pki, host=args.host, port=args.port, address=args.address,
                             state_file=args.state, session_ttl_s=args.session_ttl)
    except (ValueError, OSError) as exc:
        print(f"hil.peers.smdpp: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_until_sigterm(server))
    except OSError as exc:
        print(f"hil.peers.smdpp: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
