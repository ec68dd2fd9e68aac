"""The whole gateway seen from outside: peers, broker and devices here, the gateway a process.

Theory of operation. `fleet()` starts, in the test's event loop and one short temporary
directory, what `ipae-gateway demo` starts, with the demo's own start-up code (its PKI,
SM-DP+ and eIM peers, mosquitto with a per-device ACL, the generated gateway configuration),
except the gateway itself: that runs as a separate process (`GatewayProcess`, running
`reliability_gateway.py`: the `ipae-gateway run` daemon with the demo's engine set-up) so a
test can SIGKILL it and start it again while peers, broker and devices keep running.

Each device is the reference agent (hil.agent) with a software eUICC whose NVM is a state
file. The eUICC is wrapped (`TracedEuicc`) to keep a log of what the card itself did: every
LoadEuiccPackage it received with the counter and what it answered, and every notification
or package result it created. `check_ledger` compares that log with what the eIM and the
SM-DP+ recorded and returns every discrepancy in words (empty: nothing lost, nothing twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.links.base import DeviceCredential, DeviceRegistry
from gateway.links.mqtt import MqttConfig, acl_text
from gateway.service import demo
from gateway.spec import codec, tlv
from gateway.store import Store
from hil.agent.agent import Agent
from hil.agent.coap_transport import CoapAgentTransport
from hil.agent.mqtt_transport import MqttAgentTransport
from hil.euicc import SoftEuicc
from hil.euicc import state as nvm
from hil.peers.common import iccid_to_str
from hil.peers.eim import EimServer
from hil.peers.smdpp import SmdppServer
from hil.pki import RspPki, generate_pki

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TAG_LOAD_EUICC_PACKAGE = 0xBF51
RESULT_KINDS_OF_A_RUN = ("euiccPackageResultSigned", "euiccPackageErrorSigned")


# --- the eUICC and its log ------------------------------------------------------------------


@dataclass
class LoadRecord:
    counter: int
    transaction_id: bytes | None
    outcome: str          # EuiccPackageResult alternative the card answered
    accepted: bool        # the card took the counter (ran the package)


class TracedEuicc(SoftEuicc):
    """A software eUICC that logs what it did, seen from the card (not from the gateway)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.loads: list[LoadRecord] = []
        self.created: dict[int, nvm.Notification] = {}   # every notification/result it ever created
        super().__init__(*args, **kwargs)
        self._note_created()

    def _es10(self, request: bytes) -> bytes:
        counters_before = {e.eim_id: e.counter for e in self.state.eims}
        response = super()._es10(request)
        try:
            tag = tlv.read_tlv(request).tag
        except Exception:   # noqa: BLE001 - a malformed request is the card's business, not the log's
            tag = 0
        if tag == TAG_LOAD_EUICC_PACKAGE:
            signed = codec.decode("EuiccPackageRequest", request)["euiccPackageSigned"]
            kind, _ = codec.decode("EuiccPackageResult", response)
            before = counters_before.get(signed["eimId"])
            eim = self.state.eim(signed["eimId"])
            accepted = eim is not None and before is not None and eim.counter == signed["counterValue"] != before
            self.loads.append(LoadRecord(signed["counterValue"], signed.get("eimTransactionId"), kind, accepted))
        self._note_created()
        return response

    def _note_created(self) -> None:
        for note in self.state.notifications:
            self.created.setdefault(note.seq_number, note)


# --- devices --------------------------------------------------------------------------------


@dataclass
class Device:
    run: demo.DeviceRun
    card: TracedEuicc
    agent: Any
    transport: Any
    task: asyncio.Task[None] | None = None
    sessions: int = 0
    transport_errors: int = 0
    gateway_errors: int = 0
    agent_error: str | None = None
    packages: list[Any] = field(default_factory=list)   # eIM Package objects ordered for it

    @property
    def eid(self) -> bytes:
        return self.run.eid


# --- the gateway process --------------------------------------------------------------------


