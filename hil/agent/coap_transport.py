"""Agent side of the CoAP link: POST with Block1 upload, parallel Block2 download (RFC 7959).

Theory of operation. The uplink goes out as one POST to ``/ipae/v1/<eid-hex>?x=<n>`` (n numbers
the exchanges); when it is larger than one 1 KB block it is sent as Block1 blocks, one
confirmable request at a time (the server reassembles in order). The response carries the first
downlink block and, when more follow, Size2. The remaining blocks are fetched by *random
access*: one NON POST with a Block2 option per block, up to `window` of them in flight, so a
30-block batch costs about one extra round trip instead of 29 (none when the gateway's size
hint lets the requests leave with the uplink). NON because aiocoap (like RFC 7252's NSTART = 1)
queues confirmable requests to one peer behind each other; a block not answered within
`block_timeout` of being awaited is requested again. Blocks are handed to the agent strictly
in order; the window is the memory bound (window x 1 KB).

A sensor's CPU is scarce, and a load test runs a thousand agents in one process: after the
first response the agent addresses its messages to the DTLS session it already has (options
set directly, no URI to parse and no credential lookup per message), and a block in flight is
just aiocoap's response future: no task and no timer of its own until it is awaited.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiocoap
import aiocoap.credentials
from aiocoap.optiontypes import BlockOption

from gateway.errors import NetworkError, TransportTimeout
from gateway.links.coap import BLOCK_SIZE, CONTENT_FORMAT_CBOR_SEQ, resource_path

SZX_1K = 6  # 2 ** (6 + 4) = 1024

Response = asyncio.Future[aiocoap.Message]


def _quiet(future: Response) -> Response:
    """A response future nobody may await any more (timed out) still has its error retrieved."""
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


async def _within(future: Response, timeout: float) -> aiocoap.Message | None:
    """The response, or None after `timeout`; the future itself is never cancelled (cancelling
    aiocoap's response future makes a late response raise InvalidStateError in its receive path)."""
    if not future.done():
        await asyncio.wait((future,), timeout=timeout)
        if not future.done():
            return None
    return future.result()


class CoapAgentTransport:
    def __init__(self, host: str, port: int, eid: bytes, *, identity: str | None = None,
                 psk: bytes | None = None, block_timeout: float = 5.0, block_retries: int = 4,
                 request_timeout: float = 120.0, max_window: int | None = None) -> None:
        self._scheme = "coaps" if psk is not None else "coap"
        self._path = resource_path(eid)
        self._uri = f"{self._scheme}://{host}:{port}/{'/'.join(self._path)}"
        self._host, self._port = host, port
        self._identity, self._psk = identity, psk
        self._ctx: aiocoap.Context | None = None
        # the DTLS session (or UDP endpoint) of the last response: aiocoap pools DTLS connections
        # weakly, so holding it also keeps the session (and its 3-round-trip handshake) alive
        # from one wake-up to the next
        self._remote: Any = None
        self.block_timeout = block_timeout
        self.block_retries = block_retries
        self.request_timeout = request_timeout
        self.max_window = max_window
        self.block_requests = 0
        self.speculative_requests = 0
        self.block_timeouts = 0
        self._seq = 0

    async def _context(self) -> aiocoap.Context:
        if self._ctx is None:
            transports = ["tinydtls"] if self._psk is not None else ["udp6"]
            ctx = await aiocoap.Context.create_client_context(transports=transports)
            if self._psk is not None:
                assert self._identity is not None
                ctx.client_credentials[f"coaps://{self._host}:{self._port}/*"] = aiocoap.credentials.DTLS(
                    psk=self._psk, client_identity=self._identity.encode())
            self._ctx = ctx
        return self._ctx

    async def close(self) -> None:
        self._remote = None
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            await ctx.shutdown()

    def _message(self, query: str | None, **options: Any) -> aiocoap.Message:
        """A POST to this device's resource, to the known session when there is one."""
        query_options = (query,) if query else ()
        if "payload" in options:
            options["content_format"] = CONTENT_FORMAT_CBOR_SEQ
        if self._remote is None:
            return aiocoap.Message(code=aiocoap.POST, uri=self._uri, uri_query=query_options, **options)
        msg = aiocoap.Message(code=aiocoap.POST, uri_path=self._path, uri_query=query_options, **options)
        msg.remote = self._remote
        return msg

    def _send(self, msg: aiocoap.Message) -> Response:
        assert self._ctx is not None
        return _quiet(self._ctx.request(msg, handle_blockwise=False).response)

    async def _outcome(self, future: Response, timeout: float, what: str) -> aiocoap.Message | None:
        try:
            response = await _within(future, timeout)
        except aiocoap.error.Error as exc:
            self._remote = None  # the session failed: the next message starts from the URI
            raise NetworkError(f"CoAP request to {self._uri} ({what}) failed: {exc!r}") from exc
        if response is not None:
            self._remote = response.remote
        return response

    async def _request(self, msg: aiocoap.Message, timeout: float) -> aiocoap.Message:
        await self._context()
        response = await self._outcome(self._send(msg), timeout, "uplink")
        if response is None:
            raise TransportTimeout(f"no CoAP response from {self._uri} within {timeout} s")
        return response

    async def _upload(self, payload: bytes, query: str | None = None) -> aiocoap.Message:
        if len(payload) <= BLOCK_SIZE:
            return await self._request(self._message(query, payload=payload), self.request_timeout)
        blocks = [payload[i:i + BLOCK_SIZE] for i in range(0, len(payload), BLOCK_SIZE)]
        for n, block in enumerate(blocks):
            more = n < len(blocks) - 1
            msg = self._message(query, payload=block, block1=BlockOption.BlockwiseTuple(n, more, SZX_1K),
                                size1=len(payload))
            response = await self._request(msg, self.request_timeout)
            if more and response.code != aiocoap.CONTINUE:
                return response  # refused mid-way (4.13, 4.03): its payload is the ErrorMsg
        return response

    def _request_block(self, number: int, query: str | None) -> Response:
        self.block_requests += 1
        return self._send(self._message(query, transport_tuning=aiocoap.Unreliable,
                                        block2=BlockOption.BlockwiseTuple(number, False, SZX_1K)))

    async def _block(self, number: int, query: str | None = None, sent: Response | None = None) -> bytes:
        """Block `number` of the downlink: the answer to `sent` (a request already out), or to a
        request made now; requested again while no answer comes within `block_timeout`."""
        await self._context()
        future = sent or self._request_block(number, query)
        for attempt in range(self.block_retries):
            if attempt:
                future = self._request_block(number, query)
            response = await self._outcome(future, self.block_timeout, f"block {number}")
            if response is None:
                self.block_timeouts += 1
                continue
            got = response.opt.block2
            if not response.code.is_successful() or got is None or got.block_number != number:
                raise NetworkError(f"block {number} of {self._uri}: {response.code} {got}")
            return bytes(response.payload)
        raise TransportTimeout(f"block {number} of {self._uri}: no answer after {self.block_retries} tries")

    async def exchange(self, payload: bytes, buffer_size: int, size_hint: int | None = None
                       ) -> AsyncIterator[bytes]:
        self._seq += 1
        query = f"x={self._seq}"
        window = max(1, buffer_size // BLOCK_SIZE)
        if self.max_window is not None:
            window = min(window, self.max_window)
        await self._context()
        in_flight: dict[int, Response] = {}
        if size_hint is not None and size_hint > BLOCK_SIZE:
            # the gateway said how large the downlink will be: its blocks are requested with the
            # uplink (the server holds them until the downlink exists)
            for number in range(1, min(window, -(-size_hint // BLOCK_SIZE))):
                in_flight[number] = self._request_block(number, query)
            self.speculative_requests += len(in_flight)
        try:
            first = await self._upload(payload, query)
            yield bytes(first.payload)
            block2 = first.opt.block2
            if block2 is None or not block2.more:
                return
            if block2.size_exponent != SZX_1K:
                raise NetworkError(f"server chose {block2.size} byte blocks, 1024 expected")
            total = first.opt.size2
            if total is None:  # no Size2: one block at a time
                number, more = 1, True
                while more:
                    data = await self._block(number, query)
                    more = len(data) == BLOCK_SIZE
                    yield data
                    number += 1
                return
            count = -(-total // BLOCK_SIZE)
            next_request = 1
            for number in range(1, count):
                while next_request < count and next_request < number + window:
                    if next_request not in in_flight:
                        in_flight[next_request] = self._request_block(next_request, query)
                    next_request += 1
                yield await self._block(number, query, in_flight.pop(number, None))
        finally:
            if in_flight:
                # speculative requests past the end are answered 4.02 at once: collect those
                # answers rather than leave the server answering into a closed exchange
                await asyncio.wait(in_flight.values(), timeout=self.block_timeout)
