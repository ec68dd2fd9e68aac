"""The ESipa push endpoint: the HTTPS server an eIM posts TransferEimPackage to (SGP.32).

Theory of operation. Two routes, one per ESipa binding:
  POST /gsma/rsp2/asn1                        application/x-gsma-rsp-asn1 (DER of
                                              EsipaMessageFromEimToIpa)
  POST /gsma/rsp2/esipa/transferEimPackage    application/json (the JSON binding)
Each hands the raw body to the callback ``on_transfer(body, binding)`` with binding
"asn1" or "json", and answers 200 with the bytes it returns (204 if it returns none). The
callback decodes, **persists the package, and only then returns** the response
(eimPackageReceived): when it returns, the package is on disk, so acknowledging it is safe.

This module is only the HTTP part and must never crash on input: a wrong content type is
415, a body over the limit 413, an empty body or one the callback cannot decode
(RemoteProtocolError) 400, a retryable failure of the callback (StoreError: nothing was
persisted) 503 with Retry-After so the eIM sends it again, anything else 500 (logged).
X-Admin-Protocol, when sent, must be "gsma/rsp/v<x.y.z>"; eIMs send v1.0.0 and v2.x
strings and both are accepted. TLS is the caller's `ssl.SSLContext` (`server_ssl_context`
builds one, optionally requiring eIM client certificates).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from gateway.backhaul.http import ASN1_CONTENT_TYPE, ESIPA_ASN1_PATH, ESIPA_JSON_PATH_PREFIX
from gateway.errors import ConfigError, GatewayError, RemoteProtocolError, is_retryable
from gateway.spec.es9p import ADMIN_PROTOCOL_HEADER, JSON_CONTENT_TYPE

log = logging.getLogger(__name__)

BINDING_ASN1: Final = "asn1"
BINDING_JSON: Final = "json"
TRANSFER_EIM_PACKAGE_JSON_PATH: Final = ESIPA_JSON_PATH_PREFIX + "transferEimPackage"
DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024  # an eIM package is a few KB
DEFAULT_ADMIN_PROTOCOL: Final = "gsma/rsp/v1.2.0"
RETRY_AFTER_S: Final = 30
_ADMIN_PROTOCOL = re.compile(r"gsma/rsp/v\d+\.\d+\.\d+")

TransferCallback = Callable[[bytes, str], Awaitable[bytes]]


def server_ssl_context(cert_file: str, key_file: str, *, client_ca_file: str | None = None) -> ssl.SSLContext:
    """TLS 1.2+ server context; with `client_ca_file`, eIMs must present a certificate from it."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_file, key_file)
        if client_ca_file is not None:
            ctx.load_verify_locations(cafile=client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"unusable inject-server TLS material: {exc}", file=cert_file) from None
    return ctx


class InjectServer:
    """``async with InjectServer(on_transfer, ctx, port=0) as srv: srv.port``"""

    def __init__(self, on_transfer: TransferCallback, ssl_context: ssl.SSLContext, *,
                 host: str = "127.0.0.1", port: int = 443,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 admin_protocol: str = DEFAULT_ADMIN_PROTOCOL,
                 shutdown_timeout_s: float = 5.0) -> None:
        self._on_transfer = on_transfer
        self._ssl_context = ssl_context
        self._host = host
        self._port = port
        self._max_body = max_body_bytes
        self._admin_protocol = admin_protocol
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body)
        app.router.add_post(ESIPA_ASN1_PATH, self._asn1)
        app.router.add_post(TRANSFER_EIM_PACKAGE_JSON_PATH, self._json)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.make_app(), handle_signals=False, access_log=None,
                               shutdown_timeout=self._shutdown_timeout_s)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen on {self._host}:{self._port}: {exc}") from None
        self._runner = runner
        sockets = [a for a in runner.addresses if isinstance(a, tuple)]
        self.port = int(sockets[0][1]) if sockets else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> InjectServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _asn1(self, request: web.Request) -> web.StreamResponse:
        return await self._transfer(request, BINDING_ASN1, ASN1_CONTENT_TYPE, ASN1_CONTENT_TYPE)

    async def _json(self, request: web.Request) -> web.StreamResponse:
        return await self._transfer(request, BINDING_JSON, "application/json", JSON_CONTENT_TYPE)

    async def _transfer(self, request: web.Request, binding: str, accepted: str,
                        reply_type: str) -> web.StreamResponse:
        headers = {ADMIN_PROTOCOL_HEADER: request.headers.get(ADMIN_PROTOCOL_HEADER, self._admin_protocol)}
        if request.content_type.lower() != accepted:
            return _error(415, f"content type must be {accepted}", headers)
        admin = request.headers.get(ADMIN_PROTOCOL_HEADER)
        if admin is not None and not _ADMIN_PROTOCOL.fullmatch(admin.strip()):
            headers[ADMIN_PROTOCOL_HEADER] = self._admin_protocol
            return _error(400, f"bad {ADMIN_PROTOCOL_HEADER}", headers)
        if request.content_length is not None and request.content_length > self._max_body:
            return _error(413, f"body over {self._max_body} bytes", headers)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body over {self._max_body} bytes", headers)
        if not body:
            return _error(400, "empty body", headers)
        try:
            answer = await self._on_transfer(body, binding)
        except RemoteProtocolError as exc:
            log.info("refused %s TransferEimPackage from %s: %s", binding, request.remote, exc)
            return _error(400, str(exc), headers)
        except GatewayError as exc:
            if is_retryable(exc):
                log.warning("could not accept %s package from %s now: %s", binding, request.remote, exc)
                headers["Retry-After"] = str(RETRY_AFTER_S)
                return _error(503, "temporarily unable to accept the package", headers)
            log.error("package from %s refused: %s", request.remote, exc)
            return _error(500, "package not accepted", headers)
        except Exception:
            log.exception("inject callback failed on a %s package from %s", binding, request.remote)
            return _error(500, "internal error", headers)
        if not answer:
            return web.Response(status=204, headers=headers)
        headers["Content-Type"] = reply_type
        return web.Response(status=200, body=answer, headers=headers)


def _error(status: int, text: str, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, text=text, headers=headers)