class GatewayProcess:
    """`reliability_gateway.py` as a child process: start, wait for READY, SIGKILL, SIGTERM."""

    def __init__(self, config: Path, eim_json: Path, log_path: Path, notify_path: Path) -> None:
        self.config = config
        self.eim_json = eim_json
        self.log_path = log_path
        self.notify_path = notify_path
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.kills = 0
        self.ready = False
        self._notify: socket.socket | None = None

    async def start(self) -> None:
        assert self.proc is None
        if self._notify is None:
            self.notify_path.unlink(missing_ok=True)
            self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._notify.bind(str(self.notify_path))
            self._notify.setblocking(False)
        self._drain_notify()
        self.ready = False
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "PYTHONUNBUFFERED": "1",
               "IPAE_TEST_PARENT_PID": str(os.getpid())}
        for name in ("JOURNAL_STREAM", "WATCHDOG_PID", "WATCHDOG_USEC"):
            env.pop(name, None)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(HERE / "reliability_gateway.py"), str(self.config), str(self.eim_json),
                cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        self.starts += 1

    def _drain_notify(self) -> list[str]:
        got = []
        assert self._notify is not None
        while True:
            try:
                got.append(self._notify.recv(4096).decode(errors="replace"))
            except BlockingIOError:
                return got

    async def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self.ready:
            if any("READY=1" in m for m in self._drain_notify()):
                self.ready = True
                return
            if self.proc.returncode is not None:
                raise AssertionError(f"the gateway exited with {self.proc.returncode} before READY; "
                                     f"log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway was not READY within {timeout} s; log:\n{self.log_tail()}")
            await asyncio.sleep(0.02)

    async def kill(self) -> int:
        """SIGKILL: no cleanup, no flush, like a power cut of the gateway."""
        assert self.proc is not None
        proc, self.proc = self.proc, None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        code = await proc.wait()
        self.kills += 1
        return code

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (the daemon drains); SIGKILL if it does not end in time."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
        return await proc.wait()

    def close(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


# --- the fleet ------------------------------------------------------------------------------


@dataclass
class Fleet:
    workdir: Path
    pki: RspPki
    smdp: SmdppServer
    eim: EimServer
    gateway: GatewayProcess
    devices: list[Device]
    coap_port: int
    wake_s: float
    agent_timeout_s: float
    stop_devices: asyncio.Event = field(default_factory=asyncio.Event)

    def coap_transport(self, d: demo.DeviceRun) -> CoapAgentTransport:
        return CoapAgentTransport("127.0.0.1", self.coap_port, d.eid, identity=d.identity, psk=d.secret,
                                  block_timeout=max(1.0, self.agent_timeout_s / 4), block_retries=3,
                                  request_timeout=self.agent_timeout_s)

    def start_devices(self) -> None:
        for d in self.devices:
            d.task = asyncio.create_task(self._wake_loop(d), name=f"device {d.run.number}")

    async def stop_all_devices(self) -> None:
        self.stop_devices.set()
        await asyncio.gather(*(d.task for d in self.devices if d.task is not None))

    async def _wake_loop(self, d: Device) -> None:
        while not self.stop_devices.is_set():
            try:
                report = await d.agent.run_session()
            except Exception as exc:   # noqa: BLE001 - the agent itself broke: this device is done
                d.agent_error = f"{type(exc).__name__}: {exc}"
                return
            d.sessions += 1
            if report.error is not None:
                d.gateway_errors += 1
            if report.transport_error is not None:
                d.transport_errors += 1
                if d.run.link == "coap":
                    # a sensor waking again starts a new DTLS session (the old one died with the gateway)
                    old, d.agent.transport = d.agent.transport, self.coap_transport(d.run)
                    d.transport = d.agent.transport
                    await old.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_devices.wait(), self.wake_s)

    # --- the workload ------------------------------------------------------------------------

    def order_round(self, d: Device, profile_size: int) -> list[Any]:
        """download -> enable -> listProfileInfo -> disable+delete, queued at once (the eIM runs them in order)."""
        order = self.smdp.service.order_profile(eid=d.eid, size=profile_size)
        iccid = iccid_to_str(order.iccid)
        svc = self.eim.service
        packages = [
            svc.queue_profile_download(d.eid, {"activationCode": f"1${self.smdp.address}${order.matching_id}"}),
            svc.queue_euicc_package(d.eid, {"psmo": [{"op": "enable", "iccid": iccid}]}),
            svc.queue_euicc_package(d.eid, {"psmo": [{"op": "listProfileInfo"}]}),
            svc.queue_euicc_package(d.eid, {"psmo": [{"op": "disable", "iccid": iccid},
                                                     {"op": "delete", "iccid": iccid}]}),
        ]
        d.packages.extend(packages)
        return packages

    def pending_packages(self) -> list[tuple[Device, Any]]:
        return [(d, p) for d in self.devices for p in d.packages if p.pending]

    def settled(self) -> bool:
        """Nothing left to do anywhere: every package answered, every eUICC clean."""
        return not self.pending_packages() and all(
            not d.card.notifications and not d.card.session_open for d in self.devices)


