"""In-process link simulator: round-trip time, bandwidth and loss between devices and the gateway.

Theory of operation. A simulator is a relay that sits between device agents and a gateway
endpoint on loopback. Each *flow* (one device's UDP source address, or one TCP connection)
gets a `LinkProfile` and two independent one-way lines. A message entering a line waits until
the line is free, occupies it for ``size * 8 / bandwidth`` seconds (serialisation), then
arrives ``rtt / 2`` later (propagation); with probability ``loss`` a UDP datagram is dropped
(TCP segments are never dropped: TCP would retransmit them, which costs time the loss figure
does not model). So a request/response exchange costs one RTT plus the serialisation of both
messages, as on an NB-IoT or satellite bearer.

`UdpLinkSimulator` relays datagrams (CoAP, DTLS), `TcpLinkSimulator` relays byte streams
(MQTT). Both take one profile for every flow or a function of the flow's peer address, so a
benchmark can give each device its own link. Delivery is scheduled on the event loop
(one call_at timer per busy line, first in first out), so thousands of flows cost timers,
not tasks, and a line never reorders what it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.links.sockets import set_receive_buffer

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class LinkProfile:
    rtt_s: float = 0.0
    bandwidth_bps: float | None = None  # None: unlimited
    loss: float = 0.0  # probability that a UDP datagram is lost, each way

    def __post_init__(self) -> None:
        if self.rtt_s < 0 or not 0 <= self.loss < 1 or (self.bandwidth_bps is not None and self.bandwidth_bps <= 0):
            raise ValueError(f"invalid link profile {self}")


ProfileSource = LinkProfile | Callable[[Address], LinkProfile]


@dataclass(slots=True)
class _Line:
    """One direction of a flow: when it is free again, and what is on it, in order."""

    profile: LinkProfile
    busy_until: float = 0.0
    in_flight: deque[tuple[float, bytes]] = field(default_factory=deque)
    timer: asyncio.TimerHandle | None = None

    def arrival(self, now: float, size: int) -> float:
        start = max(now, self.busy_until)
        serialisation = size * 8 / self.profile.bandwidth_bps if self.profile.bandwidth_bps else 0.0
        self.busy_until = start + serialisation
        return self.busy_until + self.profile.rtt_s / 2

    def carry(self, loop: asyncio.AbstractEventLoop, data: bytes, deliver: Callable[[bytes], None]) -> None:
        """Put `data` on the line; `deliver` gets it on arrival, after everything sent before it."""
        self.in_flight.append((self.arrival(loop.time(), len(data)), data))
        if self.timer is None:
            self._schedule(loop, deliver)

    def _schedule(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[bytes], None]) -> None:
        when = self.in_flight[0][0]

        def fire() -> None:
            self.timer = None
            now = loop.time()
            while self.in_flight and self.in_flight[0][0] <= now:
                deliver(self.in_flight.popleft()[1])
            if self.in_flight:
                self._schedule(loop, deliver)
        self.timer = loop.call_at(when, fire)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.in_flight.clear()


@dataclass
class LinkStats:
    datagrams: int = 0
    dropped: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    flows: int = 0


def _big_buffers(transport: asyncio.BaseTransport) -> None:
    # every agent of a load test sends its burst before the relay reads: size for the burst,
    # not for the link (net.core.rmem_max caps it)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        set_receive_buffer(sock, 32 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)


def _profile(source: ProfileSource, peer: Address) -> LinkProfile:
    return source(peer) if callable(source) else source


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpLinkSimulator, flow: _UdpFlow) -> None:
        self.relay, self.flow = relay, flow

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay._down(self.flow, data)

    def error_received(self, exc: Exception) -> None:
        pass


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpLinkSimulator) -> None:
        self.relay = relay
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay._received(self, data, addr)

    def error_received(self, exc: Exception) -> None:
        pass


@dataclass(eq=False)
class _UdpFlow:
    peer: Address
    up: _Line
    down: _Line
    listener: _Listener
    transport: asyncio.DatagramTransport | None = None
    backlog: list[bytes] = field(default_factory=list)


class UdpLinkSimulator:
    """Relay UDP datagrams from devices (to `listen_port`, or any of `listen_ports`) to `target`,
    through simulated lines. Several listening sockets spread a load test's bursts: a socket's
    receive buffer holds a few thousand small datagrams at most."""

    def __init__(self, target: Address, profile: ProfileSource, *, host: str = "127.0.0.1",
                 seed: int | None = None) -> None:
        self.target = target
        self.host = host
        self._source = profile
        self._rng = random.Random(seed)
        self._flows: dict[tuple[int, Address], _UdpFlow] = {}
        self._listeners: list[_Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = LinkStats()
        self.listen_ports: list[int] = []

    @property
    def listen_port(self) -> int:
        return self.listen_ports[0]

    async def start(self, listeners: int = 1) -> int:
        self._loop = asyncio.get_running_loop()
        for _ in range(listeners):
            transport, listener = await self._loop.create_datagram_endpoint(
                lambda: _Listener(self), local_addr=(self.host, 0))
            _big_buffers(transport)
            self._listeners.append(listener)
            self.listen_ports.append(int(transport.get_extra_info("sockname")[1]))
        return self.listen_ports[0]

    async def close(self) -> None:
        for flow in self._flows.values():
            flow.up.cancel()
            flow.down.cancel()
            if flow.transport is not None:
                flow.transport.close()
        self._flows.clear()
        for listener in self._listeners:
            if listener.transport is not None:
                listener.transport.close()
        self._listeners.clear()
        await asyncio.sleep(0)

    async def __aenter__(self) -> UdpLinkSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def set_profile(self, profile: ProfileSource) -> None:
        """Change the link of every flow, present and future (a link that degrades mid-test)."""
        self._source = profile
        for flow in self._flows.values():
            flow.up.profile = flow.down.profile = _profile(profile, flow.peer)

    def _lost(self, profile: LinkProfile) -> bool:
        if profile.loss and self._rng.random() < profile.loss:
            self.stats.dropped += 1
            return True
        return False

    def _received(self, listener: _Listener, data: bytes, addr: Any) -> None:
        assert self._loop is not None
        peer = (str(addr[0]), int(addr[1]))
        key = (id(listener), peer)
        flow = self._flows.get(key)
        if flow is None:
            profile = _profile(self._source, peer)
            flow = _UdpFlow(peer, _Line(profile), _Line(profile), listener)
            self._flows[key] = flow
            self.stats.flows += 1
            self._loop.create_task(self._open(flow))
        self.stats.datagrams += 1
        self.stats.bytes_up += len(data)
        if self._lost(flow.up.profile):
            return
        flow.up.carry(self._loop, data, lambda d: self._send_up(flow, d))

    async def _open(self, flow: _UdpFlow) -> None:
        assert self._loop is not None
        transport, _ = await self._loop.create_datagram_endpoint(lambda: _Upstream(self, flow),
                                                                 remote_addr=self.target)
        _big_buffers(transport)
        flow.transport = transport
        for data in flow.backlog:
            transport.sendto(data)
        flow.backlog.clear()

    def _send_up(self, flow: _UdpFlow, data: bytes) -> None:
        if flow.transport is None:
            flow.backlog.append(data)
        else:
            flow.transport.sendto(data)

    def _down(self, flow: _UdpFlow, data: bytes) -> None:
        assert self._loop is not None
        self.stats.datagrams += 1
        self.stats.bytes_down += len(data)
        if self._lost(flow.down.profile):
            return
        flow.down.carry(self._loop, data, lambda d: self._send_down(flow, d))

    def _send_down(self, flow: _UdpFlow, data: bytes) -> None:
        if flow.listener.transport is not None:
            flow.listener.transport.sendto(data, flow.peer)


class _TcpEnd(asyncio.Protocol):
    """One end of a relayed TCP connection: what it receives goes on its line to the other end.

    An empty chunk on a line ends that direction (EOF, or the connection lost); once both
    directions have ended, both connections are closed."""

    def __init__(self, relay: TcpLinkSimulator, line: _Line, *, up: bool) -> None:
        self.relay, self.line, self.up = relay, line, up
        self.transport: asyncio.Transport | None = None
        self.other: _TcpEnd | None = None
        self.backlog: list[bytes] = []  # arrived for this end before its connection was made
        self.eof = False  # this end's direction is ended (an empty chunk is on the line)
        self.ended = False  # ... and that has reached the other end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.up:
            self.relay._device_connected(self)
        for data in self.backlog:
            self.send(data)
        self.backlog.clear()

    def data_received(self, data: bytes) -> None:
        if self.up:
            self.relay.stats.bytes_up += len(data)
        else:
            self.relay.stats.bytes_down += len(data)
        self.line.carry(self.relay.loop, data, self._arrived)

    def eof_received(self) -> bool:
        self._end()
        return True  # keep the other direction open until it ends too

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        if not self.eof:
            self.eof = True
            self.line.carry(self.relay.loop, b"", self._arrived)

    def _arrived(self, data: bytes) -> None:
        other = self.other
        if other is None:
            return
        if other.transport is None:
            other.backlog.append(data)
        else:
            other.send(data)
        if not data:
            self.ended = True
            if other.ended:
                self.close()
                other.close()

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if data:
            transport.write(data)
        elif transport.can_write_eof():
            with contextlib.suppress(OSError):
                transport.write_eof()

    def close(self) -> None:
        self.eof = True
        self.line.cancel()
        self.relay._ends.discard(self)
        if self.transport is not None:
            self.transport.close()

    # the other end's data comes faster than this end's connection takes it: stop reading there
    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()


class TcpLinkSimulator:
    """Relay TCP connections from devices to `target` with per-connection RTT and bandwidth.

    asyncio protocols, no streams or tasks per connection: a chunk read from one end goes on
    that direction's line (`_Line.carry`, one timer per busy line) and is written to the other
    end when it arrives."""

    def __init__(self, target: Address, profile: ProfileSource, *, host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self._source = profile
        self._server: asyncio.Server | None = None
        self._ends: set[_TcpEnd] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = LinkStats()
        self.listen_port = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    async def start(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(self._accept, self.host, 0)
        self.listen_port = int(self._server.sockets[0].getsockname()[1])
        return self.listen_port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        for end in list(self._ends):
            end.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await asyncio.sleep(0)  # let the transports' connection_lost run

    async def __aenter__(self) -> TcpLinkSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _accept(self) -> _TcpEnd:
        device = _TcpEnd(self, _Line(LinkProfile()), up=True)
        self._ends.add(device)
        return device

    def _device_connected(self, device: _TcpEnd) -> None:
        assert device.transport is not None
        peer = device.transport.get_extra_info("peername")
        profile = _profile(self._source, (str(peer[0]), int(peer[1])))
        device.line.profile = profile
        self.stats.flows += 1
        gateway = _TcpEnd(self, _Line(profile), up=False)
        device.other, gateway.other = gateway, device
        self._ends.add(gateway)
        task = self.loop.create_task(self._connect(device, gateway))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, device: _TcpEnd, gateway: _TcpEnd) -> None:
        try:
            await self.loop.create_connection(lambda: gateway, *self.target)
        except OSError:
            gateway.close()
            device.close()
