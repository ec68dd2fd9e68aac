"""Device link over MQTT 5 (paho-mqtt 2.x) through a broker such as mosquitto.

Theory of operation. Each device publishes its uplinks to ``ipae/<eid-hex>/up`` (QoS 1) with
the MQTT 5 Response Topic ``ipae/<eid-hex>/down`` and a Correlation Data of its choice; the
gateway subscribes to ``ipae/+/up`` and publishes the one downlink for each uplink to the
device's down topic (QoS 1) with the same Correlation Data. Identity is the broker's job: every
device logs in with its own username/password and the ACL (`write_acl_file`) lets it write
only its own up topic and read only its own down topic, so the EID in the topic is the one
bound to the device's credentials. The gateway still checks the EID an uplink claims against
the topic's, and never answers on any topic but the topic's own down topic.

QoS 1 may deliver an uplink twice (a PUBLISH resent after a lost PUBACK): the gateway keeps
the last (correlation data, downlink) per EID and answers a repeated uplink with the same
downlink instead of calling the handler again, so one exchange stays one exchange.

paho runs inside the asyncio event loop (`AsyncioMqtt`: loop_read runs when the socket is
readable, the packets paho queues are written by loop_write on the loop's next turn -- the
socket is watched for writability only while its send buffer is full -- and loop_misc runs a
few times per keepalive) rather than in paho's own network thread: the handler is async, and a test or benchmark can run
hundreds of agents in one loop without a thread each. Only the blocking part of paho,
`connect()`/`reconnect()` (DNS, TCP and TLS handshakes), runs in a worker thread. Reconnection
after a lost connection uses exponential backoff with jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.errors import ConfigError, NetworkError, TransportTimeout, UnknownDevice
from gateway.links.base import DeviceCredential, DeviceRegistry, UplinkHandler, answer

log = logging.getLogger(__name__)

TOPIC_PREFIX = "ipae"
QOS = 1
MAX_CORRELATION = 64
MAX_INFLIGHT = 65535  # MQTT 5 Receive Maximum's ceiling, and the packet identifier space


def up_topic(eid: bytes) -> str:
    return f"{TOPIC_PREFIX}/{eid.hex()}/up"


def down_topic(eid: bytes) -> str:
    return f"{TOPIC_PREFIX}/{eid.hex()}/down"


def eid_from_up_topic(topic: str) -> bytes | None:
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != TOPIC_PREFIX or parts[2] != "up" or len(parts[1]) != 32:
        return None
    try:
        return bytes.fromhex(parts[1])
    except ValueError:
        return None


def mqtt_password(device: DeviceCredential) -> str:
    """A device's MQTT password: its registry secret, which must be UTF-8 text."""
    try:
        return device.secret.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"MQTT password of {device.identity!r} is not UTF-8 text") from None


# --- broker files -------------------------------------------------------------------------


def write_password_file(path: Path, users: Iterable[tuple[str, str]],
                        mosquitto_passwd: str = "mosquitto_passwd") -> None:
    """Write a mosquitto password file with hashed passwords (`mosquitto_passwd -U`)."""
    lines = []
    for user, password in users:
        if not user or ":" in user or "\n" in user or "\n" in password:
            raise ConfigError(f"MQTT username {user!r} or its password cannot go in a password file")
        lines.append(f"{user}:{password}\n")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".passwd-")
    try:
        with os.fdopen(fd, "w") as f:  # created 0600 by mkstemp
            f.writelines(lines)
        result = subprocess.run([mosquitto_passwd, "-U", tmp], capture_output=True, text=True)
        if result.returncode != 0:
            raise ConfigError(f"mosquitto_passwd failed: {result.stderr.strip()}", file=str(path))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def acl_text(gateway_user: str, registry: DeviceRegistry) -> str:
    """mosquitto ACL: the gateway reads every up topic and writes every down topic; each device
    writes only its own up topic and reads only its own down topic."""
    out = [f"user {gateway_user}", f"topic read {TOPIC_PREFIX}/+/up", f"topic write {TOPIC_PREFIX}/+/down", ""]
    for device in registry:
        if device.identity == gateway_user:
            raise ConfigError(f"device identity {device.identity!r} is the gateway's MQTT username")
        out += [f"user {device.identity}", f"topic write {up_topic(device.eid)}",
                f"topic read {down_topic(device.eid)}", ""]
    return "\n".join(out)


