"""`ipae-gateway demo`: the whole chain on loopback, every part real, with a summary at the end.

Theory of operation. The demo starts, in one event loop and one temporary directory:

- a test PKI (hil.pki), the SM-DP+ peer (ES9+ over TLS) and the eIM peer (ESipa over TLS);
- Debian's mosquitto on a free loopback port, with a password file and a per-device ACL;
- the gateway daemon itself (gateway.service.supervisor.Daemon, as `ipae-gateway run` runs it)
  from a generated configuration: CoAP/DTLS on a free port, MQTT through that broker, the
  eIM as its northbound, the management API on a unix socket. Its engine is configured to
  give each eUICC the eIM's configuration (AddInitialEim), as a factory would;
- N device agents (hil.agent), each with a software eUICC (hil.euicc), odd devices over
  CoAP/DTLS and even ones over MQTT, waking every `--wake` seconds.

Then, for every device at once, the eIM orders a profile download (an activation code for an
order at the SM-DP+), an enable, a listProfileInfo and a delete (disable + delete in one
eUICC package: an enabled profile cannot be deleted). Each operation is done when the eIM
has its verified result; success is checked on the eUICC itself (installed, enabled, gone).
At the end every eUICC must have no pending notification left, and the gateway's audit log
must hold no failed operation (a failure inside the chain fails the demo even when the
eIM's orders went through). Progress lines go to stdout
(stderr with --json); with --json the last line is one JSON object.

The gateway is started by a `GatewayStarter` from the `GatewaySettings` the demo generated:
`ipae-gateway demo` runs it in-process; the .deb test starts the installed daemon as its
systemd unit does, with those settings as a drop-in over the installed configuration.

It never pretends: a missing part (engine, peers, eUICC, agent, mosquitto) stops it before it
starts, naming the part, and an operation that does not finish in time counts as failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import importlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

EXIT_FAILED = 1
EXIT_MISSING = 2
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "mosquitto")
GATEWAY_MQTT_USER = "ipae-gateway"
OPERATIONS = ("download", "enable", "listProfileInfo", "delete")
FAILED_RESULTS = frozenset({"failed", "error", "refused", "rejected-by-server"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=4, metavar="N", help="number of devices (default 4)")
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line on stdout")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="seconds allowed for each operation (default 120)")
    parser.add_argument("--wake", type=float, default=0.3, metavar="S",
                        help="seconds a device sleeps between wake-ups (default 0.3)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR and keep it (configuration, database, logs) instead of a temporary one")


# --- the parts ----------------------------------------------------------------------------------

PARTS = (
    ("gateway.core.engine", "the IPA engine"),
    ("gateway.service.supervisor", "the gateway daemon"),
    ("hil.pki", "the test PKI"),
    ("hil.euicc", "the software eUICC"),
    ("hil.agent.agent", "the device agent"),
    ("hil.agent.coap_transport", "the agent's CoAP/DTLS transport"),
    ("hil.agent.mqtt_transport", "the agent's MQTT transport"),
    ("hil.peers.smdpp", "the SM-DP+ peer"),
    ("hil.peers.eim", "the eIM peer"),
)


def missing_parts() -> list[str]:
    missing = []
    for module, what in PARTS:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{what} ({module}: {exc})")
    if _mosquitto() is None:
        missing.append("mosquitto (the MQTT broker: apt-get install mosquitto)")
    elif shutil.which("mosquitto_passwd") is None:
        missing.append("mosquitto_passwd (part of the mosquitto package)")
    return missing


def _hil(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def _mosquitto() -> str | None:
    for candidate in MOSQUITTO_PATHS:
        found = shutil.which(candidate)
        if found:
            return found
    return None


# --- results ------------------------------------------------------------------------------------


@dataclass
class DeviceRun:
    number: int
    eid: bytes
    link: str
    identity: str
    secret: bytes
    card: Any = None
    agent: Any = None
    exchanges: int = 0
    wakeups: int = 0
    done: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    agent_error: str | None = None


@dataclass
class Summary:
    devices: int
    operations_ordered: int
    operations_succeeded: int
    notifications_delivered: int
    notifications_pending: int
    round_trips: int
    seconds: float
    failures: list[str]
    webhook_events: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"devices": self.devices, "operations_ordered": self.operations_ordered,
                "operations_succeeded": self.operations_succeeded,
                "notifications_delivered": self.notifications_delivered,
                "notifications_pending": self.notifications_pending,
                "round_trips": self.round_trips, "seconds": round(self.seconds, 2), "failures": self.failures,
                "webhook_events": self.webhook_events}

    @property
    def ok(self) -> bool:
        return (self.operations_succeeded == self.operations_ordered == self.devices * len(OPERATIONS)
                and self.notifications_pending == 0 and not self.failures)


class Progress:
    def __init__(self, out: TextIO, started: float) -> None:
        self.out = out
        self.started = started

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=self.out, flush=True)


# --- helpers ------------------------------------------------------------------------------------


def eid(n: int) -> bytes:
    from gateway.config import eid_check_digits

    first = f"890490321234512345{900000000000 + n:012d}"
    return bytes.fromhex(first + eid_check_digits(first))


def free_tcp() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_pair() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as below:
            try:
                below.bind(("127.0.0.1", port - 1))   # aiocoap binds its DTLS server one below
            except OSError:
                continue
        return port
    raise RuntimeError("no free UDP port pair on 127.0.0.1")


@contextlib.asynccontextmanager
async def mosquitto_broker(directory: Path, users: list[tuple[str, str]],
                            acl: str, port: int | None = None) -> AsyncIterator[int]:
    from gateway.links.mqtt import write_password_file

    directory.mkdir(parents=True, exist_ok=True)
    password_file, acl_file = directory / "passwd", directory / "acl"
    write_password_file(password_file, users)
    acl_file.write_text(acl)
    port = port or free_tcp()
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join([
        "per_listener_settings false", f"user {getpass.getuser()}", "allow_anonymous false",
        f"password_file {password_file}", f"acl_file {acl_file}", "persistence false",
        f"log_dest file {directory / 'mosquitto.log'}", "log_type error", "log_type warning",
        f"listener {port} 127.0.0.1"]) + "\n")
    mosquitto = _mosquitto()
    assert mosquitto is not None
    proc = await asyncio.create_subprocess_exec(mosquitto, "-c", str(conf), stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                if proc.returncode is not None or time.monotonic() > deadline:
                    err = (await proc.stderr.read()).decode() if proc.stderr else ""
                    raise RuntimeError(f"mosquitto did not start: {err.strip()}") from None
                await asyncio.sleep(0.05)
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@dataclass
class GatewaySettings:
    """What the generated gateway configuration names: its links, its eIM and its devices."""

    coap_port: int
    mqtt_port: int
    mqtt_password: str
    eim_host: str
    eim_port: int
    ca_file: Path
    devices: list[DeviceRun]
    gateway_id: str = "demo"
    webhook_url: str | None = None
    webhook_secret: str | None = None
    eim_id: str | None = None
    eim_certificate_file: Path | None = None
    eim_tls_trust_file: Path | None = None
    ci_pkid: bytes | None = None

    def fleet_toml(self) -> str:
        return "".join(f'[[device]]\neid = "{d.eid.hex()}"\nlink = "{d.link}"\nidentity = "{d.identity}"\n'
                       f'name = "{self.gateway_id} sensor {d.number}"\n\n' for d in self.devices)

    def credentials_toml(self) -> str:
        psks = "".join(f'{d.identity} = "{d.secret.hex()}"\n' for d in self.devices if d.link == "coap")
        hooks = (f'[webhooks]\nhmac_secret = "{self.webhook_secret}"\n\n'
                 if self.webhook_url and self.webhook_secret else "")
        return f'[mqtt]\npassword = "{self.mqtt_password}"\n\n{hooks}[dtls_psk]\n{psks}'

    def config_toml(self, *, state_dir: str | None = "state", api_socket: Path | None = None) -> str:
        """gateway.toml, or a drop-in over an installed one (state_dir and api_socket None: keep its own)."""
        initial_eim = "" if self.eim_certificate_file is None else (
            f'\n[northbound.initial_eim]\nenabled = true\ncertificate_file = "{self.eim_certificate_file}"\n'
            + (f'tls_trust_file = "{self.eim_tls_trust_file}"\n' if self.eim_tls_trust_file is not None else "")
            + (f'ci_pkid = "{self.ci_pkid.hex()}"\n' if self.ci_pkid is not None else ""))
        webhooks = (f'\n[policies.webhooks]\nurls = ["{self.webhook_url}"]\nallow_plain_lab = true\n'
                    if self.webhook_url and self.webhook_secret else "")
        state = f'state_dir = "{state_dir}"' if state_dir is not None else ""
        api = f'\n[api]\nsocket_path = "{api_socket}"\n' if api_socket is not None else ""
        eim_id = f'eim_id = "{self.eim_id}"' if self.eim_id is not None else ""
        return f"""# generated by ipae-gateway demo
