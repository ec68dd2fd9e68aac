"""MQTT 5 device link through Debian's mosquitto with generated passwords and ACL, real sockets."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.errors import ConfigError, NetworkError
from gateway.links import protocol as p
from gateway.links.base import DeviceCredential, DeviceRegistry
from gateway.links.mqtt import (
    MAX_INFLIGHT,
    AsyncioMqtt,
    MqttConfig,
    MqttGateway,
    acl_text,
    backoff_delays,
    down_topic,
    response_properties,
    up_topic,
    write_password_file,
)
from gateway.spec.apdu import ISD_R_AID
from hil.agent import Agent
from hil.agent.mqtt_transport import MqttAgentTransport
from tests.links.conftest import (
    GATEWAY_PASSWORD,
    GATEWAY_USER,
    Broker,
    ScriptedHandler,
    echo_card,
    eid_of,
    es10_steps,
    start_mosquitto,
    stop_mosquitto,
)

pytestmark = pytest.mark.timeout(60)


def gateway_config(broker: Broker, *, tls: bool = False) -> MqttConfig:
    if tls:
        assert broker.tls_port is not None and broker.ca_file is not None
        return MqttConfig(broker.host, broker.tls_port, GATEWAY_USER, GATEWAY_PASSWORD, client_id="gw",
                          ca_file=str(broker.ca_file), reconnect_min_s=0.2, reconnect_max_s=1.0)
    return MqttConfig(broker.host, broker.port, GATEWAY_USER, GATEWAY_PASSWORD, client_id="gw",
                      reconnect_min_s=0.2, reconnect_max_s=1.0)


def device_config(broker: Broker, n: int, *, password: str | None = None, tls: bool = False) -> MqttConfig:
    port = broker.tls_port if tls else broker.port
    assert port is not None
    return MqttConfig(broker.host, port, f"dev{n}", password or f"psk-of-device-{n}", client_id=f"dev{n}",
                      ca_file=str(broker.ca_file) if tls else None)


@pytest.fixture
async def mqtt_gateway(broker: Broker, handler: ScriptedHandler, registry: DeviceRegistry
                       ) -> AsyncIterator[MqttGateway]:
    gw = MqttGateway(handler, registry, gateway_config(broker))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


async def run_agent(broker: Broker, n: int, *, tls: bool = False, timeout: float = 10.0) -> Agent:
    transport = MqttAgentTransport(device_config(broker, n, tls=tls), eid_of(n), timeout=timeout)
    agent = Agent(Agent.make_status(eid_of(n)), echo_card(), transport)
    try:
        agent.last_report = await agent.run_session()  # type: ignore[attr-defined]
    finally:
        await transport.close()
    return agent


async def test_agent_session_over_mqtt5_qos1_through_mosquitto(
        broker: Broker, mqtt_gateway: MqttGateway, handler: ScriptedHandler) -> None:
    handler.batches[eid_of(1)] = [p.Batch(5, es10_steps(30), aid=ISD_R_AID)]
    report = (await run_agent(broker, 1)).last_report  # type: ignore[attr-defined]
    assert (report.exchanges, report.batches, report.idle_after_s) == (2, 1, handler.idle_s)
    (result,) = handler.results_for(eid_of(1))
    assert len(result.results) == 30 and {r.sw for r in result.results} == {0x9000}
    assert mqtt_gateway.exchanges == 2


async def test_gateway_and_agent_reach_the_broker_over_verified_tls(
        broker: Broker, handler: ScriptedHandler, registry: DeviceRegistry) -> None:
    handler.batches[eid_of(2)] = [p.Batch(1, es10_steps(2), aid=ISD_R_AID)]
    async with MqttGateway(handler, registry, gateway_config(broker, tls=True)):
        report = (await run_agent(broker, 2, tls=True)).last_report  # type: ignore[attr-defined]
    assert report.batches == 1 and report.idle_after_s == handler.idle_s


async def test_tls_with_an_untrusted_ca_is_refused(broker: Broker, tmp_path: Path) -> None:
    from tests.links.conftest import broker_tls_files
    other = tmp_path / "other"
    other.mkdir()
    other_ca = broker_tls_files(other)[0]
    assert broker.tls_port is not None
    client = AsyncioMqtt(MqttConfig(broker.host, broker.tls_port, "dev1", "psk-of-device-1",
                                    ca_file=str(other_ca)), on_message=lambda m: None, reconnect=False)
    with pytest.raises(NetworkError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await client.connect()
    await client.close()


async def test_wrong_password_is_refused_by_the_broker(broker: Broker) -> None:
    client = AsyncioMqtt(device_config(broker, 1, password="guess"), on_message=lambda m: None, reconnect=False)
    with pytest.raises(NetworkError, match="refused|Not authorized|Bad user name"):
        await client.connect()
    await client.close()


async def test_a_device_cannot_publish_on_another_eids_up_topic(
        broker: Broker, mqtt_gateway: MqttGateway, handler: ScriptedHandler) -> None:
    intruder = AsyncioMqtt(device_config(broker, 1), on_message=lambda m: None, reconnect=False)
    await intruder.connect()
    try:
        hello_as_2 = p.encode_uplink(p.Hello(Agent.make_status(eid_of(2))))
        reason = await intruder.publish(up_topic(eid_of(2)), hello_as_2, response_properties(b"x"))
        assert reason == 0x87  # MQTT 5 PUBACK "Not authorized"
        await asyncio.sleep(0.3)
    finally:
        await intruder.close()
    assert handler.uplinks == [] and mqtt_gateway.exchanges == 0


async def test_a_device_never_receives_another_eids_downlinks_whatever_it_subscribes(
        broker: Broker, mqtt_gateway: MqttGateway, handler: ScriptedHandler) -> None:
    seen: list[str] = []
    intruder = AsyncioMqtt(device_config(broker, 1), on_message=lambda m: seen.append(m.topic), reconnect=False)
    await intruder.connect()
    try:
        # mosquitto grants the SUBACK but checks read access on every delivery
        await intruder.subscribe(down_topic(eid_of(2)))
        await intruder.subscribe("ipae/#")
        handler.batches[eid_of(2)] = [p.Batch(1, es10_steps(2), aid=ISD_R_AID)]
        report = (await run_agent(broker, 2)).last_report  # type: ignore[attr-defined]
        assert report.batches == 1
        await asyncio.sleep(0.3)
    finally:
        await intruder.close()
    assert seen == []


async def test_an_uplink_claiming_another_eid_on_its_own_topic_is_forbidden(
        broker: Broker, mqtt_gateway: MqttGateway, handler: ScriptedHandler) -> None:
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    device = AsyncioMqtt(device_config(broker, 1), on_message=lambda m: replies.put_nowait(m.payload),
                         reconnect=False)
    await device.connect()
    try:
        await device.subscribe(down_topic(eid_of(1)))
        await device.publish(up_topic(eid_of(1)), p.encode_uplink(p.Hello(Agent.make_status(eid_of(2)))),
                             response_properties(b"c1"))
        reply = p.decode_downlink(await asyncio.wait_for(replies.get(), 10))
    finally:
        await device.close()
    assert isinstance(reply, p.ErrorMsg) and reply.code == p.ErrorCode.FORBIDDEN
    assert handler.uplinks == []


@pytest.mark.parametrize(("payload", "error"), [
    (b"\xff\xfe not cbor", p.ErrorCode.MALFORMED),
    (b"\xa2\x00\x07\x01\x01", p.ErrorCode.UNSUPPORTED_VERSION),
    (bytes(p.MAX_MESSAGE + 10), p.ErrorCode.TOO_LARGE),
])
async def test_malformed_or_oversized_uplink_gets_error_msg_and_others_are_still_served(
        broker: Broker, mqtt_gateway: MqttGateway, handler: ScriptedHandler, payload: bytes,
        error: p.ErrorCode) -> None:
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    device = AsyncioMqtt(device_config(broker, 3), on_message=lambda m: replies.put_nowait(m.payload),
                         reconnect=False)
    await device.connect()
    try:
        await device.subscribe(down_topic(eid_of(3)))
        await device.publish(up_topic(eid_of(3)), payload, response_properties(b"c1"))
        reply = p.decode_downlink(await asyncio.wait_for(replies.get(), 10))
    finally:
        await device.close()
    assert isinstance(reply, p.ErrorMsg) and reply.code == error
    handler.batches[eid_of(4)] = [p.Batch(1, es10_steps(2), aid=ISD_R_AID)]
    report = (await run_agent(broker, 4)).last_report  # type: ignore[attr-defined]
    assert report.batches == 1 and report.idle_after_s == handler.idle_s


async def test_a_redelivered_uplink_gets_the_same_downlink_without_a_second_exchange(
        broker: Broker, mqtt_gateway: MqttGateway, handler: ScriptedHandler) -> None:
    handler.batches[eid_of(5)] = [p.Batch(1, es10_steps(1), aid=ISD_R_AID), p.Batch(2, es10_steps(1))]
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    device = AsyncioMqtt(device_config(broker, 5), on_message=lambda m: replies.put_nowait(m.payload),
                         reconnect=False)
    await device.connect()
    try:
        await device.subscribe(down_topic(eid_of(5)))
        hello = p.encode_uplink(p.Hello(Agent.make_status(eid_of(5))))
        for _ in range(2):
            await device.publish(up_topic(eid_of(5)), hello, response_properties(b"same"))
        first = await asyncio.wait_for(replies.get(), 10)
        second = await asyncio.wait_for(replies.get(), 10)
    finally:
        await device.close()
    assert first == second and isinstance(p.decode_downlink(first), p.BatchMsg)
    assert len(handler.uplinks) == 1 and mqtt_gateway.repeated == 1


async def test_gateway_reconnects_with_backoff_after_the_broker_restarts(
        broker: Broker, mqtt_gateway: MqttGateway, handler: ScriptedHandler, broker_dir: Path) -> None:
    stop_mosquitto(broker)
    await asyncio.sleep(0.5)
    assert not mqtt_gateway.mqtt.client.is_connected()
    restarted = start_mosquitto_on(broker, broker_dir)
    try:
        await mqtt_gateway.mqtt.wait_connected(15)
        assert mqtt_gateway.mqtt.connects == 2
        report = (await run_agent(restarted, 1)).last_report  # type: ignore[attr-defined]
        assert report.idle_after_s == handler.idle_s
    finally:
        stop_mosquitto(restarted)


async def test_the_gateway_keeps_within_the_brokers_receive_maximum_and_its_own_window(
        broker: Broker, handler: ScriptedHandler, registry: DeviceRegistry) -> None:
    # mosquitto's default max_inflight_messages (20) is the Receive Maximum in its CONNACK; paho
    # itself would not apply it
    async with MqttGateway(handler, registry, gateway_config(broker)) as gw:
        assert (gw.mqtt.send_window, gw.mqtt.client.max_inflight_messages) == (20, 20)
    async with MqttGateway(handler, registry, replace(gateway_config(broker), inflight=3)) as gw:
        assert (gw.mqtt.send_window, gw.mqtt.client.max_inflight_messages) == (3, 3)
        report = (await run_agent(broker, 1)).last_report  # type: ignore[attr-defined]
        assert report.idle_after_s == handler.idle_s


async def test_a_broker_window_smaller_than_the_fleet_is_logged(
        broker: Broker, handler: ScriptedHandler, caplog: pytest.LogCaptureFixture) -> None:
    fleet = DeviceRegistry(DeviceCredential(f"fleet{n}", eid_of(100 + n), b"secret") for n in range(25))
    async with MqttGateway(handler, fleet, gateway_config(broker)):
        pass
    assert any("takes only 20 unacknowledged QoS 1 messages" in r.getMessage() for r in caplog.records)


async def test_with_a_broker_that_sets_no_limit_every_device_is_served_in_one_window(
        broker: Broker, broker_dir: Path, handler: ScriptedHandler, registry: DeviceRegistry,
        tmp_path: Path) -> None:
    # a second broker on the same password and ACL files, without mosquitto's default limit
    unlimited = start_mosquitto(tmp_path, broker_dir / "passwd", broker_dir / "acl",
                                extra=("max_inflight_messages 0",))
    try:
        async with MqttGateway(handler, registry, gateway_config(unlimited)) as gw:
            assert gw.mqtt.send_window == MAX_INFLIGHT and gw.mqtt.client.max_inflight_messages == 0
            agents = await asyncio.gather(*(run_agent(unlimited, n) for n in range(1, 6)))
            assert [a.last_report.idle_after_s for a in agents] == [handler.idle_s] * 5  # type: ignore[attr-defined]
    finally:
        stop_mosquitto(unlimited)


def test_an_inflight_window_outside_mqtts_range_is_a_config_error() -> None:
    for inflight in (0, MAX_INFLIGHT + 1):
        with pytest.raises(ConfigError):
            AsyncioMqtt(MqttConfig("127.0.0.1", 1, "u", "p", inflight=inflight), on_message=lambda _m: None)


def start_mosquitto_on(old: Broker, directory: Path) -> Broker:
    import subprocess
    conf = directory / "mosquitto.conf"
    proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    from tests.links.conftest import _wait_port
    import time
    _wait_port(old.port, time.monotonic() + 10)
    old.process = proc
    return old


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    import itertools
    import random
    delays = list(itertools.islice(backoff_delays(0.5, 4.0, random.Random(1)), 8))
    assert all(0.25 <= d <= 0.5 for d in delays[:1])
    assert all(2.0 <= d <= 4.0 for d in delays[4:])
    assert delays[3] > delays[0]


def test_password_file_holds_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write_password_file(path, [("dev1", "secret-one"), ("dev2", "secret-two")])
    text = path.read_text()
    assert "secret-one" not in text and text.startswith("dev1:$7$")
    assert os.stat(path).st_mode & 0o077 == 0


def test_acl_gives_each_device_only_its_own_topics(registry: DeviceRegistry) -> None:
    text = acl_text(GATEWAY_USER, registry)
    block = text.split("user dev1\n")[1].split("\n\n")[0]
    assert block.splitlines() == [f"topic write {up_topic(eid_of(1))}", f"topic read {down_topic(eid_of(1))}"]
    assert "topic read ipae/+/up" in text.split("user dev1")[0]
