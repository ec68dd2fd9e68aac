"""CoAP over DTLS (aiocoap + tinydtls) with the reference agent, over real loopback sockets."""

from __future__ import annotations

import asyncio

import aiocoap
import aiocoap.credentials
import pytest
from aiocoap.optiontypes import BlockOption

from gateway.links import protocol as p
from gateway.links.base import DeviceRegistry
from gateway.links.coap import CoapServer, CoapServerConfig
from gateway.spec.apdu import ISD_R_AID
from hil.agent import Agent
from hil.agent.coap_transport import CoapAgentTransport
from tests.links.conftest import ScriptedHandler, echo_card, eid_of, es10_steps, free_udp_pair

pytestmark = pytest.mark.timeout(60)


def port_of(server: CoapServer) -> int:
    return server._config.dtls_port


def agent_for(server: CoapServer, n: int, *, psk: bytes | None = None, identity: str | None = None,
              buffer_size: int = 4096, request_timeout: float = 20.0) -> Agent:
    transport = CoapAgentTransport("127.0.0.1", port_of(server), eid_of(n), identity=identity or f"dev{n}",
                                   psk=psk or f"psk-of-device-{n}".encode(), block_timeout=2.0,
                                   request_timeout=request_timeout)
    return Agent(Agent.make_status(eid_of(n), buffer_size=buffer_size), echo_card(), transport)


async def raw_post(server: CoapServer, n: int, path_eid: bytes, payload: bytes, **options: object) -> aiocoap.Message:
    ctx = await aiocoap.Context.create_client_context(transports=["tinydtls"])
    ctx.client_credentials[f"coaps://127.0.0.1:{port_of(server)}/*"] = aiocoap.credentials.DTLS(
        psk=f"psk-of-device-{n}".encode(), client_identity=f"dev{n}".encode())
    try:
        uri = f"coaps://127.0.0.1:{port_of(server)}/ipae/v1/{path_eid.hex()}"
        return await asyncio.wait_for(
            ctx.request(aiocoap.Message(code=aiocoap.POST, uri=uri, payload=payload, **options),
                        handle_blockwise=False).response, 20)
    finally:
        await ctx.shutdown()


async def test_agent_runs_a_batch_on_a_logical_channel_over_dtls_and_gets_idle(
        coap_server: CoapServer, handler: ScriptedHandler) -> None:
    handler.batches[eid_of(1)] = [p.Batch(7, es10_steps(3), aid=ISD_R_AID)]
    agent = agent_for(coap_server, 1)
    try:
        report = await agent.run_session()
    finally:
        await agent.transport.close()
    assert (report.exchanges, report.batches, report.idle_after_s) == (2, 1, handler.idle_s)
    (result,) = handler.results_for(eid_of(1))
    assert result.batch_id == 7 and result.stopped is None
    assert [r.sw for r in result.results] == [0x9000] * 3
    first_der = b"".join(a[5:] for a in es10_steps(3)[0].apdus)
    assert result.results[0].data == first_der  # echoed through 61xx / GET RESPONSE on channel 1
    hello = handler.uplinks[0][1]
    assert isinstance(hello, p.Hello) and hello.status.eid == eid_of(1)


