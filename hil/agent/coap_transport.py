"""Agent side of the CoAP link: POST with Block1 upload, parallel Block2 download (RFC 7959).

Theory of operation. The uplink goes out as one POST to ``/ipae/v1/<eid-hex>``; when it is
larger than one 1 KB block it is sent as Block1 blocks, one confirmable request at a time
(the server reassembles in order). The response carries the first downlink block and, when
more follow, Size2. The remaining blocks are fetched by *random access*: one NON POST with a
Block2 option per block, up to `window` of them in flight or waiting, so a 30-block batch costs
about one extra round trip instead of 29. NON because aiocoap (like RFC 7252's NSTART = 1)
queues confirmable requests to one peer behind each other; a lost NON is re-requested after
`block_timeout`. Blocks are handed to the agent strictly in order; the window is the memory
bound (window x 1 KB).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiocoap
import aiocoap.credentials
from aiocoap.optiontypes import BlockOption

from gateway.errors import NetworkError, TransportTimeout
from gateway.links.coap import BLOCK_SIZE, CONTENT_FORMAT_CBOR_SEQ

SZX_1K = 6  # 2 ** (6 + 4) = 1024


def _quiet(future: asyncio.Future[aiocoap.Message]) -> asyncio.Future[aiocoap.Message]:
    """A response future nobody may await any more (timed out) still has its error retrieved."""
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


class CoapAgentTransport:
    def __init__(self, host: str, port: int, eid: bytes, *, identity: str | None = None,
                 psk: bytes | None = None, block_timeout: float = 5.0, block_retries: int = 4,
                 request_timeout: float = 120.0, max_window: int | None = None) -> None:
        self._scheme = "coaps" if psk is not None else "coap"
        self._uri = f"{self._scheme}://{host}:{port}/ipae/v1/{eid.hex()}"
        self._host, self._port = host, port
        self._identity, self._psk = identity, psk
        self._ctx: aiocoap.Context | None = None
        self._remote: object = None
        self.block_timeout = block_timeout
        self.block_retries = block_retries
        self.request_timeout = request_timeout
        self.max_window = max_window
        self.block_requests = 0
        self.speculative_requests = 0
        self._seq = 0
        self.block_timeouts = 0

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

    async def _request(self, msg: aiocoap.Message, timeout: float) -> aiocoap.Message:
        ctx = await self._context()
        try:
            # shield: cancelling aiocoap's response future makes a late response raise
            # InvalidStateError inside aiocoap's receive path; left alone it is dropped quietly
            response = await asyncio.wait_for(asyncio.shield(_quiet(ctx.request(msg, handle_blockwise=False).response)),
                                              timeout)
            # aiocoap pools DTLS connections weakly: holding the remote keeps the session (and its
            # handshake, 3 round trips) alive from one wake-up to the next
            self._remote = response.remote
            return response
        except asyncio.TimeoutError:
            raise TransportTimeout(f"no CoAP response from {self._uri} within {timeout} s") from None
        except aiocoap.error.Error as exc:
            raise NetworkError(f"CoAP request to {self._uri} failed: {exc!r}") from exc

    async def _upload(self, payload: bytes, uri: str | None = None) -> aiocoap.Message:
        uri = uri or self._uri
        if len(payload) <= BLOCK_SIZE:
            return await self._request(aiocoap.Message(code=aiocoap.POST, uri=uri, payload=payload,
                                                       content_format=CONTENT_FORMAT_CBOR_SEQ),
                                       self.request_timeout)
        blocks = [payload[i:i + BLOCK_SIZE] for i in range(0, len(payload), BLOCK_SIZE)]
        for n, block in enumerate(blocks):
            more = n < len(blocks) - 1
            msg = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=block,
                                  content_format=CONTENT_FORMAT_CBOR_SEQ,
                                  block1=BlockOption.BlockwiseTuple(n, more, SZX_1K), size1=len(payload))
            response = await self._request(msg, self.request_timeout)
            if more and response.code != aiocoap.CONTINUE:
                return response  # refused mid-way (4.13, 4.03): its payload is the ErrorMsg
        return response

    async def _block(self, number: int, uri: str | None = None, started: asyncio.Event | None = None) -> bytes:
        """Block `number` of the downlink. With `started`, the request goes out now (speculatively,
        before the downlink exists) and its timeout only runs once the first block has arrived."""
        uri = uri or self._uri
        ctx = await self._context()
        for attempt in range(self.block_retries):
            msg = aiocoap.Message(code=aiocoap.POST, transport_tuning=aiocoap.Unreliable, uri=uri,
                                  content_format=CONTENT_FORMAT_CBOR_SEQ,
                                  block2=BlockOption.BlockwiseTuple(number, False, SZX_1K))
            self.block_requests += 1
            if attempt == 0 and started is not None:
                pending = asyncio.shield(_quiet(ctx.request(msg, handle_blockwise=False).response))
                await started.wait()
                try:
                    response = await asyncio.wait_for(pending, self.block_timeout)
                except asyncio.TimeoutError:
                    self.block_timeouts += 1
                    continue
                except aiocoap.error.Error as exc:
                    raise NetworkError(f"CoAP request to {uri} failed: {exc!r}") from exc
            else:
                try:
                    response = await self._request(msg, self.block_timeout)
                except TransportTimeout:
                    self.block_timeouts += 1
                    continue
            got = response.opt.block2
            if not response.code.is_successful() or got is None or got.block_number != number:
                raise NetworkError(f"block {number} of {uri}: {response.code} {got}")
            return bytes(response.payload)
        raise TransportTimeout(f"block {number} of {uri}: no answer after {self.block_retries} tries")

    async def exchange(self, payload: bytes, buffer_size: int, size_hint: int | None = None
                       ) -> AsyncIterator[bytes]:
        self._seq += 1
        uri = f"{self._uri}?x={self._seq}"
        window = max(1, buffer_size // BLOCK_SIZE)
        if self.max_window is not None:
            window = min(window, self.max_window)
        pending: dict[int, asyncio.Task[bytes]] = {}
        first_arrived = asyncio.Event()
        if size_hint is not None and size_hint > BLOCK_SIZE:
            await self._context()
            for number in range(1, min(window, -(-size_hint // BLOCK_SIZE))):
                pending[number] = asyncio.ensure_future(self._block(number, uri, first_arrived))
            self.speculative_requests += len(pending)
        try:
            first = await self._upload(payload, uri)
            first_arrived.set()
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
                    data = await self._block(number, uri)
                    more = len(data) == BLOCK_SIZE
                    yield data
                    number += 1
                return
            count = -(-total // BLOCK_SIZE)
            next_request = 1
            for number in range(1, count):
                while next_request < count and len([n for n in pending if n < count]) < window:
                    if next_request not in pending:
                        pending[next_request] = asyncio.ensure_future(self._block(next_request, uri))
                    next_request += 1
                if number not in pending:
                    pending[number] = asyncio.ensure_future(self._block(number, uri))
                data = await pending.pop(number)
                yield data
        finally:
            first_arrived.set()
            if pending and first_arrived.is_set():
                # speculative requests past the end are answered 4.02 at once: collect those
                # answers rather than leave the server answering into a closed exchange
                await asyncio.wait(pending.values(), timeout=self.block_timeout)
            for task in pending.values():
                task.cancel()
            for task in pending.values():
                with contextlib.suppress(BaseException):
                    await task
