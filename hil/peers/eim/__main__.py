"""python -m hil.peers.eim --pki DIR --host 127.0.0.1 --port P [--smdpp URL] [--inject URL] [--state FILE]"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hil.peers.common import peer_parser, run_peer
from hil.peers.eim import EimServer
from hil.peers.eim.service import DEFAULT_EIM_ID


def main(argv: Sequence[str] | None = None) -> int:
    parser = peer_parser("python -m hil.peers.eim", "test eIM (ESipa, ASN.1 and JSON bindings) on the test PKI")
    parser.add_argument("--eim-id", default=DEFAULT_EIM_ID)
    parser.add_argument("--smdpp", help="default SM-DP+ for indirect downloads, https://host:port")
    parser.add_argument("--inject", help="the IPA's TransferEimPackage endpoint, https://host:port")
    parser.add_argument("--inject-ca", help="CA file the inject endpoint's certificate chains to")
    parser.add_argument("--state", type=Path, help="JSON file keeping counters, queues and results")
    parser.add_argument("--inject-binding", choices=("asn1", "json"), default="asn1",
                        help="ESipa binding of the TransferEimPackage push")
    args = parser.parse_args(argv)
    return run_peer("hil.peers.eim", args.pki, lambda pki: EimServer(
        pki, host=args.host, port=args.port, eim_id=args.eim_id, smdp_url=args.smdpp,
        inject_url=args.inject, inject_ca_file=args.inject_ca, inject_binding=args.inject_binding,
        state_file=args.state))


if __name__ == "__main__":
    sys.exit(main())
