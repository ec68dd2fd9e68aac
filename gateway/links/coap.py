"""Device link over CoAP (RFC 7252) with DTLS PSK (aiocoap + tinydtls), block-wise (RFC 7959).

Theory of operation. One resource per device, ``/ipae/v1/<eid-hex>``, takes POST: the request
payload is one encoded uplink, the response payload the one downlink (content format 63,
application/cbor-seq). aiocoap reassembles Block1 uploads and serves large downlinks as Block2
blocks of 1 KB from its per-resource cache; the first block carries Size2, so an agent knows how
many blocks follow and may fetch them in parallel (random access, RFC 7959 §2.4).

Security. The DTLS server (aiocoap's experimental ``tinydtls_server`` transport) looks up the
client's PSK identity through `RegistryCredentials`, a CredentialsMap bound to the
`DeviceRegistry`: the handshake succeeds only with the PSK registered for that identity, and
aiocoap then reports the identity as the request's authenticated claim. The resource maps the
claim to the one EID bound to it and answers 4.03 (ErrorMsg FORBIDDEN) when the URI names another
EID or the payload claims another EID. Plain CoAP (no DTLS) exists only for labs and only when
`allow_plain=True`: the URI's EID is then trusted as is.

Oversized uploads are cut off while they stream in (4.13 before the whole body is spooled).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiocoap
import aiocoap.credentials
import aiocoap.error
import aiocoap.resource
from aiocoap.numbers import codes
from aiocoap.optiontypes import BlockOption

from gateway.errors import AccessDenied, ConfigError, UnknownDevice
from gateway.links.sockets import set_receive_buffer
from gateway.links.base import DeviceRegistry, UplinkHandler, answer
from gateway.links.protocol import ErrorCode, ErrorMsg, Downlink, encode_downlink

log = logging.getLogger(__name__)

RESOURCE_PREFIX = ("ipae", "v1")
# tinydtls as bundled by DTLSSocket 0.2.3 (tests/links/test_dtls_limits.py, docs/dtls-limits.md):
# a longer PSK overflows a 16-byte buffer (no handshake; a 59..64-byte key crashes the server),
# a longer identity never completes a handshake
MAX_PSK = 16
MAX_PSK_IDENTITY = 32
CONTENT_FORMAT_CBOR_SEQ = 63
BLOCK_SIZE = 1024
DEFAULT_MAX_UPLINK = 64 * 1024

_CODE_FOR_ERROR = {
    ErrorCode.UNSUPPORTED_VERSION: codes.BAD_REQUEST,
    ErrorCode.MALFORMED: codes.BAD_REQUEST,
    ErrorCode.TOO_LARGE: codes.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.FORBIDDEN: codes.FORBIDDEN,
    ErrorCode.UNKNOWN_DEVICE: codes.FORBIDDEN,
    ErrorCode.UNEXPECTED: codes.CONFLICT,
    ErrorCode.INTERNAL: codes.INTERNAL_SERVER_ERROR,
}


def check_dtls_credentials(registry: DeviceRegistry) -> None:
    """ConfigError naming every device whose PSK or identity DTLS cannot use."""
    bad = [f"{d.identity!r} (PSK {len(d.secret)} B, identity {len(d.identity.encode())} B)" for d in registry
           if len(d.secret) > MAX_PSK or len(d.identity.encode()) > MAX_PSK_IDENTITY]
    if bad:
        raise ConfigError(f"DTLS takes PSKs of at most {MAX_PSK} bytes and identities of at most "
                          f"{MAX_PSK_IDENTITY} bytes: {', '.join(bad[:10])}" + (" ..." if len(bad) > 10 else ""))


def resource_path(eid: bytes) -> tuple[str, ...]:
    return (*RESOURCE_PREFIX, eid.hex())


class RegistryCredentials(aiocoap.credentials.CredentialsMap):  # type: ignore[misc]
    """aiocoap server credentials answered from the DeviceRegistry (dict lookup per handshake).

    aiocoap's own map scans every entry for each handshake; this keeps the lookup O(1) for fleets.
    The returned claim is the PSK identity, which the resource maps back to its EID.
    """

    def __init__(self, registry: DeviceRegistry) -> None:
        super().__init__()
        self._registry = registry

    def find_dtls_psk(self, identity: bytes) -> tuple[bytes, str]:
        try:
            device = self._registry.by_identity(identity.decode("utf-8"))
        except (UnicodeDecodeError, UnknownDevice):
            raise KeyError(identity) from None
        if len(device.secret) > MAX_PSK:  # never hand tinydtls a key it cannot hold
            log.error("PSK of %r is %d bytes; tinydtls takes at most %d", device.identity,
                      len(device.secret), MAX_PSK)
            raise KeyError(identity)
        return device.secret, device.identity

    def __bool__(self) -> bool:
        # aiocoap replaces a falsy (empty) map with a fresh one; this map's entries live elsewhere
        return True


class _ProtocolReply(aiocoap.error.RenderableError):  # type: ignore[misc]
    """An ErrorMsg rendered with the CoAP code that matches it."""

    def __init__(self, downlink: ErrorMsg) -> None:
        super().__init__(downlink.text)
        self.downlink = downlink

    def to_message(self) -> aiocoap.Message:
        return _message_for(self.downlink, encode_downlink(self.downlink))


def _message_for(downlink: Downlink, payload: bytes) -> aiocoap.Message:
    code = codes.CHANGED
    if isinstance(downlink, ErrorMsg):
        code = _CODE_FOR_ERROR.get(ErrorCode(downlink.code) if downlink.code in ErrorCode._value2member_map_
                                   else ErrorCode.INTERNAL, codes.INTERNAL_SERVER_ERROR)
    msg = aiocoap.Message(code=code, payload=payload, content_format=CONTENT_FORMAT_CBOR_SEQ)
    if len(payload) > BLOCK_SIZE:
        msg.opt.size2 = len(payload)
    return msg


class DeviceLinkResource(aiocoap.resource.Resource):  # type: ignore[misc]
    """The server site: every request goes here; the path names the device.

    Block1 reassembly and block 0 of a large downlink are aiocoap's. Blocks 1.. are served
    here, from `_downlinks`, keyed by (EID, exchange tag): the agent may request them before
    the exchange's downlink exists (speculatively, with its uplink), and such a request waits
    for it (at most `block_wait_s`). The exchange tag is the URI query ``x=<n>`` the agent
    numbers its exchanges with; without one, blocks refer to the device's latest downlink.
    """

    def __init__(self, handler: UplinkHandler, registry: DeviceRegistry, *, max_uplink: int,
                 plain: bool, block_wait_s: float = 60.0) -> None:
        super().__init__()
        self._handler = handler
        self._registry = registry
        self._max_uplink = max_uplink
        self._plain = plain
        self._block_wait_s = block_wait_s
        self._downlinks: dict[tuple[bytes, str | None], asyncio.Future[bytes]] = {}
        self._tags: dict[bytes, list[str | None]] = {}  # per EID, oldest first
        self.exchanges = 0
        self.refused = 0
        self.blocks_served = 0

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        block1 = request.opt.block1
        size1 = request.opt.size1
        if (block1 is not None and block1.start + len(request.payload) > self._max_uplink) or (
                size1 is not None and size1 > self._max_uplink) or len(request.payload) > self._max_uplink:
            self.refused += 1
            raise _ProtocolReply(ErrorMsg(int(ErrorCode.TOO_LARGE),
                                          f"uplink exceeds {self._max_uplink} bytes"))
        block2 = request.opt.block2
        return block2 is None or block2.block_number == 0

    def _bound_eid(self, request: aiocoap.Message) -> bytes:
        path = tuple(request.opt.uri_path)
        if len(path) != 3 or path[:2] != RESOURCE_PREFIX:
            raise UnknownDevice(f"no resource /{'/'.join(path)}")
        try:
            path_eid = bytes.fromhex(path[2])
        except ValueError:
            raise UnknownDevice(f"no resource /{'/'.join(path)}") from None
        claims = list(getattr(request.remote, "authenticated_claims", []) or [])
        identity = claims[0] if claims else None
        if isinstance(identity, str):
            bound = self._registry.by_identity(identity).eid
            if bound != path_eid:
                raise AccessDenied(f"identity {identity!r} is bound to {bound.hex()}, not {path_eid.hex()}")
            return bound
        if self._plain:
            return self._registry.by_eid(path_eid).eid
        raise AccessDenied("request without an authenticated DTLS identity")

    @staticmethod
    def _tag(request: aiocoap.Message) -> str | None:
        for q in request.opt.uri_query:
            if q.startswith("x=") and 2 < len(q) <= 22:
                return str(q[2:])
        return None

    def _slot(self, eid: bytes, tag: str | None) -> asyncio.Future[bytes]:
        key = (eid, tag)
        fut = self._downlinks.get(key)
        if fut is None:
            tags = self._tags.setdefault(eid, [])
            while len(tags) >= 4:  # a device has at most a few exchanges in flight
                old = self._downlinks.pop((eid, tags.pop(0)), None)
                if old is not None:
                    old.cancel()
            tags.append(tag)
            loop = asyncio.get_running_loop()
            fut = self._downlinks[key] = loop.create_future()
            # like aiocoap's Block2 cache: a downlink stays fetchable for MAX_TRANSMIT_WAIT
            loop.call_later(93.0, self._expire, key, fut)
        return fut

    def _expire(self, key: tuple[bytes, str | None], fut: asyncio.Future[bytes]) -> None:
        if self._downlinks.get(key) is fut:
            del self._downlinks[key]
            tags = self._tags.get(key[0], [])
            if key[1] in tags:
                tags.remove(key[1])
            if not tags:
                self._tags.pop(key[0], None)
        fut.cancel()

    def _publish(self, eid: bytes, tag: str | None, payload: bytes) -> None:
        for key in {(eid, tag), (eid, None)}:
            fut = self._slot(eid, key[1])
            if fut.done():
                self._expire(key, fut)
                fut = self._slot(eid, key[1])
            fut.set_result(payload)

    async def _block(self, request: aiocoap.Message, eid: bytes) -> aiocoap.Message:
        block2 = request.opt.block2
        fut = self._slot(eid, self._tag(request))
        if not fut.done():  # a request sent with the uplink: wait for the downlink to exist
            await asyncio.wait((fut,), timeout=self._block_wait_s)
        if not fut.done() or fut.cancelled():
            return aiocoap.Message(code=codes.REQUEST_ENTITY_INCOMPLETE)
        payload = fut.result()
        szx = min(block2.size_exponent, 6)
        size = 1 << (szx + 4)
        start = block2.block_number * size
        if start >= len(payload):
            return aiocoap.Message(code=codes.BAD_OPTION)
        chunk = payload[start:start + size]
        self.blocks_served += 1
        return aiocoap.Message(code=codes.CHANGED, payload=chunk, content_format=CONTENT_FORMAT_CBOR_SEQ,
                               block2=BlockOption.BlockwiseTuple(block2.block_number, start + size < len(payload), szx),
                               size2=len(payload))

    def _device(self, request: aiocoap.Message) -> bytes:
        """The EID the request may act for, or the ErrorMsg reply that refuses it."""
        try:
            return self._bound_eid(request)
        except AccessDenied as exc:
            self.refused += 1
            log.warning("CoAP request refused: %s", exc)
            raise _ProtocolReply(ErrorMsg(int(ErrorCode.FORBIDDEN), str(exc))) from None
        except UnknownDevice as exc:
            self.refused += 1
            raise _ProtocolReply(ErrorMsg(int(ErrorCode.UNKNOWN_DEVICE), str(exc))) from None

    async def render_to_pipe(self, pipe: Any) -> None:
        # Blocks 1.. of a downlink are most of the traffic (a 30 KB batch is 31 of them per
        # device, all at once): they are answered here, past aiocoap's generic Block1/Block2
        # machinery, which they do not need. Everything else takes aiocoap's path to render_post.
        request = pipe.request
        block2 = request.opt.block2
        if request.code != codes.POST or block2 is None or block2.block_number == 0:
            await super().render_to_pipe(pipe)
            return
        try:
            response = await self._block(request, self._device(request))
        except _ProtocolReply as exc:
            response = exc.to_message()
        pipe.add_response(response, is_last=True)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        eid = self._device(request)
        downlink, payload = await answer(self._handler, eid, request.payload)
        self.exchanges += 1
        tag = self._tag(request)
        if tag is not None or len(payload) > BLOCK_SIZE:
            self._publish(eid, tag, payload)
        return _message_for(downlink, payload)


@dataclass(frozen=True, slots=True)
class CoapServerConfig:
    host: str = "127.0.0.1"
    dtls_port: int = 5684
    plain_port: int | None = None  # lab only: plain CoAP on this port when allow_plain
    allow_plain: bool = False
    max_uplink: int = DEFAULT_MAX_UPLINK
    # Devices fetch Block2 blocks in parallel: 1,000 devices x 32 requests arrive as one burst,
    # and a small datagram costs ~1 KB of socket buffer, so the 208 KB Linux default overflows
    # (RcvbufErrors) at ~250 requests in flight. Capped by net.core.rmem_max unless the process
    # has CAP_NET_ADMIN (the daemon has not: the package raises rmem_max instead).
    receive_buffer: int = 32 * 1024 * 1024


class CoapServer:
    """The gateway's CoAP endpoint(s): DTLS always, plain CoAP only when explicitly allowed."""

    def __init__(self, handler: UplinkHandler, registry: DeviceRegistry, config: CoapServerConfig) -> None:
        if config.plain_port is not None and not config.allow_plain:
            raise ValueError("plain CoAP needs allow_plain=True (lab use only)")
        check_dtls_credentials(registry)
        self._config = config
        self._registry = registry
        self.dtls_site = DeviceLinkResource(handler, registry, max_uplink=config.max_uplink, plain=False)
        self.plain_site = DeviceLinkResource(handler, registry, max_uplink=config.max_uplink, plain=True)
        self._contexts: list[Any] = []

    async def start(self) -> None:
        # tinydtls_server only serves when listed explicitly; it cannot share a Context with a
        # plain transport bound elsewhere, hence one Context per endpoint.
        # aiocoap adds the coaps/coap port difference (5684 - 5683) to the bind port of a DTLS
        # server transport: bind one below to listen where configured (and never on port 0).
        if not 1 < self._config.dtls_port < 65536:
            raise ValueError(f"DTLS port {self._config.dtls_port} must be a fixed port")
        dtls = await aiocoap.Context.create_server_context(
            self.dtls_site, bind=(self._config.host, self._config.dtls_port - 1),
            transports=["tinydtls_server"], server_credentials=RegistryCredentials(self._registry))
        self._contexts.append(dtls)
        _enlarge_receive_buffer(dtls, self._config.receive_buffer)
        if self._config.allow_plain and self._config.plain_port is not None:
            log.warning("plain CoAP enabled on port %d: lab use only", self._config.plain_port)
            plain = await aiocoap.Context.create_server_context(
                self.plain_site, bind=(self._config.host, self._config.plain_port),
                transports=["udp6"])
            self._contexts.append(plain)
            _enlarge_receive_buffer(plain, self._config.receive_buffer)

    async def close(self) -> None:
        contexts, self._contexts = self._contexts, []
        for ctx in contexts:
            await ctx.shutdown()
        await asyncio.sleep(0)

    async def __aenter__(self) -> CoapServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()



def _enlarge_receive_buffer(ctx: Any, size: int) -> None:
    """Set SO_RCVBUF on the server socket(s) of an aiocoap Context.

    aiocoap (0.4.17) has no option for it: the socket is reached through its transport objects
    (TokenManager -> MessageManager -> message interface -> transport). If that path changes,
    the server still runs, with the default buffer, and says so.
    """
    found = False
    for token_manager in getattr(ctx, "request_interfaces", []):
        interface = getattr(getattr(token_manager, "token_interface", None), "message_interface", None)
        holder = getattr(interface, "_pool", interface)
        transport = getattr(holder, "_transport", None) or getattr(holder, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            granted = set_receive_buffer(sock, size)
            if granted < size:
                log.warning("the CoAP socket got a %d KiB receive buffer, not the %d KiB configured "
                            "(links.coap.receive_buffer_bytes): raise net.core.rmem_max, or bursts of "
                            "block requests from many devices will be dropped", granted // 1024, size // 1024)
            found = True
    if not found:
        log.warning("could not enlarge the CoAP server's receive buffer: bursts of block requests may be dropped")