[gateway]
gateway_id = "{self.gateway_id}"
{state}
log_level = "warning"
shutdown_grace_s = 5.0

[northbound]
eim_fqdn = "{self.eim_host}"
eim_port = {self.eim_port}
eim_ca_file = "{self.ca_file}"
{eim_id}
{initial_eim}
[links.coap]
listen = "127.0.0.1"
port = {self.coap_port}

[links.mqtt]
enabled = true
broker_host = "127.0.0.1"
broker_port = {self.mqtt_port}
tls = false
allow_plain_lab = true
username = "{GATEWAY_MQTT_USER}"
{api}
[device_defaults]
poll_interval_s = 5.0
{webhooks}"""

    def write(self, directory: Path) -> Path:
        """A whole configuration directory (gateway.toml, devices.d/, a 0600 credentials file)."""
        (directory / "devices.d").mkdir(parents=True, exist_ok=True)
        (directory / "devices.d" / f"{self.gateway_id}.toml").write_text(self.fleet_toml())
        creds = directory / "credentials.toml"
        creds.write_text(self.credentials_toml())
        os.chmod(creds, 0o600)
        config = directory / "gateway.toml"
        config.write_text(self.config_toml(api_socket=directory / "api.sock"))
        return config


class RunningGateway(Protocol):
    """The gateway under demonstration, however it was started."""

    api_socket: Path

    async def audit_records(self) -> list[dict[str, Any]]:
        """Its audit log, as the API's /v1/audit gives it."""

    async def round_trips(self) -> int:
        """The round trips it counted."""


