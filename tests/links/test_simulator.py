"""The link simulator adds the round-trip time, serialisation delay and loss it is given."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.links import protocol as p
from gateway.links.base import DeviceRegistry
from gateway.links.coap import CoapServer
from gateway.links.simulator import LinkProfile, TcpLinkSimulator, UdpLinkSimulator
from gateway.spec.apdu import ISD_R_AID
from hil.agent import Agent
from hil.agent.coap_transport import CoapAgentTransport
from tests.links.conftest import ScriptedHandler, echo_card, eid_of, es10_steps

pytestmark = pytest.mark.timeout(60)


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait((time.monotonic(), data))


async def udp_echo_through(profile: LinkProfile, payloads: list[bytes], seed: int = 1
                           ) -> tuple[list[tuple[float, bytes]], float, UdpLinkSimulator]:
    loop = asyncio.get_running_loop()
    echo_t, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    port = echo_t.get_extra_info("sockname")[1]
    sim = UdpLinkSimulator(("127.0.0.1", port), profile, seed=seed)
    await sim.start()
    client = Client()
    client_t, _ = await loop.create_datagram_endpoint(lambda: client, remote_addr=("127.0.0.1", sim.listen_port))
    try:
        t0 = time.monotonic()
        for data in payloads:
            client_t.sendto(data)
        got = []
        with pytest.raises(asyncio.TimeoutError):
            while True:
                got.append(await asyncio.wait_for(client.got.get(), profile.rtt_s + 1.0))
        return got, t0, sim
    finally:
        client_t.close()
        await sim.close()
        echo_t.close()


async def test_a_datagram_echo_takes_one_round_trip() -> None:
    got, t0, _ = await udp_echo_through(LinkProfile(rtt_s=0.4), [b"ping"])
    assert [d for _, d in got] == [b"ping"]
    assert 0.38 <= got[0][0] - t0 < 0.55


async def test_bandwidth_serialises_datagrams_one_after_the_other() -> None:
    # 10 x 1000 bytes at 80 kbit/s: 0.1 s per datagram each way; the last one is back after ~1.1 s
    got, t0, _ = await udp_echo_through(LinkProfile(rtt_s=0.0, bandwidth_bps=80_000), [bytes(1000)] * 10)
    assert len(got) == 10
    assert 1.0 <= got[-1][0] - t0 < 1.4


async def test_loss_drops_the_given_share_of_datagrams() -> None:
    got, _, sim = await udp_echo_through(LinkProfile(rtt_s=0.0, loss=0.3), [bytes([i]) for i in range(200)], seed=7)
    assert 0.35 < len(got) / 200 < 0.65  # two lines at 30 % each: about 49 % survive
    assert sim.stats.dropped + len(got) * 2 <= 400 and sim.stats.dropped > 100


async def test_tcp_relay_adds_half_the_rtt_each_way() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with TcpLinkSimulator(("127.0.0.1", port), LinkProfile(rtt_s=0.3)) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.listen_port)
        t0 = time.monotonic()
        writer.write(b"hello")
        assert await reader.read(100) == b"hello"
        elapsed = time.monotonic() - t0
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert 0.28 <= elapsed < 0.5


async def test_a_30_kb_coap_batch_costs_one_extra_round_trip_not_thirty(
        coap_server: CoapServer, handler: ScriptedHandler, registry: DeviceRegistry) -> None:
    rtt = 0.3
    async with UdpLinkSimulator(("127.0.0.1", coap_server._config.dtls_port), LinkProfile(rtt_s=rtt)) as sim:
        transport = CoapAgentTransport("127.0.0.1", sim.listen_port, eid_of(1), identity="dev1",
                                       psk=b"psk-of-device-1")
        from hil.euicc.card import ApduLayer
        agent = Agent(Agent.make_status(eid_of(1), buffer_size=32 * 1024), ApduLayer(lambda r: b""), transport)
        try:
            await agent.run_session()  # DTLS handshake + Hello/Idle
            handler.batches[eid_of(1)] = [p.Batch(2, es10_steps(120), aid=ISD_R_AID)]
            t0 = time.monotonic()
            report = await agent.run_session()
            elapsed = time.monotonic() - t0
        finally:
            await transport.close()
    assert report.downlink_bytes > 30_000 and report.exchanges == 2
    assert elapsed < 3.5 * rtt + 0.3  # Hello -> block 0, blocks 1..30 at once, Result -> Idle


async def test_with_a_size_hint_the_blocks_are_requested_with_the_uplink_saving_a_round_trip(
        coap_server: CoapServer, handler: ScriptedHandler) -> None:
    rtt = 0.3
    from hil.euicc.card import ApduLayer
    async with UdpLinkSimulator(("127.0.0.1", coap_server._config.dtls_port), LinkProfile(rtt_s=rtt)) as sim:
        transport = CoapAgentTransport("127.0.0.1", sim.listen_port, eid_of(1), identity="dev1",
                                       psk=b"psk-of-device-1")
        agent = Agent(Agent.make_status(eid_of(1), buffer_size=48 * 1024), ApduLayer(lambda r: b""), transport)
        try:
            await agent.run_session()  # DTLS handshake + Hello/Idle
            big = p.Batch(2, es10_steps(120), aid=ISD_R_AID)
            hint = len(p.encode_downlink(p.BatchMsg(big)))
            handler.batches[eid_of(1)] = [p.Batch(1, es10_steps(1), aid=ISD_R_AID, next_size_hint=hint), big]
            t0 = time.monotonic()
            report = await agent.run_session()
            elapsed = time.monotonic() - t0
        finally:
            await transport.close()
    assert report.batches == 2 and report.exchanges == 3 and report.downlink_bytes > 30_000
    assert transport.speculative_requests == -(-hint // 1024) - 1 and transport.block_timeouts == 0
    assert elapsed < 3 * rtt + 0.4  # three exchanges, no extra round trip for blocks 1..30
    assert coap_server.dtls_site.blocks_served == transport.speculative_requests


async def test_a_wrong_size_hint_costs_no_time_or_errors(coap_server: CoapServer, handler: ScriptedHandler) -> None:
    transport = CoapAgentTransport("127.0.0.1", coap_server._config.dtls_port, eid_of(2), identity="dev2",
                                   psk=b"psk-of-device-2", block_timeout=5.0)
    agent = Agent(Agent.make_status(eid_of(2), buffer_size=16 * 1024), echo_card(), transport)
    handler.batches[eid_of(2)] = [p.Batch(1, es10_steps(1), aid=ISD_R_AID, next_size_hint=40_000)]
    try:
        t0 = time.monotonic()
        report = await agent.run_session()  # the Result is answered with a small Idle
        elapsed = time.monotonic() - t0
    finally:
        await transport.close()
    assert report.idle_after_s == handler.idle_s and report.transport_error is None
    assert transport.speculative_requests == 15 and elapsed < 2.0


async def test_an_established_coap_dtls_session_survives_10_percent_loss_each_way(
        coap_server: CoapServer, handler: ScriptedHandler) -> None:
    # the handshake runs on a clean link: under loss it can stall (docs/device-link.md §9)
    from hil.euicc.card import ApduLayer
    async with UdpLinkSimulator(("127.0.0.1", coap_server._config.dtls_port),
                                LinkProfile(rtt_s=0.02), seed=3) as sim:
        transport = CoapAgentTransport("127.0.0.1", sim.listen_port, eid_of(3), identity="dev3",
                                       psk=b"psk-of-device-3", block_timeout=0.5, block_retries=8)
        agent = Agent(Agent.make_status(eid_of(3), buffer_size=16 * 1024), ApduLayer(lambda r: b""), transport)
        big = p.Batch(2, es10_steps(60), aid=ISD_R_AID)
        try:
            await agent.run_session()
            sim.set_profile(LinkProfile(rtt_s=0.02, loss=0.1))
            handler.batches[eid_of(3)] = [p.Batch(1, es10_steps(1), aid=ISD_R_AID), big]
            report = await agent.run_session()
        finally:
            await transport.close()
    assert report.transport_error is None and report.batches == 2 and report.idle_after_s == handler.idle_s
    assert sim.stats.dropped > 0
    (_, second) = handler.results_for(eid_of(3))
    assert len(second.results) == 60


async def test_tcp_relay_carries_a_large_stream_whole_in_order_and_passes_each_close_on() -> None:
    blob = bytes(range(256)) * 8192  # 2 MB: more than the sockets buffer, so flow control runs
    received: list[bytes] = []

    async def server_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read())  # until the device's EOF came through the relay
        writer.write(blob)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    server = await asyncio.start_server(server_side, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with TcpLinkSimulator(("127.0.0.1", port), LinkProfile(rtt_s=0.05)) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.listen_port)
        writer.write(blob[:100_000])
        writer.write_eof()
        assert await reader.read() == blob  # read() ends at the server's close, relayed as EOF
        writer.close()
        await writer.wait_closed()
        assert sim.stats.bytes_up == 100_000 and sim.stats.bytes_down == len(blob)
    server.close()
    await server.wait_closed()
    assert received == [blob[:100_000]]
