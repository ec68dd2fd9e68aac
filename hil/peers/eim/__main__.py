"""python -m hil.peers.eim --pki DIR --host 127.0.0.1 --port P [--smdpp URL] [--inject URL] [--state FILE]"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hil.peers.common import run_until_sigterm
from hil.peers.eim import EimServer
from hil.peers.eim.service import DEFAULT_EIM_ID
from hil.pki import generate_pki


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.peers.eim",
                                     description="test eIM (ESipa, ASN.1 and JSON bindings) on the test PKI")
    parser.add_argument("--pki", type=Path, required=True, help="test PKI directory (generated if empty)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--eim-id", default=DEFAULT_EIM_ID)
    parser.add_argument("--smdpp", help="default SM-DP+ for indirect downloads, https://host:port")
    parser.add_argument("--inject", help="the IPA's TransferEimPackage endpoint, https://host:port")
    parser.add_argument("--inject-ca", help="CA file the inject endpoint's certificate chains to")
    parser.add_argument("--state", type=Path, help="JSON file keeping counters, queues and results")
    parser.add_argument("--inject-binding", choices=("asn1", "json"), default="asn1",
                        help="ESipa binding of the TransferEimPackage push")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        pki = generate_pki(args.pki)
        server = EimServer(pki, host=args.host, port=args.port, eim_id=args.eim_id, smdp_url=args.smdpp,
                           inject_url=args.inject, inject_ca_file=args.inject_ca,
                           inject_binding=args.inject_binding, state_file=args.state)
    except (ValueError, OSError) as exc:
        print(f"hil.peers.eim: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_until_sigterm(server))
    except OSError as exc:
        print(f"hil.peers.eim: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