def make_eid(n: int) -> bytes:
    return demo.eid(n)


@contextlib.asynccontextmanager
async def fleet(count: int, *, wake_s: float = 0.3, agent_timeout_s: float = 6.0,
                keep: Path | None = None) -> AsyncIterator[Fleet]:
    """Everything but the gateway running; `Fleet.gateway` is started by the test."""
    workdir = keep if keep is not None else Path(tempfile.mkdtemp(prefix="ipae-rel-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs = [demo.DeviceRun(n, make_eid(n), "coap" if n % 2 else "mqtt", f"rel-{n}",
                           os.urandom(16) if n % 2 else os.urandom(12).hex().encode()) for n in range(1, count + 1)]
    try:
        pki = await asyncio.to_thread(generate_pki, workdir / "pki")
        password = os.urandom(12).hex()
        registry = DeviceRegistry(DeviceCredential(r.identity, r.eid, r.secret) for r in runs if r.link == "mqtt")
        users = [(demo.GATEWAY_MQTT_USER, password)] + [(r.identity, r.secret.decode()) for r in runs
                                                         if r.link == "mqtt"]
        async with contextlib.AsyncExitStack() as stack:
            smdp = await stack.enter_async_context(SmdppServer(pki))
            eim = await stack.enter_async_context(EimServer(pki, smdp_url=smdp.url))
            mqtt_port = await stack.enter_async_context(
                demo.mosquitto_broker(workdir / "broker", users, acl_text(demo.GATEWAY_MQTT_USER, registry)))
            eim_host, eim_port = eim.fqdn.rsplit(":", 1)
            coap_port = demo.free_udp_pair()
            config = demo.GatewaySettings(coap_port=coap_port, mqtt_port=mqtt_port, mqtt_password=password,
                                          eim_host=eim_host, eim_port=int(eim_port),
                                          ca_file=Path(pki.tls_trust_path), devices=runs,
                                          gateway_id="reliability").write(workdir / "etc")
            eim_json = workdir / "etc" / "eim.json"
            eim_json.write_text(json_dumps({
                "eim_id": eim.service.eim_id, "fqdn": eim.fqdn,
                "configuration": codec.encode("EimConfigurationData",
                                              eim.service.own_configuration_data(indirect_download=False)).hex(),
                "exchange_timeout_s": max(1.0, agent_timeout_s - 2.0)}))
            gateway = GatewayProcess(config, eim_json, workdir / "gateway.log", workdir / "notify.sock")
            stack.callback(gateway.close)
            stack.push_async_callback(gateway.stop)
            devices: list[Device] = []
            (workdir / "cards").mkdir(exist_ok=True)
            the_fleet = Fleet(workdir, pki, smdp, eim, gateway, devices, coap_port, wake_s, agent_timeout_s)
            for r in runs:
                card = TracedEuicc(pki, r.eid, state_path=workdir / "cards" / f"{r.eid.hex()}.json")
                eim.service.register(r.eid, euicc_certificate=card.identity.certificate_der,
                                     eum_certificate=card.identity.eum_certificate_der)
                transport: Any
                if r.link == "coap":
                    transport = the_fleet.coap_transport(r)
                else:
                    transport = MqttAgentTransport(MqttConfig(host="127.0.0.1", port=mqtt_port, username=r.identity,
                                                              password=r.secret.decode(),
                                                              client_id=f"agent-{r.identity}"), r.eid,
                                                   timeout=agent_timeout_s)
                agent = Agent(Agent.make_status(r.eid), card, transport)
                device = Device(r, card, agent, transport)
                devices.append(device)
                stack.push_async_callback(_close_transport, device)
            stack.push_async_callback(the_fleet.stop_all_devices)
            yield the_fleet
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