def write_acl_file(path: Path, gateway_user: str, registry: DeviceRegistry) -> None:
    path.write_text(acl_text(gateway_user, registry))


# --- paho in the asyncio loop ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int
    username: str
    password: str
    client_id: str = ""
    ca_file: str | None = None  # TLS to the broker when set (server certificate verified)
    keepalive: int = 30
    connect_timeout_s: float = 10.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    # QoS 1 PUBLISHes in flight each way: announced in CONNECT as this client's Receive Maximum,
    # and the most it sends unacknowledged (fewer when the broker's CONNACK allows fewer). The
    # gateway carries every device's exchange on one connection: a window of 20 (paho's and
    # mosquitto's default) held a 1,000-device burst of downlinks back by 0.1 s
    inflight: int = MAX_INFLIGHT


def backoff_delays(min_s: float, max_s: float, rng: random.Random | None = None) -> Iterable[float]:
    """Exponential backoff with full jitter in the upper half: min, 2 min, 4 min ... max."""
    rng = rng or random.Random()
    delay = min_s
    while True:
        yield delay / 2 + rng.random() * delay / 2
        delay = min(delay * 2, max_s)


class _TrackingTlsContext(ssl.SSLContext):
    """Remembers the last socket it wrapped: paho leaves it open when the handshake fails."""

    last: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.last = sock
        return sock

    def close_last(self) -> None:
        if self.last is not None:
            self.last.close()
            self.last = None


