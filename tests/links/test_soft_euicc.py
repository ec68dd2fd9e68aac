"""The reference agent on the project's software eUICC, over CoAP/DTLS and MQTT on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.links import protocol as p
from gateway.links.coap import CoapServer
from gateway.links.mqtt import MqttGateway
from gateway.spec.apdu import ISD_R_AID, store_data
from hil.agent import Agent
from hil.agent.coap_transport import CoapAgentTransport
from hil.agent.mqtt_transport import MqttAgentTransport
from hil.euicc import SoftEuicc
from tests.links.conftest import Broker, ScriptedHandler, eid_of
from tests.links.test_mqtt import device_config

pytestmark = pytest.mark.timeout(60)


def es10_batch(batch_id: int) -> p.Batch:
    """GetEuiccChallenge, GetEUICCInfo1 and GetEID (SGP.22 §5.7.7, §5.7.8; SGP.32 GetEID)."""
    return p.Batch(batch_id, tuple(p.Step(tuple(store_data(bytes.fromhex(req))))
                                   for req in ("BF2E00", "BF2000", "BF3E035C015A")), aid=ISD_R_AID)


def check(result: p.BatchResult, eid: bytes) -> None:
    challenge, info1, get_eid = result.results
    assert result.stopped is None and {r.sw for r in result.results} == {0x9000}
    assert challenge.data[:2] == b"\xbf\x2e" and b"\x80\x10" in challenge.data  # a 16-byte challenge
    assert info1.data[:2] == b"\xbf\x20"
    assert get_eid.data[:2] == b"\xbf\x3e" and b"\x5a\x10" + eid in get_eid.data


async def test_agent_runs_es10_calls_on_the_soft_euicc_over_dtls(
        coap_server: CoapServer, handler: ScriptedHandler, tmp_path: Path) -> None:
    card = SoftEuicc(tmp_path / "pki", eid_of(1))
    handler.batches[eid_of(1)] = [es10_batch(1)]
    transport = CoapAgentTransport("127.0.0.1", coap_server._config.dtls_port, eid_of(1), identity="dev1",
                                   psk=b"psk-of-device-1")
    agent = Agent(Agent.make_status(eid_of(1)), card, transport)
    try:
        report = await agent.run_session()
    finally:
        await transport.close()
    assert report.batches == 1 and report.idle_after_s == handler.idle_s
    check(handler.results_for(eid_of(1))[0], eid_of(1))
    assert card.apdu.open_channels() == [0]  # the agent closed its logical channel


async def test_agent_runs_es10_calls_on_the_soft_euicc_over_mqtt(
        broker: Broker, handler: ScriptedHandler, registry: object, tmp_path: Path) -> None:
    from tests.links.test_mqtt import gateway_config
    card = SoftEuicc(tmp_path / "pki", eid_of(2))
    handler.batches[eid_of(2)] = [es10_batch(2)]
    async with MqttGateway(handler, registry, gateway_config(broker)):  # type: ignore[arg-type]
        transport = MqttAgentTransport(device_config(broker, 2), eid_of(2), timeout=10)
        agent = Agent(Agent.make_status(eid_of(2)), card, transport)
        try:
            report = await agent.run_session()
        finally:
            await transport.close()
    assert report.batches == 1 and report.idle_after_s == handler.idle_s
    check(handler.results_for(eid_of(2))[0], eid_of(2))


async def test_agent_command_line_with_the_soft_euicc(coap_server: CoapServer, handler: ScriptedHandler,
                                                     tmp_path: Path) -> None:
    import asyncio
    import json
    import sys
    handler.batches[eid_of(3)] = [es10_batch(3)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil.agent", "--transport", "coap", "--port", str(coap_server._config.dtls_port),
        "--eid", eid_of(3).hex(), "--identity", "dev3", "--psk-hex", b"psk-of-device-3".hex(),
        "--soft-euicc", str(tmp_path / "pki"), "--euicc-state", str(tmp_path / "euicc.json"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out.decode().splitlines()[-1])["batches"] == 1
    check(handler.results_for(eid_of(3))[0], eid_of(3))
