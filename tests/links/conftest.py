"""Peers for the device-link tests: a scripted gateway handler, device credentials, a CoAP/DTLS
server on loopback, and Debian's mosquitto on a free loopback port with a generated config.

The eUICC behind the agent is the project's software eUICC APDU layer (hil.euicc.card) with a
scripted ES10 dispatcher that echoes each request (so responses exercise 61xx chaining); the
full ES10 implementation is not needed to test the links.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.links import protocol as p
from gateway.links.base import DeviceCredential, DeviceRegistry
from gateway.links.coap import CoapServer, CoapServerConfig
from gateway.spec.apdu import ISD_R_AID, store_data
from hil.euicc.card import ApduLayer


def eid_of(n: int) -> bytes:
    return bytes.fromhex(f"890490321234512345{n:014d}")


def echo_card() -> ApduLayer:
    return ApduLayer(lambda request: request)


def es10_steps(count: int, size: int = 240) -> tuple[p.Step, ...]:
    """`count` STORE DATA sequences each carrying a DER object of about `size` bytes."""
    out = []
    for i in range(count):
        body = bytes((i + j) & 0xFF for j in range(size))
        der = b"\xbf\x2e" + (b"\x81" + bytes((size,)) if size < 256 else b"\x82" + size.to_bytes(2, "big")) + body
        out.append(p.Step(tuple(store_data(der))))
    return tuple(out)


@dataclass
class ScriptedHandler:
    """The gateway side of an exchange: hands out queued batches per EID, then Idle."""

    batches: dict[bytes, list[p.Batch]] = field(default_factory=dict)
    uplinks: list[tuple[bytes, p.Uplink]] = field(default_factory=list)
    idle_s: int = 300
    delay_s: float = 0.0

    async def exchange(self, eid: bytes, uplink: p.Uplink) -> p.Downlink:
        self.uplinks.append((eid, uplink))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        queue = self.batches.get(eid)
        if queue:
            return p.BatchMsg(queue.pop(0))
        return p.Idle(self.idle_s)

    def results_for(self, eid: bytes) -> list[p.BatchResult]:
        return [u.result for e, u in self.uplinks if e == eid and isinstance(u, p.Result)]


@pytest.fixture
def handler() -> ScriptedHandler:
    return ScriptedHandler()


@pytest.fixture
def registry() -> DeviceRegistry:
    return DeviceRegistry(DeviceCredential(f"dev{n}", eid_of(n), f"psk-of-device-{n}".encode())
                          for n in range(1, 6))


def free_udp_pair() -> int:
    """A UDP port p (p - 1 too is free: aiocoap binds the DTLS server one below and adds 1)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port > 1024:
            return port
    raise RuntimeError("no free UDP port")


@pytest.fixture
async def coap_server(handler: ScriptedHandler, registry: DeviceRegistry) -> AsyncIterator[CoapServer]:
    server = CoapServer(handler, registry, CoapServerConfig(dtls_port=free_udp_pair()))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


# --- mosquitto --------------------------------------------------------------------------------

MOSQUITTO = "/usr/sbin/mosquitto"


@dataclass
class Broker:
    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    tls_port: int | None = None
    ca_file: Path | None = None

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text() if path.exists() else ""


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port}")


def _free_tcp() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(directory: Path, password_file: Path, acl_file: Path,
                    tls: tuple[Path, Path, Path] | None = None) -> Broker:
    if not os.path.exists(MOSQUITTO) or shutil.which("mosquitto_passwd") is None:
        pytest.skip("Debian's mosquitto is not installed")
    port = _free_tcp()
    lines = [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {password_file}",
        f"acl_file {acl_file}",
        "persistence false",
        f"log_dest file {directory / 'mosquitto.log'}",
        "log_type error", "log_type warning", "log_type notice", "log_type subscribe",
        f"listener {port} 127.0.0.1",
    ]
    tls_port = None
    if tls is not None:
        tls_port = _free_tcp()
        ca, cert, key = tls
        lines += [f"listener {tls_port} 127.0.0.1", f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(port, time.monotonic() + 10)
        if tls_port:
            _wait_port(tls_port, time.monotonic() + 10)
    except RuntimeError:
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"mosquitto failed: {err.decode()}") from None
    return Broker("127.0.0.1", port, directory, proc, tls_port, tls[0] if tls else None)


def stop_mosquitto(broker: Broker) -> None:
    broker.process.terminate()
    try:
        broker.process.wait(10)
    except subprocess.TimeoutExpired:
        broker.process.kill()
        broker.process.wait()
    if broker.process.stderr:
        broker.process.stderr.close()


@pytest.fixture
def broker_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "broker"
    d.mkdir()
    yield d
