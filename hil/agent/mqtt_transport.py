"""Agent side of the MQTT link: publish to ipae/<eid>/up, read the reply from ipae/<eid>/down.

Each uplink carries the MQTT 5 Response Topic (the device's down topic) and a fresh Correlation
Data; the downlink with the same Correlation Data is the answer. MQTT delivers a message whole,
so the agent gets the batch in one piece (the gateway keeps MQTT batches within the device's
max_batch_bytes) and feeds it to the streaming decoder in buffer-sized chunks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.errors import NetworkError, TransportTimeout
from gateway.links.mqtt import AsyncioMqtt, MqttConfig, down_topic, up_topic


class MqttAgentTransport:
    def __init__(self, config: MqttConfig, eid: bytes, *, timeout: float = 60.0) -> None:
        self.eid = eid
        self.timeout = timeout
        self._mqtt = AsyncioMqtt(config, on_message=self._message, subscriptions=[down_topic(eid)])
        self._waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self._started = False

    async def _ensure(self) -> None:
        if not self._started:
            self._started = True
            await self._mqtt.connect()
            await self._mqtt.subscribe(down_topic(self.eid))

    def _message(self, msg: paho.MQTTMessage) -> None:
        correlation = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        fut = self._waiting.pop(correlation, None) if isinstance(correlation, bytes) else None
        if fut is not None and not fut.done():
            fut.set_result(bytes(msg.payload))

    async def exchange(self, payload: bytes, buffer_size: int, size_hint: int | None = None
                       ) -> AsyncIterator[bytes]:
        try:
            await self._ensure()
        except (NetworkError, TransportTimeout):
            self._started = False
            raise
        correlation = os.urandom(8)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = down_topic(self.eid)
        props.CorrelationData = correlation
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = fut
        try:
            reason = await self._mqtt.publish(up_topic(self.eid), payload, props)
            if reason >= 0x80:
                raise NetworkError(f"broker refused the uplink (reason {reason:#x})")
            downlink = await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError:
            raise TransportTimeout(f"no downlink on {down_topic(self.eid)} within {self.timeout} s") from None
        finally:
            self._waiting.pop(correlation, None)
        chunk = max(256, buffer_size // 2)
        for i in range(0, len(downlink), chunk):
            yield downlink[i:i + chunk]

    async def close(self) -> None:
        await self._mqtt.close()