GatewayStarter = Callable[[Path, GatewaySettings], contextlib.AbstractAsyncContextManager[RunningGateway]]


class _InProcessGateway:
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.api_socket = daemon.config.api.socket_path

    async def audit_records(self) -> list[dict[str, Any]]:
        records = await self.daemon.astore.run(lambda st: st.audit.query())
        return [r.to_json() for r in records]

    async def round_trips(self) -> int:
        return int(sum(self.daemon.metrics.round_trips.values.values()))


@contextlib.asynccontextmanager
async def in_process_gateway(directory: Path, settings: GatewaySettings) -> AsyncIterator[RunningGateway]:
    """The daemon of `ipae-gateway run` in this event loop, from a configuration written to `directory`."""
    from gateway.service.supervisor import Daemon

    daemon = Daemon(settings.write(directory))
    task = asyncio.create_task(daemon.run(), name="gateway")
    try:
        await _wait_ready(daemon, task)
        # a device closing its DTLS session sends an alert aiocoap logs as a warning: not news here
        logging.getLogger("coap-server").setLevel(logging.ERROR)
        yield _InProcessGateway(daemon)
    finally:
        await _stop_gateway(daemon, task)


# --- the demo -----------------------------------------------------------------------------------


async def run_demo(count: int, *, out: TextIO, timeout_s: float, wake_s: float, workdir: Path,
                   start_gateway: GatewayStarter = in_process_gateway) -> Summary:
    """The demo; `start_gateway` runs the gateway (default: in this process, configured in workdir/etc)."""
    from gateway.links.base import DeviceCredential, DeviceRegistry
    from gateway.links.mqtt import MqttConfig, acl_text
    # hil/ (test peers, agent, eUICC) is not part of the typed gateway package: import it untyped
    Agent = _hil("hil.agent.agent", "Agent")
    CoapAgentTransport = _hil("hil.agent.coap_transport", "CoapAgentTransport")
    MqttAgentTransport = _hil("hil.agent.mqtt_transport", "MqttAgentTransport")
    SoftEuicc = _hil("hil.euicc", "SoftEuicc")
    EimServer = _hil("hil.peers.eim", "EimServer")
    SmdppServer = _hil("hil.peers.smdpp", "SmdppServer")
    generate_pki = _hil("hil.pki", "generate_pki")

    started = time.monotonic()
    progress = Progress(out, started)
    devices = [DeviceRun(n, eid(n), "coap" if n % 2 else "mqtt", f"demo-{n}",
                         os.urandom(16) if n % 2 else os.urandom(12).hex().encode()) for n in range(1, count + 1)]
    failures: list[str] = []
    progress(f"{count} devices ({sum(d.link == 'coap' for d in devices)} CoAP/DTLS, "
             f"{sum(d.link == 'mqtt' for d in devices)} MQTT); work directory {workdir}")
    pki = await asyncio.to_thread(generate_pki, workdir / "pki")
    gateway_password = os.urandom(12).hex()
    registry = DeviceRegistry(DeviceCredential(d.identity, d.eid, d.secret) for d in devices if d.link == "mqtt")
    users = [(GATEWAY_MQTT_USER, gateway_password)] + [(d.identity, d.secret.decode()) for d in devices
                                                       if d.link == "mqtt"]

    async with contextlib.AsyncExitStack() as stack:
        smdp = await stack.enter_async_context(SmdppServer(pki))
        eim = await stack.enter_async_context(EimServer(pki, smdp_url=smdp.url))
        progress(f"SM-DP+ at {smdp.url}, eIM {eim.service.eim_id} at {eim.url}")
        mqtt_port = await stack.enter_async_context(
            mosquitto_broker(workdir / "broker", users, acl_text(GATEWAY_MQTT_USER, registry)))
        progress(f"mosquitto on 127.0.0.1:{mqtt_port}")
        webhook_secret = os.urandom(24).hex()
        receiver = await stack.enter_async_context(_WebhookReceiver(webhook_secret.encode()))
        progress(f"webhook receiver on {receiver.url}")
        eim_host, eim_port = eim.fqdn.rsplit(":", 1)
        coap_port = free_udp_pair()
        settings = GatewaySettings(coap_port=coap_port, mqtt_port=mqtt_port, mqtt_password=gateway_password,
                                   eim_host=eim_host, eim_port=int(eim_port), ca_file=Path(pki.tls_trust_path),
                                   devices=devices, webhook_url=receiver.url, webhook_secret=webhook_secret,
                                   eim_id=eim.service.eim_id, eim_certificate_file=Path(pki.eim_sign.cert_path),
                                   eim_tls_trust_file=Path(pki.tls_ca.cert_path), ci_pkid=pki.ci_pkid)
        gateway = await stack.enter_async_context(start_gateway(workdir / "etc", settings))
        progress(f"gateway up: CoAP/DTLS on 127.0.0.1:{coap_port}, MQTT via the broker, "
                 f"API on {gateway.api_socket}")

        stop_agents = asyncio.Event()
        agent_tasks = []
        for d in devices:
            d.card = SoftEuicc(pki, d.eid)
            # the eIM knows each eUICC's certificate (from its EUM), as an operator's eIM would
            eim.service.register(d.eid, euicc_certificate=d.card.identity.certificate_der,
                                 eum_certificate=d.card.identity.eum_certificate_der)
            transport: Any
            if d.link == "coap":
                transport = CoapAgentTransport("127.0.0.1", coap_port, d.eid, identity=d.identity, psk=d.secret)
            else:
                transport = MqttAgentTransport(MqttConfig(host="127.0.0.1", port=mqtt_port, username=d.identity,
                                                          password=d.secret.decode(),
                                                          client_id=f"agent-{d.identity}"), d.eid)
            stack.push_async_callback(transport.close)
            d.agent = Agent(Agent.make_status(d.eid), d.card, _Counting(transport, d))
            agent_tasks.append(asyncio.create_task(_wake_loop(d, stop_agents, wake_s, progress)))

        results = await asyncio.gather(*(_operate(d, eim, smdp, timeout_s, progress) for d in devices))
        for d, (ordered, succeeded) in zip(devices, results):
            d.done = succeeded
            failures.extend(f"device {d.number}: {p}" for p in d.problems)
        # let the last notifications go out (delete/disable) before stopping the agents
        deadline = time.monotonic() + min(timeout_s, 30.0)
        while time.monotonic() < deadline and any(d.card.notifications for d in devices):
            await asyncio.sleep(0.1)
        expected_events = sum(4 for d in devices if all(d.done.get(op) for op in OPERATIONS))
        while time.monotonic() < deadline and len(receiver.events) < expected_events:
            await asyncio.sleep(0.1)   # webhooks are delivered from the outbox, a moment later
        stop_agents.set()
        await asyncio.gather(*agent_tasks)
        # what the gateway itself recorded as failed (its audit log) fails the demo too
        number = {d.eid.hex(): d.number for d in devices}
        for r in await gateway.audit_records():
            if r["result"] in FAILED_RESULTS:
                where = f"device {number[r['eid']]}" if r["eid"] in number else "gateway"
                detail = r["detail"]
                failures.append(f"{where}: the gateway recorded {r['operation']} {r['result']}"
                                f"{': ' + str(detail.get('detail', detail)) if detail else ''}")
        round_trips_gateway = await gateway.round_trips()
        delivered = len(smdp.service.notifications) + sum(len(dev.notifications) for dev in eim.service.devices.values())
        pending = sum(len(d.card.notifications) for d in devices)
        for d in devices:
            if d.card.notifications:
                failures.append(f"device {d.number}: {len(d.card.notifications)} notifications still on the eUICC")
        ordered_total = sum(r[0] for r in results)
        succeeded_total = sum(sum(r[1].values()) for r in results)
        failures.extend(receiver.problems)
        summary = Summary(count, ordered_total, succeeded_total, delivered, pending,
                          max(round_trips_gateway, sum(d.exchanges for d in devices)),
                          time.monotonic() - started, failures, len(receiver.events))
    return summary


