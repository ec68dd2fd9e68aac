"""`python -m hil.agent`: run the reference device agent against a gateway.

    python -m hil.agent --transport coap --host 192.0.2.1 --port 5684 \
        --eid 89049032123451234512345678901235 --identity dev1 --psk-hex 0011...
    python -m hil.agent --transport mqtt --host broker --port 8883 --ca-file ca.pem \
        --eid 8904... --identity dev1 --password secret

The eUICC backend: `--soft-euicc PKI_DIR [--euicc-state FILE]` runs the project's software
eUICC (hil.euicc.SoftEuicc) for this EID; `--backend module:factory` names any callable that
returns an object with `transmit(apdu) -> bytes` (a modem, a PC/SC reader); without either, the
software eUICC's APDU layer with an echoing ES10 dispatcher, which is enough to exercise a link.
A backend with `close()` (sync or async) is closed when the agent exits.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from hil.agent.agent import Agent, AgentTransport


def _echo_backend() -> Any:
    from hil.euicc.card import ApduLayer
    return ApduLayer(lambda request: request)


def _load_backend(spec: str | None, args: argparse.Namespace | None = None) -> Any:
    if args is not None and args.soft_euicc:
        from pathlib import Path

        from hil.euicc import SoftEuicc
        return SoftEuicc(Path(args.soft_euicc), bytes.fromhex(args.eid),
                         state_path=Path(args.euicc_state) if args.euicc_state else None)
    if spec is None:
        return _echo_backend()
    module, _, name = spec.partition(":")
    factory = getattr(importlib.import_module(module), name or "make_backend")
    return factory()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hil.agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transport", choices=("coap", "mqtt"), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--eid", required=True, help="32 hex digits")
    p.add_argument("--identity", help="DTLS PSK identity / MQTT username")
    p.add_argument("--psk-hex", help="DTLS pre-shared key (CoAP)")
    p.add_argument("--password", help="MQTT password")
    p.add_argument("--ca-file", help="CA for TLS to the MQTT broker")
    p.add_argument("--plain", action="store_true", help="CoAP without DTLS (lab gateways only)")
    p.add_argument("--buffer-size", type=int, default=4096)
    p.add_argument("--backend", help="module:factory returning the eUICC backend")
    p.add_argument("--soft-euicc", metavar="PKI_DIR", help="use the software eUICC with this test PKI")
    p.add_argument("--euicc-state", metavar="FILE", help="the software eUICC's non-volatile state file")
    p.add_argument("--sessions", type=int, default=1, help="wake-ups to run (0 = forever)")
    p.add_argument("--max-sleep", type=float, default=5.0, help="cap on the Idle retry_after between wake-ups")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def make_transport(args: argparse.Namespace, eid: bytes) -> AgentTransport:
    if args.transport == "coap":
        from hil.agent.coap_transport import CoapAgentTransport
        if args.plain:
            return CoapAgentTransport(args.host, args.port, eid)
        if not (args.identity and args.psk_hex):
            raise SystemExit("--identity and --psk-hex are needed for CoAP over DTLS")
        return CoapAgentTransport(args.host, args.port, eid, identity=args.identity, psk=bytes.fromhex(args.psk_hex))
    from gateway.links.mqtt import MqttConfig
    from hil.agent.mqtt_transport import MqttAgentTransport
    if not (args.identity and args.password):
        raise SystemExit("--identity and --password are needed for MQTT")
    return MqttAgentTransport(MqttConfig(args.host, args.port, args.identity, args.password,
                                         client_id=args.identity, ca_file=args.ca_file), eid)


async def run(args: argparse.Namespace) -> int:
    eid = bytes.fromhex(args.eid)
    if len(eid) != 16:
        raise SystemExit("--eid must be 32 hex digits")
    transport = make_transport(args, eid)
    try:
        backend = _load_backend(args.backend, args)
    except BaseException:
        await transport.close()
        raise
    agent = Agent(Agent.make_status(eid, buffer_size=args.buffer_size), backend, transport)
    failed = False
    try:
        n = 0
        while args.sessions == 0 or n < args.sessions:
            n += 1
            report = await agent.run_session()
            print(json.dumps({"session": n, "exchanges": report.exchanges, "batches": report.batches,
                              "apdus": report.apdus, "uplink_bytes": report.uplink_bytes,
                              "downlink_bytes": report.downlink_bytes, "idle_after_s": report.idle_after_s,
                              "error": None if report.error is None else
                              {"code": report.error.code, "text": report.error.text},
                              "transport_error": report.transport_error}), flush=True)
            failed = report.error is not None or report.transport_error is not None
            if args.sessions == 0 or n < args.sessions:
                await asyncio.sleep(min(args.max_sleep, report.idle_after_s or args.max_sleep))
    finally:
        try:
            await transport.close()
        finally:
            await close_backend(backend)
    return 1 if failed else 0


async def close_backend(backend: object) -> None:
    """Release the eUICC backend (a modem's serial port, a reader) if it has `close()`, sync or async."""
    close = getattr(backend, "close", None)
    if callable(close):
        outcome = close()
        if inspect.isawaitable(outcome):
            await outcome


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
