"""Peers for the device-link tests: a scripted gateway handler, device credentials, a CoAP/DTLS
server on loopback, and Debian's mosquitto on a free loopback port with a generated config.

The eUICC behind the agent is the software eUICC (hil.euicc.SoftEuicc, in test_soft_euicc.py) or,
where only the link is under test, its APDU layer (hil.euicc.card.ApduLayer) with a scripted ES10
dispatcher that echoes each request, so that responses of any size exercise 61xx chaining.
"""

from __future__ import annotations

import asyncio
import getpass
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
from gateway.service.demo import free_tcp, free_udp_pair  # noqa: F401  (free_udp_pair: for the tests)
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


def _wait_port(port: int, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port}")


def start_mosquitto(directory: Path, password_file: Path, acl_file: Path,
                    tls: tuple[Path, Path, Path] | None = None, extra: tuple[str, ...] = ()) -> Broker:
    if not os.path.exists(MOSQUITTO) or shutil.which("mosquitto_passwd") is None:
        pytest.skip("Debian's mosquitto is not installed")
    port = free_tcp()
    lines = [
        "per_listener_settings false",
        f"user {getpass.getuser()}",  # when the tests run as root, do not drop to 'mosquitto'
        "allow_anonymous false",
        f"password_file {password_file}",
        f"acl_file {acl_file}",
        "persistence false",
        f"log_dest file {directory / 'mosquitto.log'}",
        "log_type error", "log_type warning", "log_type notice", "log_type subscribe",
        *extra,
        f"listener {port} 127.0.0.1",
    ]
    tls_port = None
    if tls is not None:
        tls_port = free_tcp()
        ca, cert, key = tls
        lines += [f"listener {tls_port} 127.0.0.1", f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(port, time.monotonic() + 10, proc)
        if tls_port:
            _wait_port(tls_port, time.monotonic() + 10, proc)
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


GATEWAY_USER = "ipae-gateway"
GATEWAY_PASSWORD = "gateway-secret"


def broker_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 / localhost (P-256, cryptography)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ipae test broker CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


@pytest.fixture
def broker(broker_dir: Path, registry: DeviceRegistry) -> Iterator[Broker]:
    from gateway.links.mqtt import mqtt_password, write_acl_file, write_password_file

    password_file, acl_file = broker_dir / "passwd", broker_dir / "acl"
    write_password_file(password_file, [(GATEWAY_USER, GATEWAY_PASSWORD)]
                        + [(d.identity, mqtt_password(d)) for d in registry])
    write_acl_file(acl_file, GATEWAY_USER, registry)
    b = start_mosquitto(broker_dir, password_file, acl_file, tls=broker_tls_files(broker_dir))
    try:
        yield b
    finally:
        stop_mosquitto(b)