class _WebhookReceiver:
    """An HTTP endpoint receiving the gateway's webhooks, checking each signature."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.events: dict[str, dict[str, Any]] = {}
        self.problems: list[str] = []
        self.url = ""
        self._runner: Any = None

    async def __aenter__(self) -> _WebhookReceiver:
        from aiohttp import web

        from gateway.policy.events import SIGNATURE_HEADER, verify_signature

        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            try:
                verify_signature(self.secret, request.headers.get(SIGNATURE_HEADER), body, now=time.time())
            except Exception as exc:   # a receiver refuses, and the demo reports it
                self.problems.append(f"webhook refused: {exc}")
                return web.Response(status=401)
            event = json.loads(body)
            self.events[event["id"]] = event
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = [a for a in self._runner.addresses if isinstance(a, tuple)][0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


class _Counting:
    """An agent transport that counts round trips as they happen (for per-operation progress)."""

    def __init__(self, inner: Any, device: DeviceRun) -> None:
        self._inner = inner
        self._device = device

    def exchange(self, payload: bytes, *args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        self._device.exchanges += 1
        return self._inner.exchange(payload, *args, **kwargs)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._inner.close()


async def _wait_ready(daemon: Any, task: asyncio.Task[int]) -> None:
    for _ in range(600):
        if task.done():
            code = task.result()
            raise RuntimeError(f"the gateway stopped at start-up (exit code {code}); see the log above")
        if getattr(daemon, "api", None) is not None:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the gateway did not become ready in 30 s")


async def _stop_gateway(daemon: Any, task: asyncio.Task[int]) -> None:
    daemon.stop_event.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)


async def _wake_loop(d: DeviceRun, stop: asyncio.Event, wake_s: float, progress: Callable[[str], None]) -> None:
    last_problem = ""
    while not stop.is_set():
        try:
            report = await d.agent.run_session()
        except Exception as exc:   # the agent itself broke: this device can do nothing more
            d.agent_error = f"the device agent failed: {type(exc).__name__}: {exc}"
            progress(f"device {d.number} ({d.link}): {d.agent_error}")
            return
        d.wakeups += 1
        problem = report.transport_error or (f"gateway error {report.error.code}: {report.error.text}"
                                             if report.error is not None else "")
        if problem and problem != last_problem:
            progress(f"device {d.number} ({d.link}): {problem}")
        last_problem = problem
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wake_s)


async def _operate(d: DeviceRun, eim: Any, smdp: Any, timeout_s: float,
                   progress: Callable[[str], None]) -> tuple[int, dict[str, bool]]:
    iccid_to_str = _hil("hil.peers.common", "iccid_to_str")
    order = smdp.service.order_profile(eid=d.eid)
    iccid = iccid_to_str(order.iccid)
    ordered = 0
    succeeded: dict[str, bool] = {}
    requests: list[tuple[str, Callable[[], Any], Callable[[], str | None]]] = [
        ("download", lambda: eim.service.queue_profile_download(
            d.eid, {"activationCode": f"1${smdp.address}${order.matching_id}"}),
         lambda: None if _profile(d.card, order.iccid) is not None else "the profile is not installed"),
        ("enable", lambda: eim.service.queue_euicc_package(d.eid, {"psmo": [{"op": "enable", "iccid": iccid}]}),
         lambda: None if getattr(_profile(d.card, order.iccid), "state", None) == "enabled"
         else "the profile is not enabled"),
        ("listProfileInfo", lambda: eim.service.queue_euicc_package(d.eid, {"psmo": [{"op": "listProfileInfo"}]}),
         lambda: None),
        ("delete", lambda: eim.service.queue_euicc_package(
            d.eid, {"psmo": [{"op": "disable", "iccid": iccid}, {"op": "delete", "iccid": iccid}]}),
         lambda: None if _profile(d.card, order.iccid) is None else "the profile is still on the eUICC"),
    ]
    for name, order_it, check in requests:
        began = time.monotonic()
        exchanges_before = d.exchanges
        try:
            package = order_it()
        except Exception as exc:   # the peer refused the order: report it, never crash the demo
            d.problems.append(f"{name}: the eIM refused the order: {exc}")
            progress(f"device {d.number} ({d.link}): {name} NOT ordered: {exc}")
            break
        ordered += 1
        while package.pending and time.monotonic() - began < timeout_s and d.agent_error is None:
            await asyncio.sleep(0.05)
        problem = None
        if d.agent_error is not None and package.pending:
            problem = d.agent_error
        elif package.pending:
            problem = f"no result after {timeout_s:.0f} s (package {package.state})"
        elif package.state != "done":
            problem = f"the eIM recorded {package.state}: {json.dumps(package.result, default=str)[:300]}"
        else:
            problem = check()
        succeeded[name] = problem is None
        took = time.monotonic() - began
        if problem is None:
            progress(f"device {d.number} ({d.link}) {d.eid.hex()}: {name} ok in {took:.1f}s "
                     f"({d.exchanges - exchanges_before} round trips)")
        else:
            d.problems.append(f"{name}: {problem}")
            progress(f"device {d.number} ({d.link}): {name} FAILED: {problem}")
            break
    return ordered, succeeded


def _profile(card: Any, iccid: bytes) -> Any:
    return next((p for p in card.profiles if p.iccid == iccid), None)


def show_summary(s: Summary, out: TextIO) -> None:
    print("", file=out)
    print(f"devices:                 {s.devices}", file=out)
    print(f"operations ordered:      {s.operations_ordered}", file=out)
    print(f"operations succeeded:    {s.operations_succeeded}", file=out)
    print(f"notifications delivered: {s.notifications_delivered} ({s.notifications_pending} left on eUICCs)",
          file=out)
    print(f"round trips:             {s.round_trips}", file=out)
    print(f"webhook events:          {s.webhook_events} (signed, verified by the receiver)", file=out)
    print(f"seconds:                 {s.seconds:.1f}", file=out)
    for f in s.failures:
        print(f"FAILED: {f}", file=out)
    print("demo " + ("succeeded" if s.ok else "FAILED"), file=out)


def run(args: argparse.Namespace) -> int:
    if args.devices < 1:
        print("error: --devices must be at least 1", file=sys.stderr)
        return EXIT_FAILED
    missing = missing_parts()
    if missing:
        print("demo cannot run, missing: " + "; ".join(missing), file=sys.stderr)
        if args.json:
            print(json.dumps({"error": "missing parts", "missing": missing}))
        return EXIT_MISSING
    out = sys.stderr if args.json else sys.stdout
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        workdir, cleanup = args.keep, False
    else:
        workdir, cleanup = Path(tempfile.mkdtemp(prefix="ipae-demo-")), True
    try:
        summary = asyncio.run(run_demo(args.devices, out=out, timeout_s=args.timeout, wake_s=args.wake,
                                       workdir=workdir))
    except Exception as exc:   # a part failed to start: say which, do not pretend
        print(f"demo FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return EXIT_FAILED
    finally:
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)
    show_summary(summary, out)
    if args.json:
        print(json.dumps(summary.to_json(), sort_keys=True))
    return 0 if summary.ok else EXIT_FAILED
