"""``python -m hil.rig``: run a rig scenario on a software eUICC, an AT modem or a PC/SC reader.

    python -m hil.rig probe --backend serial:/dev/ttyUSB2,segment=128 --pki pki
    python -m hil.rig lifecycle --backend soft --pki pki --json
    python -m hil.rig enable --backend pcsc:0 --pki pki --iccid 8949... \\
        --eim https://127.0.0.1:8444 --smdp https://127.0.0.1:8443

Scenarios: probe (read-only, safe on any card); download, enable, disable, delete, lifecycle
(download + enable + disable + delete) change the card and run only on a test card (its
certificates chain to the test CI in --pki) unless --i-know-this-changes-the-card.
Exit status: 0 succeeded, 1 failed, 2 bad arguments or backend not available, 3 refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from gateway.errors import GatewayError
from hil.rig.backends import BACKEND_SYNTAX, open_backend, parse_spec
from hil.rig.scenarios import SCENARIOS, RigOptions, run_scenario

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hil.rig", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--backend", required=True, help=BACKEND_SYNTAX)
    p.add_argument("--pki", required=True, type=Path, help="test PKI directory (python -m hil.pki DIR)")
    p.add_argument("--eim", help="eIM peer URL (default: start the peers in this process)")
    p.add_argument("--smdp", help="SM-DP+ peer URL (with --eim)")
    p.add_argument("--iccid", help="profile for enable / disable / delete")
    p.add_argument("--agent", choices=("device", "gateway"), default="device",
                   help="device side: the reference device agent (default), or the gateway's own serial "
                        "device driving the modem (serial backends)")
    p.add_argument("--link", choices=("memory", "coap"), default="memory",
                   help="memory: the gateway's engine and runtime with an in-memory device link (default); "
                        "coap: the whole daemon (ipae-gateway run) with the agent over CoAP/DTLS")
    p.add_argument("--download-mode", choices=("direct", "indirect"),
                   help="profile download direct to the SM-DP+ (ES9+) or through the eIM (ESipa), set when the "
                        "card gets the eIM's configuration (default: as the eIM offers it)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per operation (default 60)")
    p.add_argument("--json", action="store_true", help="end with one JSON summary line on stdout")
    p.add_argument("--i-know-this-changes-the-card", dest="allow_any_card", action="store_true",
                   help="run a state-changing scenario on a card that is not proven a test card")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    out = sys.stderr if args.json else sys.stdout
    if not (args.pki / "ci.cert.pem").exists():
        print(f"hil.rig: no test PKI in {args.pki} (create one with python -m hil.pki {args.pki})", file=sys.stderr)
        return EXIT_USAGE
    from hil.pki import RspPki

    try:
        spec = parse_spec(args.backend)
        backend = open_backend(spec, pki_dir=args.pki)
    except GatewayError as exc:
        print(f"hil.rig: backend {args.backend!r}: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"scenario": args.scenario, "ok": False, "error": str(exc)}))
        return EXIT_USAGE
    options = RigOptions(args.scenario, RspPki.load(args.pki), eim_url=args.eim, smdp_url=args.smdp,
                         iccid=args.iccid, allow_any_card=args.allow_any_card, timeout_s=args.timeout, out=out,
                         agent=args.agent, link=args.link, download_mode=args.download_mode)
    try:
        result = asyncio.run(run_scenario(backend, options))
    finally:
        backend.close()
    if args.json:
        print(json.dumps(result.to_json(), sort_keys=True))
    if result.refused:
        return EXIT_REFUSED
    return EXIT_OK if result.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
