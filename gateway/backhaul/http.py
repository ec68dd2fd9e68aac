"""The one northbound HTTPS client (ES9+, ES11, ESipa ASN.1 and JSON bindings), on aiohttp.

Theory of operation. `BackhaulHttp` posts one body and returns one `HttpReply`; it knows
nothing of the messages (the codecs in gateway.spec do). It owns a single aiohttp session
whose connector pools connections per server (`HttpLimits.per_server_connections`) under a
global cap, so one slow SM-DP+ cannot starve the eIM.

TLS is always verified. Each `Server` carries its `TlsTrust`: the system store, a CA file,
trust anchors given as DER certificates, or one pinned public key (how an eIM's
`trustedPublicKeyDataTls` learnt from the eUICC pins that eIM: a certificate becomes its only
anchor, a public key must be the key its certificate carries). Contexts are built
once per trust and cached; aiohttp keys pooled connections by SSL context, so servers with
different trust never share a connection. TLS 1.2 is the floor (SGP.22 §2.6.6).

Library failures are translated here, at the edge, into gateway.errors:
  certificate/hostname verification failed -> TlsVerificationError (never retried)
  timeout (connect or total)               -> TransportTimeout (retryable)
  refused/reset/DNS/other TLS/disconnect   -> NetworkError (retryable)
  HTTP 5xx, 408, 429                       -> HttpStatusError, retryable (the server is up
                                              but could not serve now; Retry-After kept)
  other non-2xx (4xx, redirects)           -> HttpStatusError, definitive (the request is
                                              refused; SGP.22 uses no redirects)
  response larger than the limit           -> RemoteProtocolError
The optional per-server `CircuitBreaker` (gateway.core.retry) fails calls fast with
CircuitOpen while a server is known down, so a thousand devices do not each wait out a
connect timeout; it is fed with the outcome of every admitted call.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.core.retry import CircuitBreaker
from gateway.errors import (
    ConfigError,
    DecodeError,
    FunctionFailed,
    GatewayError,
    NetworkError,
    RemoteProtocolError,
    TlsVerificationError,
    TransportTimeout,
)
from gateway.spec.es9p import ADMIN_PROTOCOL, ADMIN_PROTOCOL_HEADER, JSON_CONTENT_TYPE

ASN1_CONTENT_TYPE: Final = "application/x-gsma-rsp-asn1"
ESIPA_ASN1_PATH: Final = "/gsma/rsp2/asn1"          # SGP.32 ESipa ASN.1 binding
ESIPA_JSON_PATH_PREFIX: Final = "/gsma/rsp2/esipa/"  # SGP.32 ESipa JSON binding
USER_AGENT: Final = "gsma-rsp-lpad ipae-gateway"
RETRYABLE_HTTP_STATUSES: Final = frozenset({408, 429})


class HttpStatusError(FunctionFailed):
    """The server answered with a non-2xx HTTP status: the function was not executed.

    Retryable for 5xx, 408 and 429; definitive otherwise. `retry_after_s` is the server's
    Retry-After in seconds when it sent one.
    """

    def __init__(self, status: int, url: str, *, retry_after_s: float | None = None) -> None:
        self.status = status
        self.url = url
        self.retry_after_s = retry_after_s
        super().__init__(f"HTTP {status} from {url}",
                         retryable=status >= 500 or status in RETRYABLE_HTTP_STATUSES)


@dataclass(frozen=True, slots=True)
class TlsTrust:
    """Which certificate authorities a server's certificate must chain to.

    Nothing given: the system trust store. `ca_file` (PEM) and/or `ca_der` (DER
    certificates, e.g. the eIM's trustedPublicKeyDataTls): only those anchors. With
    `client_cert_file` (and its key), the client authenticates itself too (mutual TLS).
    """

    ca_file: str | None = None
    ca_der: tuple[bytes, ...] = ()
    client_cert_file: str | None = None  # PEM: mutual TLS, the certificate this client presents
    client_key_file: str | None = None
    # DER SubjectPublicKeyInfo: the server must hold exactly this key (the eIM's trustedEimPkTls);
    # it replaces the anchors: a pinned key has no chain to verify
    pinned_spki: bytes | None = None

    def ssl_context(self) -> ssl.SSLContext:
        try:
            if self.ca_file is None and not self.ca_der:
                ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            else:  # pinned: no system anchors at all
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                if self.ca_file is not None:
                    ctx.load_verify_locations(cafile=self.ca_file)
                for der in self.ca_der:
                    ctx.load_verify_locations(cadata=der)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"unusable TLS trust anchors: {exc}", file=self.ca_file) from None
        if self.client_cert_file is not None:
            try:
                ctx.load_cert_chain(self.client_cert_file, self.client_key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"unusable TLS client certificate or key: {exc}", file=self.client_cert_file) from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


class SpkiPin(aiohttp.Fingerprint):
    """aiohttp's certificate pinning, by the server's public key instead of its whole certificate."""

    def __init__(self, spki_der: bytes) -> None:
        super().__init__(hashlib.sha256(spki_der).digest())

    def check(self, transport: asyncio.Transport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None:
            raise TlsVerificationError("the server presented no certificate to check against the pinned key")
        spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        got = hashlib.sha256(spki).digest()
        if got != self.fingerprint:
            host, port, *_ = transport.get_extra_info("peername")
            raise aiohttp.ServerFingerprintMismatch(self.fingerprint, got, host, port)


@dataclass(frozen=True, slots=True)
class Server:
    """One northbound peer: `base_url` is https://host[:port] (no path)."""

    base_url: str
    trust: TlsTrust = field(default_factory=TlsTrust)
    admin_protocol: str = ADMIN_PROTOCOL

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"server URL must be https://host[:port], got {self.base_url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"server URL must not carry a path, got {self.base_url!r}")
        object.__setattr__(self, "base_url", f"https://{parts.netloc}")

    @classmethod
    def from_fqdn(cls, fqdn: str, trust: TlsTrust | None = None,
                  admin_protocol: str = ADMIN_PROTOCOL) -> Server:
        """An SM-DP+/SM-DS/eIM address as carried in RSP messages (FQDN, optional :port)."""
        return cls(f"https://{fqdn}", trust or TlsTrust(), admin_protocol)

    def url(self, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("path must start with /")
        return self.base_url + path


@dataclass(frozen=True, slots=True)
class HttpLimits:
    total_connections: int = 100
    per_server_connections: int = 8
    request_timeout_s: float = 60.0
    connect_timeout_s: float = 15.0
    max_response_bytes: int = 4 * 1024 * 1024  # a BPP is tens of KB; this is a safety bound


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    content_type: str
    body: bytes
    admin_protocol: str | None


class BackhaulHttp:
    """Use as ``async with BackhaulHttp() as http:``; every call is one POST."""

    def __init__(self, limits: HttpLimits | None = None, *, user_agent: str = USER_AGENT,
                 breaker_factory: Callable[[str], CircuitBreaker] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or HttpLimits()
        self._user_agent = user_agent
        self._breaker_factory = breaker_factory
        self._breakers: dict[str, CircuitBreaker] = {}
        self._clock = clock
        self._contexts: dict[TlsTrust, ssl.SSLContext] = {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BackhaulHttp:
        self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.limits.total_connections,
                                             limit_per_host=self.limits.per_server_connections)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.limits.request_timeout_s,
                                              sock_connect=self.limits.connect_timeout_s),
                headers={"User-Agent": self._user_agent},
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def breaker(self, server: Server) -> CircuitBreaker | None:
        if self._breaker_factory is None:
            return None
        b = self._breakers.get(server.base_url)
        if b is None:
            b = self._breakers[server.base_url] = self._breaker_factory(server.base_url)
        return b

    def _ssl_context(self, trust: TlsTrust) -> ssl.SSLContext | SpkiPin:
        if trust.pinned_spki is not None:
            return SpkiPin(trust.pinned_spki)
        ctx = self._contexts.get(trust)
        if ctx is None:
            ctx = self._contexts[trust] = trust.ssl_context()
        return ctx

    async def post(self, server: Server, path: str, body: bytes, content_type: str, *,
                   accept: str | None = None, timeout_s: float | None = None) -> HttpReply:
        """POST `body`; return the 2xx reply or raise a gateway.errors exception."""
        breaker = self.breaker(server)
        if breaker is not None:
            breaker.before_call(self._clock())
        outcome: BaseException | None = None
        settled = False
        try:
            reply = await self._post(server, path, body, content_type, accept, timeout_s)
            settled = True
            return reply
        except GatewayError as exc:
            outcome = exc
            settled = True
            raise
        finally:
            if breaker is not None:
                if settled:
                    breaker.after_call(self._clock(), outcome)
                else:
                    breaker.release()

    async def _post(self, server: Server, path: str, body: bytes, content_type: str,
                    accept: str | None, timeout_s: float | None) -> HttpReply:
        session = self._open()
        url = server.url(path)
        headers = {"Content-Type": content_type, ADMIN_PROTOCOL_HEADER: server.admin_protocol}
        if accept:
            headers["Accept"] = accept
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.limits.request_timeout_s,
                                        sock_connect=self.limits.connect_timeout_s)
        try:
            async with session.post(url, data=body, headers=headers, ssl=self._ssl_context(server.trust),
                                    allow_redirects=False, timeout=timeout) as resp:
                if not 200 <= resp.status < 300:
                    raise HttpStatusError(resp.status, url,
                                          retry_after_s=_retry_after(resp.headers.get("Retry-After")))
                data = await _read_bounded(resp, self.limits.max_response_bytes, url)
                return HttpReply(resp.status, resp.headers.get("Content-Type", ""), data,
                                 resp.headers.get(ADMIN_PROTOCOL_HEADER))
        except GatewayError:
            raise
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TransportTimeout(f"no answer from {url} in time") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TlsVerificationError(f"certificate of {server.base_url} did not verify: "
                                       f"{exc.certificate_error}") from exc
        except aiohttp.ServerFingerprintMismatch as exc:
            raise TlsVerificationError(f"certificate of {server.base_url} is not the pinned one") from exc
        except aiohttp.ClientSSLError as exc:
            raise NetworkError(f"TLS handshake with {server.base_url} failed: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise NetworkError(f"{type(exc).__name__} talking to {url}: {exc}") from exc

    async def post_json(self, server: Server, path: str, body: bytes, *,
                        timeout_s: float | None = None) -> HttpReply:
        """The JSON style of ES9+/ES11 (SGP.22 §6.5.1) and of the ESipa JSON binding."""
        return await self.post(server, path, body, JSON_CONTENT_TYPE, accept="application/json",
                               timeout_s=timeout_s)

    async def post_esipa_asn1(self, server: Server, body: bytes, *,
                              timeout_s: float | None = None) -> HttpReply:
        """ESipa ASN.1 binding: body = DER of EsipaMessageFromIpaToEim."""
        return await self.post(server, ESIPA_ASN1_PATH, body, ASN1_CONTENT_TYPE,
                               accept=ASN1_CONTENT_TYPE, timeout_s=timeout_s)

    async def post_esipa_json(self, server: Server, function: str, body: bytes, *,
                              timeout_s: float | None = None) -> HttpReply:
        """ESipa JSON binding: POST /gsma/rsp2/esipa/<functionName>."""
        return await self.post_json(server, ESIPA_JSON_PATH_PREFIX + function, body, timeout_s=timeout_s)


def is_json_reply(reply: HttpReply) -> bool:
    return reply.content_type.split(";", 1)[0].strip().lower() == "application/json"


def require_content_type(reply: HttpReply, expected: str, what: str) -> None:
    if reply.content_type.split(";", 1)[0].strip().lower() != expected:
        raise DecodeError(f"expected {expected}, got content type "
                          f"{reply.content_type or '(none)'!r}", type_name=what)


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise RemoteProtocolError(f"response from {url} declares {declared} bytes, limit {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise RemoteProtocolError(f"response from {url} exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in delta-seconds (RFC 9110 §10.2.3); an HTTP-date is ignored."""
    if value is None:
        return None
    try:
        seconds = int(value.strip())
    except ValueError:
        return None
    return float(seconds) if seconds >= 0 else None