async def test_a_40_kb_batch_arrives_in_1_kb_block2_blocks_fetched_in_parallel(
        coap_server: CoapServer, handler: ScriptedHandler) -> None:
    batch = p.Batch(1, es10_steps(160), aid=ISD_R_AID)
    size = len(p.encode_downlink(p.BatchMsg(batch)))
    assert size > 40_000
    handler.batches[eid_of(2)] = [batch]
    agent = agent_for(coap_server, 2, buffer_size=16 * 1024)
    transport = agent.transport
    assert isinstance(transport, CoapAgentTransport)
    sent: list[asyncio.Future[aiocoap.Message]] = []
    peak = 0
    original = transport._request_block

    def counting(number: int, query: str | None) -> asyncio.Future[aiocoap.Message]:
        nonlocal peak
        sent.append(original(number, query))
        peak = max(peak, sum(not f.done() for f in sent))
        return sent[-1]

    transport._request_block = counting  # type: ignore[method-assign]
    try:
        report = await agent.run_session()
    finally:
        await transport.close()
    assert report.downlink_bytes >= size
    assert transport.block_requests == -(-size // 1024) - 1
    assert 1 < peak <= 16
    (result,) = handler.results_for(eid_of(2))
    assert len(result.results) == 160 and result.stopped is None  # the ~40 KB Result went up in Block1


async def test_result_larger_than_one_block_is_uploaded_with_block1(
        coap_server: CoapServer, handler: ScriptedHandler) -> None:
    handler.batches[eid_of(3)] = [p.Batch(3, es10_steps(8, size=1000), aid=ISD_R_AID)]
    agent = agent_for(coap_server, 3)
    try:
        report = await agent.run_session()
    finally:
        await agent.transport.close()
    assert report.uplink_bytes > 8000
    (result,) = handler.results_for(eid_of(3))
    assert all(len(r.data) == 1005 for r in result.results)


async def test_wrong_psk_fails_the_handshake_and_reaches_no_handler(
        coap_server: CoapServer, handler: ScriptedHandler) -> None:
    agent = agent_for(coap_server, 1, psk=b"not-the-right-key", request_timeout=3.0)
    try:
        report = await agent.run_session()
    finally:
        await agent.transport.close()
    assert report.transport_error is not None and report.exchanges == 1
    assert report.results == [] and report.batches == 0
    assert handler.uplinks == []


async def test_unknown_psk_identity_fails_the_handshake(coap_server: CoapServer, handler: ScriptedHandler) -> None:
    agent = agent_for(coap_server, 1, identity="intruder", request_timeout=3.0)
    try:
        report = await agent.run_session()
    finally:
        await agent.transport.close()
    assert report.transport_error is not None
    assert handler.uplinks == []


async def test_another_eids_resource_is_forbidden_even_with_valid_credentials(
        coap_server: CoapServer, handler: ScriptedHandler) -> None:
    hello_as_2 = p.encode_uplink(p.Hello(Agent.make_status(eid_of(2))))
    response = await raw_post(coap_server, 1, eid_of(2), hello_as_2)
    assert response.code == aiocoap.FORBIDDEN
    reply = p.decode_downlink(response.payload)
    assert isinstance(reply, p.ErrorMsg) and reply.code == p.ErrorCode.FORBIDDEN
    assert handler.uplinks == []


async def test_another_eids_downlink_blocks_are_forbidden_even_with_valid_credentials(
        coap_server: CoapServer, handler: ScriptedHandler) -> None:
    handler.batches[eid_of(2)] = [p.Batch(1, es10_steps(10), aid=ISD_R_AID)]
    agent = agent_for(coap_server, 2)
    try:
        assert (await agent.run_session()).batches == 1  # device 2 has a multi-block downlink
    finally:
        await agent.transport.close()
    response = await raw_post(coap_server, 1, eid_of(2), b"", block2=BlockOption.BlockwiseTuple(1, False, 6))
    assert response.code == aiocoap.FORBIDDEN
    reply = p.decode_downlink(response.payload)
    assert isinstance(reply, p.ErrorMsg) and reply.code == p.ErrorCode.FORBIDDEN
    assert coap_server.dtls_site.refused == 1


async def test_an_uplink_claiming_another_eid_on_its_own_resource_is_forbidden(
        coap_server: CoapServer, handler: ScriptedHandler) -> None:
    hello_as_2 = p.encode_uplink(p.Hello(Agent.make_status(eid_of(2))))
    response = await raw_post(coap_server, 1, eid_of(1), hello_as_2)
    reply = p.decode_downlink(response.payload)
    assert isinstance(reply, p.ErrorMsg) and reply.code == p.ErrorCode.FORBIDDEN
    assert handler.uplinks == []


@pytest.mark.parametrize(("payload", "code", "error"), [
    (b"\xff\x00garbage", aiocoap.BAD_REQUEST, p.ErrorCode.MALFORMED),
    (b"\xa2\x00\x09\x01\x01", aiocoap.BAD_REQUEST, p.ErrorCode.UNSUPPORTED_VERSION),
])
async def test_malformed_uplink_gets_error_msg_and_the_server_keeps_serving_others(
        coap_server: CoapServer, handler: ScriptedHandler, payload: bytes, code: aiocoap.numbers.codes.Code,
        error: p.ErrorCode) -> None:
    response = await raw_post(coap_server, 4, eid_of(4), payload)
    assert response.code == code
    reply = p.decode_downlink(response.payload)
    assert isinstance(reply, p.ErrorMsg) and reply.code == error
    handler.batches[eid_of(5)] = [p.Batch(1, es10_steps(2), aid=ISD_R_AID)]
    agent = agent_for(coap_server, 5)
    try:
        report = await agent.run_session()
    finally:
        await agent.transport.close()
    assert report.batches == 1 and report.idle_after_s is not None


async def test_oversized_upload_is_cut_off_with_4_13_before_it_is_spooled(
        handler: ScriptedHandler, registry: DeviceRegistry) -> None:
    server = CoapServer(handler, registry, CoapServerConfig(dtls_port=free_udp_pair(), max_uplink=8 * 1024))
    await server.start()
    transport = CoapAgentTransport("127.0.0.1", port_of(server), eid_of(1), identity="dev1",
                                   psk=b"psk-of-device-1")
    try:
        response = await transport._upload(bytes(20 * 1024))
        assert response.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
        reply = p.decode_downlink(response.payload)
        assert isinstance(reply, p.ErrorMsg) and reply.code == p.ErrorCode.TOO_LARGE
        assert server.dtls_site.refused == 1 and handler.uplinks == []
    finally:
        await transport.close()
        await server.close()


async def test_block2_request_for_a_block_past_the_end_is_refused(
        coap_server: CoapServer, handler: ScriptedHandler) -> None:
    handler.batches[eid_of(1)] = [p.Batch(1, es10_steps(10), aid=ISD_R_AID)]
    transport = CoapAgentTransport("127.0.0.1", port_of(coap_server), eid_of(1), identity="dev1",
                                   psk=b"psk-of-device-1")
    try:
        first = await transport._upload(p.encode_uplink(p.Hello(Agent.make_status(eid_of(1)))))
        assert first.opt.block2 == BlockOption.BlockwiseTuple(0, True, 6) and first.opt.size2 > 1024
        with pytest.raises(Exception, match="block 40"):
            await transport._block(40)
    finally:
        await transport.close()


async def test_plain_coap_needs_explicit_lab_opt_in(handler: ScriptedHandler, registry: DeviceRegistry) -> None:
    with pytest.raises(ValueError, match="allow_plain"):
        CoapServer(handler, registry, CoapServerConfig(dtls_port=free_udp_pair(), plain_port=free_udp_pair()))
    plain_port = free_udp_pair()
    server = CoapServer(handler, registry, CoapServerConfig(dtls_port=free_udp_pair(), plain_port=plain_port,
                                                            allow_plain=True))
    await server.start()
    handler.batches[eid_of(1)] = [p.Batch(1, es10_steps(2), aid=ISD_R_AID)]
    transport = CoapAgentTransport("127.0.0.1", plain_port, eid_of(1))
    agent = Agent(Agent.make_status(eid_of(1)), echo_card(), transport)
    try:
        report = await agent.run_session()
    finally:
        await transport.close()
        await server.close()
    assert report.batches == 1 and report.idle_after_s == handler.idle_s


async def test_agent_command_line_runs_a_session_over_dtls(coap_server: CoapServer, handler: ScriptedHandler) -> None:
    import json
    import sys
    handler.batches[eid_of(4)] = [p.Batch(9, es10_steps(4), aid=ISD_R_AID)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil.agent", "--transport", "coap", "--port", str(port_of(coap_server)),
        "--eid", eid_of(4).hex(), "--identity", "dev4", "--psk-hex", b"psk-of-device-4".hex(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    line = json.loads(out.decode().splitlines()[-1])
    assert line["batches"] == 1 and line["exchanges"] == 2 and line["idle_after_s"] == handler.idle_s
    (result,) = handler.results_for(eid_of(4))
    assert result.batch_id == 9 and len(result.results) == 4


async def test_documented_limit_aiocoap_keeps_dtls_sessions_after_clients_close(
        coap_server: CoapServer, handler: ScriptedHandler) -> None:
    """docs/device-link.md §9: close_notify does not end a server session (aiocoap 0.4.17)."""
    agents = [agent_for(coap_server, n) for n in (1, 2, 3)]
    for agent in agents:
        await agent.run_session()
        await agent.transport.close()
    await asyncio.sleep(0.3)
    pool = coap_server._contexts[0].request_interfaces[0].token_interface.message_interface._pool
    assert len(pool._connections) == 3  # if this fails, aiocoap now evicts: update the doc


def test_server_refuses_credentials_dtls_cannot_use(handler: ScriptedHandler) -> None:
    from gateway.errors import ConfigError
    from gateway.links.base import DeviceCredential
    too_long = DeviceRegistry([DeviceCredential("dev1", eid_of(1), bytes(17))])
    with pytest.raises(ConfigError, match="at most 16 bytes"):
        CoapServer(handler, too_long, CoapServerConfig(dtls_port=free_udp_pair()))
    long_identity = DeviceRegistry([DeviceCredential("d" * 33, eid_of(1), bytes(16))])
    with pytest.raises(ConfigError, match="'d{33}'"):
        CoapServer(handler, long_identity, CoapServerConfig(dtls_port=free_udp_pair()))


async def test_a_block_request_for_an_exchange_that_never_comes_gets_4_08(coap_server: CoapServer) -> None:
    coap_server.dtls_site._block_wait_s = 0.5
    ctx = await aiocoap.Context.create_client_context(transports=["tinydtls"])
    ctx.client_credentials[f"coaps://127.0.0.1:{port_of(coap_server)}/*"] = aiocoap.credentials.DTLS(
        psk=b"psk-of-device-1", client_identity=b"dev1")
    try:
        uri = f"coaps://127.0.0.1:{port_of(coap_server)}/ipae/v1/{eid_of(1).hex()}?x=77"
        msg = aiocoap.Message(code=aiocoap.POST, uri=uri, block2=BlockOption.BlockwiseTuple(3, False, 6))
        response = await asyncio.wait_for(ctx.request(msg, handle_blockwise=False).response, 10)
    finally:
        await ctx.shutdown()
    assert response.code == aiocoap.REQUEST_ENTITY_INCOMPLETE
