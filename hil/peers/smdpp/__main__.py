"""python -m hil.peers.smdpp --pki DIR --host 127.0.0.1 --port P [--state FILE]"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hil.peers.common import peer_parser, run_peer
from hil.peers.smdpp import SmdppServer


def main(argv: Sequence[str] | None = None) -> int:
    parser = peer_parser("python -m hil.peers.smdpp", "test SM-DP+ (ES9+ JSON binding) on the test PKI")
    parser.add_argument("--address", help="SM-DP+ address signed into serverSigned1 (default host:port)")
    parser.add_argument("--state", type=Path, help="JSON file keeping orders and notifications")
    parser.add_argument("--session-ttl", type=float, default=300.0, help="RSP session lifetime, seconds")
    args = parser.parse_args(argv)
    return run_peer("hil.peers.smdpp", args.pki, lambda pki: SmdppServer(
        pki, host=args.host, port=args.port, address=args.address, state_file=args.state,
        session_ttl_s=args.session_ttl))


if __name__ == "__main__":
    sys.exit(main())