async def _close_transport(d: Device) -> None:
    await d.agent.transport.close()


def json_dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _installed(pir: bytes) -> bool:
    data = codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"]
    return bool(data["finalResult"][0] == "successResult")


def check_gateway_store(db_path: Path) -> tuple[list[str], dict[str, int]]:
    """What the stopped gateway left in its database: intact, and nothing half-done."""
    problems: list[str] = []
    with Store.open(db_path) as store:
        store.check()   # PRAGMA quick_check: StoreCorrupt if the SIGKILLs broke the file
        stats = store.stats()
        states = Counter(s.state for s in store.sessions.list())
        open_entries = [e for e in store.inbox.entries() if e.state != "done"]
    for e in open_entries:
        problems.append(f"gateway inbox entry {e.key} of {e.eid.hex()} left {e.state}")
    if stats["outbox_pending"]:
        problems.append(f"{stats['outbox_pending']} gateway outbox entries never delivered")
    figures = {"db_bytes": stats["db_bytes"], "audit_records": stats["audit_last_id"],
               **{f"gateway_sessions_{state}": n for state, n in states.items()}}
    return problems, figures


# --- the ledger -------------------------------------------------------------------------------


def check_ledger(devices: list[Device], smdp: SmdppServer, eim: EimServer
                 ) -> tuple[list[str], list[str], dict[str, int]]:
    """(every discrepancy between the eUICCs' own logs and the peers' records -- a lost or
    duplicated result or notification, an eUICC left in an RSP session --, resources left
    held on the eUICCs, the figures)."""
    problems: list[str] = []
    leaks: list[str] = []
    figures: Counter[str] = Counter()
    smdp_ders = {n.der for n in smdp.service.notifications}
    orders = {o.matching_id: o for o in smdp.service.orders.values()}
    svc = eim.service
    eim_result_ders = {r.der for dev in svc.devices.values() for r in dev.results if r.der}
    eim_note_ders = {n.der for dev in svc.devices.values() for n in dev.notifications} | {
        n.der for n in svc.unassigned}
    for d in devices:
        name = f"device {d.run.number} ({d.run.link}, {d.eid.hex()})"
        if d.agent_error is not None:
            problems.append(f"{name}: the agent failed: {d.agent_error}")
        record = svc.devices.get(d.eid)
        if record is None:
            problems.append(f"{name}: unknown to the eIM")
            continue
        # 1. every package answered, by exactly one result
        by_package = Counter(r.package_id for r in record.results)
        for p in record.packages:
            figures[f"packages_{p.state}"] += 1
            if p.state == "failed":
                figures[f"failed_{p.kind}"] += 1
            if p.pending:
                problems.append(f"{name}: LOST RESULT: package {p.package_id} ({p.kind}, counter {p.counter}) "
                                f"is still {p.state} after {p.deliveries} deliveries")
            elif by_package[p.package_id] != 1:
                kinds = [r.kind for r in record.results if r.package_id == p.package_id]
                problems.append(f"{name}: package {p.package_id} ({p.kind}) has {by_package[p.package_id]} "
                                f"results at the eIM: {kinds}")
        for r in record.results:
            if r.package_id is None:
                problems.append(f"{name}: a {r.kind} result the eIM could not tie to a package: {r.detail}")
            if not r.verified and r.kind in RESULT_KINDS_OF_A_RUN + ("profileDownloadTriggerResult",):
                problems.append(f"{name}: a {r.kind} result failed verification at the eIM: {r.detail}")
        figures["eim_results"] += len(record.results)
        # 2. each eUICC package run once, and its run is what the eIM recorded
        sent = Counter(load.counter for load in d.card.loads)
        accepted = Counter(load.counter for load in d.card.loads if load.accepted)
        figures["load_euicc_package_runs"] += sum(accepted.values())
        for counter, times in sent.items():
            if times > 1:
                outcomes = [load.outcome for load in d.card.loads if load.counter == counter]
                problems.append(f"{name}: LoadEuiccPackage with counter {counter} reached the eUICC {times} "
                                f"times (answers {outcomes}): a package sent again")
        for counter, times in accepted.items():
            if times > 1:
                problems.append(f"{name}: the eUICC ran counter {counter} {times} times")
        for p in record.packages:
            if p.kind != "euiccPackageRequest" or p.pending or p.counter is None:
                continue
            kinds = [r.kind for r in record.results if r.package_id == p.package_id]
            ran = accepted[p.counter] > 0
            if ran and not any(k == "euiccPackageResultSigned" for k in kinds):
                problems.append(f"{name}: LOST RESULT: the eUICC ran package {p.package_id} (counter {p.counter}) "
                                f"but the eIM recorded {kinds}")
            if not ran and any(k in RESULT_KINDS_OF_A_RUN for k in kinds) and sent[p.counter] == 0:
                problems.append(f"{name}: the eIM has an eUICC result for package {p.package_id} that never "
                                f"reached the eUICC")
        # 3. downloads: each order installed at most once, and as the eIM was told
        installs = Counter(n.iccid for n in d.card.created.values()
                           if n.event == "install" and n.iccid and _installed(n.der))
        for iccid, times in installs.items():
            if times > 1:
                problems.append(f"{name}: profile {iccid.hex()} installed {times} times")
        figures["profiles_installed"] += len(installs)
        for p in record.packages:
            if p.kind != "profileDownloadTriggerRequest" or p.pending:
                continue
            order = orders.get(str(p.request.get("activationCode", "")).rsplit("$", 1)[-1])
            if order is None:
                continue
            figures["downloads_checked_against_the_euicc"] += 1
            if p.state == "done" and not installs[order.iccid]:
                problems.append(f"{name}: the eIM was told download package {p.package_id} succeeded, but the "
                                f"eUICC never installed {order.iccid.hex()}")
            if p.state != "done" and installs[order.iccid]:
                problems.append(f"{name}: LOST RESULT: the eUICC installed {order.iccid.hex()} but the eIM was "
                                f"told download package {p.package_id} {p.state}")
        # 4. every notification and result the eUICC created reached a server and left the eUICC
        for seq, note in sorted(d.card.created.items()):
            figures[f"created_{note.event}"] += 1
            if note.event == "euiccPackageResult":
                if note.der not in eim_result_ders:
                    problems.append(f"{name}: LOST RESULT: package result seq {seq} never reached the eIM")
            elif note.der not in smdp_ders and note.der not in eim_note_ders and note.der not in eim_result_ders:
                problems.append(f"{name}: LOST NOTIFICATION: {note.event} seq {seq} reached neither the SM-DP+ "
                                f"nor the eIM")
        for note in d.card.notifications:
            problems.append(f"{name}: {note.event} seq {note.seq_number} still on the eUICC")
        # 5. no eUICC left mid-session
        if d.card.session_open:
            session = d.card.session
            problems.append(f"{name}: the eUICC has an RSP session open (phase {getattr(session, 'phase', '?')})")
        channels = [c for c in d.card.apdu.open_channels() if c != 0]   # the basic channel is always open
        if channels:
            leaks.append(f"{name}: logical channels left open on the eUICC: {channels}")
        # 6. what the card keeps across power cuts says the same
        if d.card.state_path is not None and nvm.load(d.card.state_path).notifications:
            problems.append(f"{name}: the eUICC state file still holds notifications")
        figures["device_sessions"] += d.sessions
        figures["transport_errors"] += d.transport_errors
    figures["smdp_notifications"] = len(smdp.service.notifications)
    for rsp in smdp.service.sessions.values():
        if rsp.state != "closed":
            figures[f"smdp_sessions_left_{rsp.state}"] += 1
    figures["channels_left_open"] = len(leaks)
    return problems, leaks, dict(figures)
