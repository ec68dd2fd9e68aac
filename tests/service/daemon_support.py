"""Running `ipae-gateway run` as a real subprocess for the supervisor, API and CLI tests.

`Layout` lays out a configuration directory (gateway.toml, devices.d/, a 0600
credentials file) with the state, the API socket and a CoAP/DTLS port of the test's own;
`start_daemon` starts the real command line (`spawn` any command line, such as the installed
unit's ExecStart) with a real NOTIFY_SOCKET bound by the test; `Daemon` reads the sd_notify
datagrams it sends, with the sender's pid and uid as systemd sees them, and talks to its API
over the unix socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import eid_check_digits
from gateway.links.protocol import DeviceStatus
from gateway.service.demo import free_tcp, free_udp_pair
from hil.agent.agent import Agent
from hil.agent.coap_transport import CoapAgentTransport
from hil.euicc import SoftEuicc

REPO = Path(__file__).resolve().parents[2]
CREDENTIALS = struct.Struct("iII")   # struct ucred: pid, uid, gid (SCM_CREDENTIALS)


def make_eid(n: int) -> bytes:
    first = f"890490321234512345{n:012d}"
    return bytes.fromhex(first + eid_check_digits(first))


def psk_of(n: int) -> bytes:
    return bytes([n]) * 16


def free_udp_port() -> int:
    """A UDP port p with p - 1 free as well (aiocoap binds its DTLS server one below)."""
    return free_udp_pair()


def free_tcp_port() -> int:
    return free_tcp()


@dataclass
class Layout:
    directory: Path
    coap_port: int
    socket_path: Path
    devices: list[int]
    extra: str = ""
    credentials_extra: str = ""

    @property
    def config(self) -> Path:
        return self.directory / "gateway.toml"

    @property
    def db(self) -> Path:
        return self.directory / "state" / "gateway.sqlite3"

    def write(self) -> None:
        d = self.directory
        (d / "devices.d").mkdir(parents=True, exist_ok=True)
        fleet = "".join(f'[[device]]\neid = "{make_eid(n).hex()}"\nlink = "coap"\nidentity = "dev{n}"\n'
                        f'name = "sensor {n}"\n\n' for n in self.devices)
        (d / "devices.d" / "fleet.toml").write_text(fleet)
        psks = "".join(f'dev{n} = "{psk_of(n).hex()}"\n' for n in self.devices)
        creds = d / "credentials.toml"
        creds.write_text(f"{self.credentials_extra}\n[dtls_psk]\n{psks}")
        os.chmod(creds, 0o600)
        self.config.write_text(
            '[gateway]\nstate_dir = "state"\nshutdown_grace_s = 5.0\n'
            f'[links.coap]\nlisten = "127.0.0.1"\nport = {self.coap_port}\n'
            f'[api]\nsocket_path = "{self.socket_path}"\n{self.extra}')


@dataclass
class Daemon:
    socket_path: Path
    process: subprocess.Popen[bytes]
    notify: socket.socket
    messages: list[str] = field(default_factory=list)
    senders: list[tuple[int, int]] = field(default_factory=list)   # (pid, uid) of each message
    log: str | None = None   # its stderr, once stopped
    layout: Layout | None = None   # the configuration start_daemon ran it with

    def wait_notify(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.messages:
                if text in m:
                    return m
            left = deadline - time.monotonic()
            exited = self.process.poll() is not None
            if left <= 0 or (exited and not self._receive(0.0)):
                raise AssertionError(f"no {text!r} from the daemon (got {self.messages}); stderr: {self.stderr()}")
            if not exited:
                self._receive(min(left, 0.5))

    def _receive(self, timeout: float) -> bool:
        self.notify.settimeout(timeout) if timeout else self.notify.setblocking(False)
        try:
            data, ancillary, _, _ = self.notify.recvmsg(4096, socket.CMSG_SPACE(CREDENTIALS.size))
        except (TimeoutError, BlockingIOError):
            return False
        self.messages.append(data.decode())
        pid, uid, _ = next((CREDENTIALS.unpack(d[:CREDENTIALS.size]) for level, kind, d in ancillary
                            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)), (0, -1, -1))
        self.senders.append((pid, uid))
        return True

    def stderr(self) -> str:
        if self.log is not None:
            return self.log
        if self.process.poll() is None:
            return "(still running)"
        assert self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace")

    async def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, Any]:
        return await api_request(self.socket_path, "GET", path, params)

    async def post(self, path: str) -> tuple[int, Any]:
        return await api_request(self.socket_path, "POST", path)

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args, "--socket", str(self.socket_path)],
                              capture_output=True, text=True, timeout=60, cwd=REPO)


async def api_request(socket_path: Path, method: str, path: str, params: dict[str, str] | None = None,
                      json_body: dict[str, Any] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path))) as session:
        async with session.request(method, "http://gateway" + path, params=params, json=json_body) as resp:
            body = await resp.read()
            if resp.content_type == "application/json":
                return resp.status, json.loads(body)
            return resp.status, body.decode()


def spawn(command: list[str], socket_path: Path, notify_path: Path, env: dict[str, str],
          notify_owner: int | None = None, **popen: Any) -> Daemon:
    """`command` with NOTIFY_SOCKET bound at `notify_path` (owned by `notify_owner` when given, so a
    service user can send to it), its stderr kept."""
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    if notify_owner is not None:
        os.chown(notify_path, notify_owner, -1)
    process = subprocess.Popen(command, env={**env, "NOTIFY_SOCKET": str(notify_path)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)
    return Daemon(socket_path, process, notify)


def start_daemon(layout: Layout, environ: dict[str, str] | None = None) -> Daemon:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(environ or {})}
    for name in ("JOURNAL_STREAM", "WATCHDOG_PID", *(() if environ and "WATCHDOG_USEC" in environ
                                                     else ("WATCHDOG_USEC",))):
        env.pop(name, None)
    daemon = spawn([sys.executable, "-m", "gateway", "run", "--config", str(layout.config)], layout.socket_path,
                   layout.directory / "notify.sock", env, cwd=REPO)
    daemon.layout = layout
    return daemon


def stop_daemon(daemon: Daemon, timeout: float = 20.0) -> int:
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
        try:
            daemon.process.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            daemon.process.wait()
    while daemon._receive(0.0):   # what it said until it exited (STOPPING=1)
        pass
    if daemon.process.stderr is not None:
        daemon.log = daemon.process.stderr.read().decode(errors="replace")
        daemon.process.stderr.close()
    daemon.notify.close()
    return daemon.process.returncode


async def wait_for_socket(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_socket():
        if time.monotonic() > deadline:
            raise AssertionError(f"API socket {path} did not appear")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def device_on_the_daemon(layout: Layout, card: SoftEuicc, n: int = 1,
                               status: DeviceStatus | None = None) -> AsyncIterator[tuple[Daemon, Agent]]:
    """The daemon started on `layout` (READY, API socket up) and the agent of device `n` (identity
    dev<n>, its PSK) over CoAP/DTLS in front of `card`; after, the agent's transport is closed and
    the daemon stopped, which must exit 0."""
    daemon = start_daemon(layout)
    transport = CoapAgentTransport("127.0.0.1", layout.coap_port, card.eid, identity=f"dev{n}", psk=psk_of(n))
    try:
        daemon.wait_notify("READY=1")
        await wait_for_socket(layout.socket_path)
        yield daemon, Agent(status or Agent.make_status(card.eid), card, transport)
    finally:
        await transport.close()
        assert stop_daemon(daemon) == 0