class AsyncioMqtt:
    """A paho MQTT 5 client whose network I/O is driven by the running asyncio loop."""

    def __init__(self, config: MqttConfig, *, on_message: Callable[[paho.MQTTMessage], None],
                 subscriptions: Iterable[str] = (), reconnect: bool = True) -> None:
        self.config = config
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                                  protocol=paho.MQTTv5, reconnect_on_failure=False)
        self.client.username_pw_set(config.username, config.password)
        self.client.connect_timeout = config.connect_timeout_s
        if not 1 <= config.inflight <= MAX_INFLIGHT:
            raise ConfigError(f"MQTT inflight must be 1 to {MAX_INFLIGHT}, not {config.inflight}")
        self._connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        self._connect_properties.ReceiveMaximum = config.inflight
        self.send_window = config.inflight  # QoS 1 messages this client may have unacknowledged
        self.client.max_inflight_messages = self._paho_window(config.inflight)
        self._tls: _TrackingTlsContext | None = None
        if config.ca_file is not None:
            self._tls = _TrackingTlsContext(ssl.PROTOCOL_TLS_CLIENT)
            self._tls.load_verify_locations(cafile=config.ca_file)
            self.client.tls_set_context(self._tls)
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._reconnect = reconnect
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._misc: asyncio.Task[None] | None = None
        self._flush_pending = False
        self._writer_sock: Any = None  # the socket watched for writability, if any
        self._reconnector: asyncio.Task[None] | None = None
        self._connected: asyncio.Future[None] | None = None  # the first connect() only
        self._up = asyncio.Event()
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._pubacks: dict[int, asyncio.Future[int]] = {}
        self._closing = False
        self.connects = 0
        self.disconnects = 0
        c = self.client
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = lambda _c, _u, msg: self._on_message(msg)
        c.on_subscribe = self._handle_subscribe
        c.on_publish = self._handle_publish
        c.on_socket_open = lambda _c, _u, sock: self._in_loop(self._socket_open, sock)
        c.on_socket_close = lambda _c, _u, sock: self._in_loop(self._socket_close, sock)
        c.on_socket_register_write = lambda _c, _u, sock: self._in_loop(self._register_write, sock)
        c.on_socket_unregister_write = lambda _c, _u, sock: self._in_loop(self._unregister_write, sock)

    # socket watching, always done in the loop thread
    def _in_loop(self, fn: Callable[[Any], None], sock: Any) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._thread_id:
            fn(sock)
        else:
            self._loop.call_soon_threadsafe(fn, sock)

    def _socket_open(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock, self.client.loop_read)
        if self.client.want_write():
            self._register_write(sock)
        if self._misc is None or self._misc.done():
            self._misc = self._loop.create_task(self._misc_loop())

    def _socket_close(self, sock: Any) -> None:
        assert self._loop is not None
        self._writer_sock = None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _register_write(self, sock: Any) -> None:
        # paho has queued a packet: write it on the loop's next turn rather than after an epoll
        # round (add_writer, then remove_writer once written: two epoll_ctl calls per packet)
        assert self._loop is not None
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self.client.loop_write()
        sock = self.client.socket()
        if sock is not None and self.client.want_write() and self._writer_sock is None:
            # the socket's send buffer is full: wait until it drains
            assert self._loop is not None
            with contextlib.suppress(ValueError, OSError):
                self._loop.add_writer(sock, self._flush)
                self._writer_sock = sock

    def _unregister_write(self, sock: Any) -> None:
        assert self._loop is not None
        if self._writer_sock is not None:
            self._writer_sock = None
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        # keepalive: a PINGREQ at most a quarter keepalive late keeps well within the broker's
        # 1.5 x keepalive; waking every second would cost a thousand agents a thousand wake-ups/s
        interval = max(0.5, min(self.config.keepalive / 4, 30.0))
        while self.client.loop_misc() == paho.MQTT_ERR_SUCCESS:
            await asyncio.sleep(interval)

    # paho callbacks (loop thread: they run inside loop_read/loop_write/loop_misc)
    @staticmethod
    def _paho_window(window: int) -> int:
        # paho's 0 means no limit, which the 16-bit packet identifiers bound as MAX_INFLIGHT does;
        # with a limit, paho also scans every unacknowledged message on each PUBACK
        return 0 if window >= MAX_INFLIGHT else window

    def _handle_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, props: Any) -> None:
        fut = self._connected
        if reason.is_failure:
            if fut is not None and not fut.done():
                fut.set_exception(NetworkError(f"broker refused the connection: {reason}"))
            return
        window = min(self.config.inflight, getattr(props, "ReceiveMaximum", MAX_INFLIGHT))
        if window != self.send_window:
            # paho 2.2 does not apply the broker's Receive Maximum (MQTT 5 section 3.2.2.3.3), and
            # its max_inflight_messages setter refuses an open connection
            self.client._max_inflight_messages = self._paho_window(window)
            self.send_window = window
        self.connects += 1
        self._up.set()
        for topic in self._subscriptions:
            self.client.subscribe(topic, qos=QOS)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _handle_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.disconnects += 1
        self._up.clear()
        for futs in (self._pubacks, self._subacks):
            for f in futs.values():
                if not f.done():
                    f.set_exception(NetworkError(f"MQTT connection lost: {reason}"))
            futs.clear()
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(NetworkError(f"MQTT connection lost: {reason}"))
        if not self._closing and self._reconnect and self._loop is not None:
            log.warning("MQTT connection to %s:%d lost (%s); reconnecting", self.config.host,
                        self.config.port, reason)
            if self._reconnector is None or self._reconnector.done():
                self._reconnector = self._loop.create_task(self._reconnect_loop())

    def _handle_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[Any], _props: Any) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result([r.value for r in reasons])

    def _handle_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        fut = self._pubacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reason.value)

    # public API
    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._closing = False
        self._connected = self._loop.create_future()
        try:
            rc = await asyncio.to_thread(self.client.connect, self.config.host, self.config.port,
                                         self.config.keepalive, properties=self._connect_properties)
        except (OSError, ssl.SSLError) as exc:
            if self._tls is not None:
                self._tls.close_last()
            raise NetworkError(f"cannot reach MQTT broker {self.config.host}:{self.config.port}: {exc}") from exc
        if rc != paho.MQTT_ERR_SUCCESS:
            raise NetworkError(f"MQTT connect failed: {paho.error_string(rc)}")
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), self.config.connect_timeout_s)
        except asyncio.TimeoutError:
            raise TransportTimeout("no CONNACK from the MQTT broker") from None

    async def _reconnect_loop(self) -> None:
        for delay in backoff_delays(self.config.reconnect_min_s, self.config.reconnect_max_s):
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                rc = await asyncio.to_thread(self.client.reconnect)
                if rc == paho.MQTT_ERR_SUCCESS:
                    await asyncio.wait_for(self._up.wait(), self.config.connect_timeout_s)
                    log.info("MQTT reconnected to %s:%d", self.config.host, self.config.port)
                    return
            except (OSError, ssl.SSLError, NetworkError, asyncio.TimeoutError) as exc:
                log.info("MQTT reconnect failed: %s", exc)

    async def wait_connected(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except asyncio.TimeoutError:
            raise TransportTimeout("MQTT not connected") from None

    async def subscribe(self, topic: str) -> list[int]:
        """Subscribe now; the broker's reason codes (0x87 = not authorised)."""
        assert self._loop is not None
        rc, mid = self.client.subscribe(topic, qos=QOS)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise NetworkError(f"subscribe failed: {paho.error_string(rc)}")
        fut = self._subacks.setdefault(mid, self._loop.create_future())
        return await asyncio.wait_for(fut, self.config.connect_timeout_s)

    def publish_nowait(self, topic: str, payload: bytes, properties: Properties | None = None) -> int:
        info = self.client.publish(topic, payload, qos=QOS, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise NetworkError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        return info.mid

    async def publish(self, topic: str, payload: bytes, properties: Properties | None = None) -> int:
        """Publish at QoS 1 and wait for the PUBACK; its reason code (0x87 = not authorised)."""
        assert self._loop is not None
        fut: asyncio.Future[int] = self._loop.create_future()
        mid = self.publish_nowait(topic, payload, properties)
        self._pubacks[mid] = fut
        return await asyncio.wait_for(fut, self.config.connect_timeout_s)

    async def close(self) -> None:
        self._closing = True
        if self._reconnector is not None:
            self._reconnector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnector
        if self.client.is_connected():
            disconnected = self.disconnects
            self.client.disconnect()
            for _ in range(100):
                if self.disconnects > disconnected or self.client.socket() is None:
                    break
                await asyncio.sleep(0.01)
        sock = self.client.socket()
        if sock is not None and self._loop is not None:
            self._socket_close(sock)
        self.client._sock_close()
        if self._misc is not None:
            self._misc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._misc


# --- the gateway side -------------------------------------------------------------------------


def response_properties(correlation: bytes | None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if correlation is not None:
        props.CorrelationData = correlation
    return props


@dataclass
class MqttGateway:
    """Answers every device's uplinks from the broker: one downlink per uplink, on its down topic."""

    handler: UplinkHandler
    registry: DeviceRegistry
    config: MqttConfig
    share_group: str | None = None  # MQTT 5 shared subscription for several gateway instances
    exchanges: int = 0
    dropped: int = 0
    repeated: int = 0
    _mqtt: AsyncioMqtt | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _last: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict)
    _busy: dict[bytes, asyncio.Lock] = field(default_factory=dict)

    @property
    def mqtt(self) -> AsyncioMqtt:
        assert self._mqtt is not None
        return self._mqtt

    async def start(self) -> None:
        topic = f"{TOPIC_PREFIX}/+/up"
        if self.share_group:
            topic = f"$share/{self.share_group}/{topic}"
        self._mqtt = AsyncioMqtt(self.config, on_message=self._message, subscriptions=[topic])
        await self._mqtt.connect()
        wanted = min(len(self.registry), self.config.inflight)
        if self._mqtt.send_window < wanted:
            log.warning("the MQTT broker takes only %d unacknowledged QoS 1 messages from the gateway "
                        "(%d devices): bursts of downlinks wait for its PUBACKs; raise its limit "
                        "(mosquitto: max_inflight_messages 0)", self._mqtt.send_window, len(self.registry))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._mqtt is not None:
            await self._mqtt.close()

    async def __aenter__(self) -> MqttGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _message(self, msg: paho.MQTTMessage) -> None:
        eid = eid_from_up_topic(msg.topic)
        if eid is None:
            self.dropped += 1
            log.warning("ignoring a message on %r", msg.topic)
            return
        try:
            self.registry.by_eid(eid)
        except UnknownDevice:
            self.dropped += 1
            log.warning("ignoring an uplink for unregistered EID %s", eid.hex())
            return
        props = getattr(msg, "properties", None)
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        if correlation is not None and (not isinstance(correlation, bytes) or len(correlation) > MAX_CORRELATION):
            correlation = None
        task = asyncio.get_running_loop().create_task(self._exchange(eid, bytes(msg.payload), correlation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _exchange(self, eid: bytes, payload: bytes, correlation: bytes | None) -> None:
        lock = self._busy.setdefault(eid, asyncio.Lock())
        async with lock:  # a device's uplinks are answered in order
            last = self._last.get(eid)
            if correlation is not None and last is not None and last[0] == correlation:
                self.repeated += 1
                encoded = last[1]
            else:
                _, encoded = await answer(self.handler, eid, payload)
                self.exchanges += 1
                if correlation is not None:
                    self._last[eid] = (correlation, encoded)
            try:
                self.mqtt.publish_nowait(down_topic(eid), encoded, response_properties(correlation))
            except NetworkError as exc:
                log.warning("downlink to %s not sent: %s", eid.hex(), exc)
