"""What the SM-DP+ and the eIM peers share: TLS from the test PKI, serving, JSON and signatures.

Theory of operation. Each peer is an aiohttp `web.Application` built by its package;
`HttpsPeer` runs one on a real TLS socket (port 0 picks a free port) as an async context
manager for tests, and `run_until_sigterm` runs one as a process that prints a single
`READY https://host:port` line once it accepts connections and stops cleanly on SIGTERM.
Request bodies are read with a size bound; every handler is wrapped so that no input can
end in anything but an HTTP answer (a bug is a logged 500, never a dead server).

`verify_euicc_signed` is the one place where a peer checks a signature of the eUICC: the
signed bytes are always slices of what was received (never re-encoded), and the eUICC
certificate is trusted only after its chain to the CI and its EID under the EUM constraint
verified (`hil.rspcrypto.verify_euicc_chain`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import logging
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.errors import DecodeError
from gateway.spec import tlv
from hil import rspcrypto
from hil.pki import Credential, RspPki, generate_pki

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
ADMIN_PREFIX = "/admin"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def server_ssl_context(credential: Credential) -> ssl.SSLContext:
    """TLS 1.2+ server context with the credential's certificate and key."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(credential.cert_path), str(credential.key_path))
    return ctx


def client_ssl_context(pki: RspPki) -> ssl.SSLContext:
    """What a test client of both peers trusts: the CI (SM-DP+ TLS) and the TLS CA (eIM)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.tls_trust_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@web.middleware
async def never_crash(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn anything unexpected into a logged 500 so one bad request cannot take a peer down."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:  # the last line of defence of a test server; logged with its traceback
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": "internal error"}, status=500)


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    return body


# --- admin JSON helpers ------------------------------------------------------------------------


class AdminError(Exception):
    """A bad admin request: answered 400 (or `status`) with the message."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


async def admin_json(request: web.Request) -> dict[str, Any]:
    body = await read_body(request)
    if not body:
        return {}
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AdminError(f"body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise AdminError("body must be a JSON object")
    return obj


def admin_route(handler: Callable[[web.Request], Awaitable[Any]]) -> Handler:
    """An admin handler returns plain data; AdminError becomes a JSON error answer."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            result = await handler(request)
        except AdminError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result)
    return wrapped


def field_str(obj: dict[str, Any], key: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise AdminError(f"{key!r} must be a string")
    return value


def field_int(obj: dict[str, Any], key: str, default: int | None = None) -> int:
    value = obj.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AdminError(f"{key!r} must be an integer")
    return value


def field_hex(obj: dict[str, Any], key: str) -> bytes:
    value = field_str(obj, key)
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise AdminError(f"{key!r} must be hex") from None


def field_b64(obj: dict[str, Any], key: str) -> bytes:
    value = field_str(obj, key)
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise AdminError(f"{key!r} must be base64") from None


def parse_eid(text: str) -> bytes:
    try:
        return bytes.fromhex(rspcrypto.eid_string(text))
    except ValueError as exc:
        raise AdminError(str(exc), status=404) from None


# --- ICCIDs (EF-ICCID coding: BCD, nibble-swapped, padded with F) -------------------------------


def iccid_to_bytes(digits: str) -> bytes:
    if not 18 <= len(digits) <= 20 or not digits.isdigit():
        raise AdminError(f"an ICCID is 18 to 20 digits, got {digits!r}")
    padded = digits + "F" * (20 - len(digits))
    return bytes(int(padded[i + 1] + padded[i], 16) for i in range(0, 20, 2))


def iccid_to_str(coded: bytes) -> str:
    out = "".join(f"{b & 0x0F:X}{b >> 4:X}" for b in coded)
    return out.rstrip("F")


# --- eUICC signatures -----------------------------------------------------------------------


@dataclass(frozen=True)
class EuiccCertificates:
    """An eUICC certificate whose chain verified, and the EID it certifies."""

    eid: bytes
    certificate: x509.Certificate
    eum_certificate: x509.Certificate


def certificate_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def verify_euicc_certificates(euicc_der: bytes, eum_der: bytes,
                              ci: x509.Certificate) -> EuiccCertificates:
    """CERT.EUICC <- CERT.EUM <- CI with the EID under the EUM constraint; CertificateInvalid if not."""
    euicc = rspcrypto.load_certificate_der(euicc_der)
    eum = rspcrypto.load_certificate_der(eum_der)
    eid = rspcrypto.verify_euicc_chain(euicc, eum, ci)
    return EuiccCertificates(bytes.fromhex(eid), euicc, eum)


def verify_euicc_signed(cert: x509.Certificate, signed: bytes, signature: bytes) -> None:
    """euiccSignature1/2, euiccSignPIR, euiccSignEPR/EPE, notification and cancel signatures:
    r||s by the eUICC key over exactly `signed` (built by the caller from received slices)."""
    rspcrypto.verify_rs_with_certificate(cert, signed, signature)


def raw_child(der: bytes, *path: int) -> bytes:
    """Exact bytes of the TLV reached by child indexes from the outer TLV of `der`."""
    node = tlv.read_single(der)
    for index in path:
        kids = tlv.children(der, node)
        if index >= len(kids):
            raise DecodeError(f"no child {index} under tag {node.tag:X}", offset=node.start)
        node = kids[index]
    return node.raw_of(der)


# --- serving -----------------------------------------------------------------------------------


class HttpsPeer:
    """Run an aiohttp application on TLS: ``async with HttpsPeer(app, ctx) as peer: peer.url``."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext, *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        bound = [a for a in self._runner.addresses if isinstance(a, tuple)]
        self.port = int(bound[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> HttpsPeer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class Served(Protocol):
    @property
    def url(self) -> str: ...

    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc: object) -> None: ...


async def run_until_sigterm(server: Served) -> None:
    """Serve until SIGTERM/SIGINT; print one READY line on stdout once accepting."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"READY {server.url}", flush=True)
        await stop.wait()
    print("stopped", file=sys.stderr, flush=True)


def peer_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The command line every peer process takes: --pki DIR --host H --port P, then its own."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--pki", type=Path, required=True, help="test PKI directory (generated if empty)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    return parser


def run_peer(prog: str, pki_dir: Path, build: Callable[[RspPki], Served]) -> int:
    """A peer process: load (or generate) the test PKI, build the server, serve until SIGTERM.
    Exit status 2 with one line on stderr when the PKI, the options or the socket fail."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        server = build(generate_pki(pki_dir))
    except (ValueError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_until_sigterm(server))
    except OSError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return 0
