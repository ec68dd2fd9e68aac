"""The supervisor: one asyncio TaskGroup owning store, engine, backhaul, links and API.

Theory of operation (DESIGN principle 10, Hypercorn's `worker_serve`). `Daemon.run()`:

1. loads the configuration (a ConfigError ends the start with exit code 2) and sets up
   logging with every secret given to the redaction filter;
2. opens the store (releasing leases a dead process left), registers the configured fleet,
   builds the engine and restores every stored session into it;
3. starts the backhaul client, the runtime, the edge policies (gateway.policy: the
   `PolicyGate` sits between the links and the runtime, so links -> gate -> runtime ->
   engine), the device links (CoAP/DTLS, MQTT), the ESipa inject endpoint and the management
   API, then re-sends what the sessions had in flight (`Engine.resume`), gives the engine the
   pushed packages still waiting in the inbox, and tells systemd READY;
4. runs its loops in one TaskGroup -- the watchdog, the policy tick, the webhook dispatcher
   (webhook events are the outbox entries the daemon sends itself; results, notifications and
   cancellations are the engine's deliveries, sent by the runtime), one loop per modem on a serial port (the daemon plays that device's
   agent) -- until SIGTERM or SIGINT sets the stop event; SIGHUP (or POST /v1/reload)
   re-reads the configuration and swaps the device list, credentials, northbound trust and
   policies in place: links keep running and no session is dropped (what only a restart can
   change -- listeners, the broker login -- is named in the log and the reload answer);
5. on stop: STOPPING to systemd, the runtime stops taking uplinks (devices get Idle) and
   in-flight work drains within `gateway.shutdown_grace_s`; devices still waiting then get
   Idle too; links, inject endpoint and API close, what is left is cancelled, the WAL is
   checkpointed and the store closed.

Everything that needs the time or schedules takes the injected clock (principle 5,
gateway.clock): the engine's and the report timers, the policy tick, the webhook drain loop,
the modem and MQTT retry waits. The systemd watchdog and the shutdown grace stay on real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import random
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.backhaul.http import BackhaulHttp, HttpLimits, TlsTrust
from gateway.clock import Clock, SystemClock, Timer, as_clock
from gateway.backhaul.inject_server import InjectServer, server_ssl_context
from gateway.config import Config, Device, load_config
from gateway.core.actions import Audit, PostEs9, PostEs11, PostEsipa, from_bytes
from gateway.core.config import BACKOFF_KEYS, DeviceOverrides, northbound_backoffs
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.core.events import BackhaulAnswered, EimPackageReceived, StateReportPending
from gateway.core.retry import BreakerState, CircuitBreaker
from gateway.errors import ConfigError, DecodeError, GatewayError, NetworkError, TransportTimeout, is_retryable
from gateway.spec import esipa
from gateway.links.base import DeviceCredential, DeviceRegistry
from gateway.links.coap import CoapServer, CoapServerConfig
from gateway.links.mqtt import MqttConfig, MqttGateway
from gateway.links.serial import AsyncModemEuicc, ModemConfig, ModemEuicc
from gateway.links.serial.local import LocalModemDevice
from gateway.policy import (
    AuditPolicy,
    BindImei,
    EmitEvent,
    Policies,
    PolicyDecision,
    ReportStateChange,
    SavePolicyState,
    SetQuarantine,
)
from gateway.policy import webhooks
from gateway.policy import imei
from gateway.policy.bulk import GroupOperations
from gateway.policy.events import profile_event
from gateway.policy.gate import PolicyGate, RegistryView
from gateway.service.api import ApiServer
from gateway.service.logging import RedactingFilter, log_fields, setup_logging
from gateway.service.metrics import GatewayMetrics
from gateway.service.notify import Notifier
from gateway.service.runtime import (
    INBOX_KIND_EIM_PACKAGE,
    HttpBackhaul,
    Runtime,
    RuntimeOptions,
    iccid_digits,
    profile_change,
)
from gateway.store import AsyncStore, LinkIdentityTaken, OutboxUsage, Store, StoreOptions
from gateway.store.outbox import OutboxLimits

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
MQTT_BROKER_AUTHENTICATED = b"broker-authenticated"  # MQTT devices log in at the broker, not here
AUDIT_RETENTION_CHECK_S = 6 * 3600.0
POLICY_TICK_S = 60.0
STATUS_EVERY_S = 10.0
MQTT_RETRY_MAX_S = 60.0
BIND_RETRY_S = 5.0
EIM_ID_TYPE_FQDN = 2   # SGP.32 EimIdType eimIdTypeFqdn


class LiveRegistry(DeviceRegistry):
    """The links' DeviceRegistry, swapped as a whole on reload (links keep their reference)."""

    def __init__(self) -> None:
        super().__init__()
        self._current = DeviceRegistry()

    def replace(self, devices: list[DeviceCredential]) -> None:
        self._current = DeviceRegistry(devices)

    def add(self, device: DeviceCredential) -> None:
        if hasattr(self, "_current"):
            self._current.add(device)

    def by_identity(self, identity: str) -> DeviceCredential:
        return self._current.by_identity(identity)

    def by_eid(self, eid: bytes) -> DeviceCredential:
        return self._current.by_eid(eid)

    def __iter__(self) -> Iterator[DeviceCredential]:
        return iter(self._current)

    def __len__(self) -> int:
        return len(self._current)


def link_credentials(config: Config, link: str) -> list[DeviceCredential]:
    """The identities one link accepts: DTLS PSKs for CoAP; for MQTT the broker checks the
    passwords, and the registry only binds each user name to its EID."""
    out = []
    for d in config.devices:
        if d.link != link:
            continue
        if link == "coap":
            psk = config.credentials.psk(d.identity)
            if psk is None:
                raise ConfigError(f"no DTLS PSK for {d.identity!r}", key=f"dtls_psk.{d.identity}")
            out.append(DeviceCredential(d.identity, d.eid, psk))
        else:
            out.append(DeviceCredential(d.identity, d.eid, MQTT_BROKER_AUTHENTICATED))
    return out


def engine_config(config: Config) -> EngineConfig:
    nb = config.northbound
    eims: tuple[EimEndpoint, ...] = ()
    if nb.eim_fqdn is not None:
        eims = (EimEndpoint(eim_id=nb.eim_id or nb.eim_fqdn, fqdn=_eim_address(config),
                            indirect=nb.initial_eim.indirect_profile_download),)
    retry = nb.retry
    backoffs = northbound_backoffs(retry.initial_backoff_s, retry.max_backoff_s, retry.multiplier,
                                   retry.jitter_ratio, retry.max_attempts or None)
    return EngineConfig(segment_size=config.device_defaults.segment_size,
                        max_batch_bytes=config.device_defaults.max_batch_bytes, devices=device_overrides(config), eims=eims,
                        **backoffs,
                        idle_retry_s=int(config.device_defaults.poll_interval_s),
                        default_smdp=nb.default_smdp, initial_eim=initial_eim_data(config),
                        poll_interval_s=nb.polling_interval_s,
                        bpp_size_hint=config.device_defaults.bpp_size_hint,
                        authenticate_server_size_hint=config.device_defaults.authenticate_server_size_hint,
                        rearm_in_flight=nb.rearm_in_flight)


RELOADED_ENGINE_KEYS = ("segment_size", "max_batch_bytes", "devices", "eims", "idle_retry_s", "default_smdp",
                        "initial_eim", "rearm_in_flight", "poll_interval_s", "bpp_size_hint",
                        "authenticate_server_size_hint", *BACKOFF_KEYS)


def reloaded_engine_config(running: EngineConfig, new: EngineConfig) -> EngineConfig:
    """The running engine's configuration with everything `engine_config` reads from the files
    taken from `new` (a reload); the rest (the seed, what a test harness set) stays."""
    return dataclasses.replace(running, **{k: getattr(new, k) for k in RELOADED_ENGINE_KEYS})


def device_overrides(config: Config) -> dict[bytes, DeviceOverrides]:
    """The fleet entries' own segment_size, max_batch_bytes and poll_interval_s, where they differ
    from [device_defaults] (those are the engine-wide values)."""
    defaults = config.device_defaults
    out = {}
    for d in config.devices:
        own = DeviceOverrides(
            segment_size=None if d.segment_size == defaults.segment_size else d.segment_size,
            max_batch_bytes=None if d.max_batch_bytes == defaults.max_batch_bytes else d.max_batch_bytes,
            idle_retry_s=None if d.poll_interval_s == defaults.poll_interval_s else int(d.poll_interval_s))
        if own != DeviceOverrides():
            out[d.eid] = own
    return out


def _eim_address(config: Config) -> str:
    nb = config.northbound
    assert nb.eim_fqdn is not None
    return nb.eim_fqdn if nb.eim_port == 443 else f"{nb.eim_fqdn}:{nb.eim_port}"


def initial_eim_data(config: Config) -> dict[str, Any] | None:
    """EimConfigurationData (SGP.32 §2.11.1.1) for AddInitialEim, from [northbound.initial_eim]."""
    nb = config.northbound
    initial = nb.initial_eim
    if not initial.enabled or nb.eim_fqdn is None or initial.certificate_file is None:
        return None
    data: dict[str, Any] = {
        "eimId": nb.eim_id or nb.eim_fqdn, "eimFqdn": _eim_address(config), "counterValue": 0,
        "eimPublicKeyData": ("eimCertificate", _certificate_der(initial.certificate_file,
                                                                "northbound.initial_eim.certificate_file"))}
    if nb.eim_id is None:
        data["eimIdType"] = EIM_ID_TYPE_FQDN
    if initial.tls_trust_file is not None:
        data["trustedPublicKeyDataTls"] = ("trustedCertificateTls", _certificate_der(
            initial.tls_trust_file, "northbound.initial_eim.tls_trust_file"))
    if initial.ci_pkid is not None:
        data["euiccCiPKId"] = bytes.fromhex(initial.ci_pkid)
    if initial.indirect_profile_download:
        data["indirectProfileDownload"] = None
    return data


def _certificate_der(path: Path, key: str) -> bytes:
    """The DER of the (first) certificate in a PEM or DER file; ConfigError naming `key`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=key) from None
    try:
        cert = x509.load_pem_x509_certificate(raw) if b"-----BEGIN" in raw else x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise ConfigError(f"{path} holds no X.509 certificate: {exc}", key=key) from None
    return cert.public_bytes(serialization.Encoding.DER)


class Daemon:
    """`ipae-gateway run`; also the management API's backend."""

    def __init__(self, config_path: Path, *, clock: Clock | Callable[[], float] = SystemClock(),
                 environ: Mapping[str, str] | None = None,
                 make_engine: Callable[[Config], Engine] | None = None,
                 runtime_options: RuntimeOptions = RuntimeOptions()) -> None:
        self.config_path = config_path
        self.clock = clock = as_clock(clock)
        self.notifier = Notifier(environ)
        self._make_engine = make_engine or (lambda c: Engine(engine_config(c)))
        self._runtime_options = runtime_options
        self.metrics = GatewayMetrics()
        self.registries = {"coap": LiveRegistry(), "mqtt": LiveRegistry()}
        self.stop_event = asyncio.Event()
        self.reloads = 0
        self.started_at = clock()
        self._redactor: RedactingFilter | None = None
        self._links: dict[str, str] = {}
        self.config: Config
        self.engine: Engine
        self.astore: AsyncStore
        self.runtime: Runtime
        self.http: BackhaulHttp
        self.backhaul: HttpBackhaul
        self.policies: Policies
        self.gate: PolicyGate
        self.webhooks: webhooks.WebhookDispatcher | None = None
        self.groups: GroupOperations
        self._report_timers: dict[str, Timer] = {}
        self._mqtt_pending: tuple[MqttGateway, str] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        try:
            self.config = load_config(self.config_path)
        except ConfigError as exc:
            logging.getLogger().error("configuration refused: %s", exc)
            return EXIT_CONFIG
        self._redactor = setup_logging(self.config.gateway.log_level, secrets=self.config.credentials.secret_values())
        try:
            return await self._serve()
        except ConfigError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_CONFIG
        except GatewayError as exc:
            log.error("stopped on error: %s: %s", type(exc).__name__, exc)
            return EXIT_FAILED

    async def _serve(self) -> int:
        cfg = self.config
        loop = asyncio.get_running_loop()
        cfg.gateway.state_dir.mkdir(parents=True, exist_ok=True)
        db_path = cfg.store.db_path if cfg.store.db_path.is_absolute() else cfg.gateway.state_dir / cfg.store.db_path
        options = StoreOptions(outbox_limits=OutboxLimits(cfg.store.outbox_max_messages, cfg.store.outbox_max_bytes,
                                                          cfg.store.outbox_alarm_ratio))
        self.astore = await AsyncStore.open(db_path, options)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._close_store)
            released = await self.astore.run(lambda s: s.outbox.release_leases())
            if released:
                log.info("released %d outbox leases of the previous run", released)
            await self._register_fleet()
            self.engine = self._make_engine(cfg)
            sessions = await self.astore.run(lambda s: s.sessions.list())
            for session in sessions:
                try:
                    self.engine.restore(session.eid, session.blob)
                except GatewayError as exc:
                    log.error("session of %s cannot be restored (%s): it starts afresh", session.eid.hex(), exc)
            nb = cfg.northbound
            breaker = nb.circuit_breaker
            self.http = BackhaulHttp(
                HttpLimits(connect_timeout_s=nb.connect_timeout_s, request_timeout_s=max(nb.esipa_timeout_s,
                                                                                          nb.es9_timeout_s)),
                breaker_factory=lambda server: CircuitBreaker(server, breaker.failure_threshold, breaker.open_s,
                                                              max(breaker.open_s, 1800.0), breaker.half_open_probes),
                clock=self.clock)
            stack.push_async_callback(self.http.close)
            self.backhaul = backhaul = HttpBackhaul(self.http, trust=TlsTrust())
            configure_backhaul(backhaul, cfg)
            self.runtime = Runtime(self.engine, self.astore, backhaul, clock=self.clock,
                                   options=self._runtime_options, metrics=self.metrics)
            self.runtime.on_backlog = self._on_backlog
            stack.push_async_callback(self.runtime.close)
            stack.callback(self._cancel_report_timers)
            self.policies = Policies(cfg.policies)
            await self._restore_policies()
            self.gate = PolicyGate(self.runtime, self.policies, self, clock=self.clock,
                                   segment_size_of=lambda eid: self.engine.config.segment_size_of(eid))
            self.webhooks = await self._start_webhooks(stack)
            self.runtime.on_audit = self._profile_webhook
            self.runtime.on_queued = self._kick_webhooks
            self.groups = GroupOperations(self, self.astore, lambda: self.config.policies.groups, clock=self.clock)
            for link, live in self.registries.items():
                live.replace(link_credentials(cfg, link))
            await self._start_links(stack)
            await self._start_inject(stack)
            api = ApiServer(self, cfg.api.socket_path,
                            tcp=(cfg.api.tcp_listen, cfg.api.tcp_port) if cfg.api.tcp_listen else None,
                            bearer_token=self._bearer_token if cfg.api.tcp_listen else None)
            await api.start()
            stack.push_async_callback(api.close)
            self.api = api
            self.runtime.note_backlog(await self.astore.run(lambda s: s.outbox.usage()))
            if sessions:
                resumed = self.engine.resume(self.clock())
                await self.runtime.apply(resumed, self.clock())
                log.info("resumed %d sessions (%d actions)", len(sessions), len(resumed))
            await self._refeed_inbox()
            owed = self.policies.resume(self.clock())
            if owed:
                await self.apply_decisions(None, owed, self.clock())

            for sig, handler in ((signal.SIGTERM, self.stop_event.set), (signal.SIGINT, self.stop_event.set),
                                 (signal.SIGHUP, self._on_sighup)):
                loop.add_signal_handler(sig, handler)
                stack.callback(loop.remove_signal_handler, sig)
            self.notifier.ready(self._status_line())
            log.info("ready: %s", self._status_line())

            async with asyncio.TaskGroup() as tg:
                loops = [tg.create_task(self._watchdog_loop(), name="watchdog")]
                loops.append(tg.create_task(self._policy_tick_loop(), name="policy tick"))
                loops.append(tg.create_task(self._audit_retention_loop(), name="audit retention"))
                if self._mqtt_pending is not None:
                    loops.append(tg.create_task(self._mqtt_connect_loop(*self._mqtt_pending), name="mqtt connect"))
                if self.webhooks is not None:
                    loops.append(tg.create_task(self.webhooks.run(self.stop_event), name="webhooks"))
                if cfg.links.serial.enabled:
                    loops += [tg.create_task(self._serial_loop(d), name=f"serial {d.identity}")
                              for d in cfg.devices if d.link == "serial"]
                await self.stop_event.wait()
                self._cancel_report_timers()    # owed reports stay in the policy state for the next start
                self.notifier.stopping("draining in-flight work")
                log.info("stopping: draining in-flight work (up to %.0f s)", cfg.gateway.shutdown_grace_s)
                drained = await self.runtime.drain(cfg.gateway.shutdown_grace_s)
                if not drained:
                    log.warning("in-flight work did not finish within %.0f s: cancelling %d tasks",
                                cfg.gateway.shutdown_grace_s, self.runtime.inflight)
                    if self.runtime.release_pending():
                        await asyncio.sleep(0.2)   # let the links carry those Idle downlinks out
                for task in loops:
                    task.cancel()
        log.info("stopped")
        return EXIT_OK

    async def _refeed_inbox(self) -> None:
        """Pushed packages persisted (and acknowledged) but not yet run go to the engine again; it
        refuses as a duplicate any it already holds in a restored session."""
        entries = await self.astore.run(lambda s: [e for eid in s.inbox.eids_with_work() for e in s.inbox.pending(eid)])
        for entry in entries:
            if entry.state == "queued" and entry.kind == INBOX_KIND_EIM_PACKAGE and entry.payload:
                await self.runtime.feed(EimPackageReceived(eid=entry.eid, now=self.clock(), eim_id=entry.origin or "",
                                                           raw=entry.payload, via="push", key=entry.key))
        if entries:
            log.info("%d inbox entries waiting for their devices", len(entries))

    async def _restore_policies(self) -> None:
        """The policies' state as last decided (a device in fallback keeps its return time)."""
        rows = await self.astore.run(lambda s: s.policy_state.list())
        for row in rows:
            try:
                self.policies.restore(row.eid, row.kind, row.blob.encode("utf-8"))
            except GatewayError as exc:
                log.error("%s policy state of %s cannot be restored (%s): it starts afresh", row.kind,
                          row.eid.hex() or "the gateway", exc)
        if rows:
            log.info("restored %d policy states", len(rows))

    async def _close_store(self) -> None:
        try:
            await self.astore.run(lambda s: s.checkpoint())
        finally:
            await self.astore.close()

    async def _register_fleet(self) -> None:
        devices = self.config.devices
        now = self.clock()

        def register(s: Store) -> None:
            for d in devices:
                try:
                    s.devices.register(d.eid, d.link, d.identity, now=now)
                except LinkIdentityTaken:
                    s.devices.rebind(d.eid, d.link, d.identity, now=now)
        await self.astore.run(register)

    async def _start_links(self, stack: contextlib.AsyncExitStack) -> None:
        links = self.config.links
        if links.coap.enabled:
            if not links.coap.dtls:
                raise ConfigError("the daemon serves CoAP over DTLS only", key="links.coap.dtls")
            coap = CoapServer(self.gate, self.registries["coap"], CoapServerConfig(
                host=links.coap.listen, dtls_port=links.coap.port, receive_buffer=links.coap.receive_buffer_bytes))
            await self._listen_coap(coap, links.coap.listen, links.coap.port)
            stack.push_async_callback(coap.close)
            self._links["coap"] = f"{'coaps' if links.coap.dtls else 'coap'}://[{links.coap.listen}]:{links.coap.port}"
        if links.mqtt.enabled:
            mqtt = links.mqtt
            if mqtt.topic_prefix != "ipae":
                raise ConfigError("only the topic prefix 'ipae' is supported by this build", key="links.mqtt.topic_prefix")
            assert mqtt.broker_host is not None
            password = self.config.credentials.mqtt.password
            if mqtt.tls and mqtt.ca_file is None:
                raise ConfigError("MQTT over TLS needs the broker's CA bundle in this build", key="links.mqtt.ca_file")
            gateway = MqttGateway(self.gate, self.registries["mqtt"], MqttConfig(
                host=mqtt.broker_host, port=mqtt.broker_port, username=mqtt.username or "",
                password=password.reveal() if password is not None else "",
                client_id=self.config.mqtt_client_id, ca_file=str(mqtt.ca_file) if mqtt.tls and mqtt.ca_file else None,
                keepalive=mqtt.keepalive_s), share_group=mqtt.shared_group)
            stack.push_async_callback(gateway.close)
            url = f"{'mqtts' if mqtt.tls else 'mqtt'}://{mqtt.broker_host}:{mqtt.broker_port}"
            try:
                await gateway.start()
                self._links["mqtt"] = url
            except (NetworkError, TransportTimeout) as exc:
                # the broker may come up after the gateway (same host, boot order): CoAP and serial
                # devices are served meanwhile, and the broker is tried again in the background
                log.error("MQTT broker %s unreachable (%s): retrying in the background", url, exc)
                await gateway.close()
                self._links["mqtt"] = f"{url} (connecting)"
                self._mqtt_pending = (gateway, url)
        if links.serial.enabled:
            self._links["serial"] = ", ".join(d.identity for d in self.config.devices if d.link == "serial")

    async def _listen_coap(self, coap: CoapServer, host: str, port: int) -> None:
        """Bind the CoAP/DTLS port; a port still held by a previous instance that is going away
        (a restart right after a kill) is tried again for a few seconds."""
        deadline = time.monotonic() + BIND_RETRY_S
        while True:
            try:
                await coap.start()
                return
            except OSError as exc:
                await coap.close()
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise ConfigError(f"cannot listen on [{host}]:{port}: {exc.strerror}",
                                      key="links.coap.port") from None
                await asyncio.sleep(0.2)

    async def _start_inject(self, stack: contextlib.AsyncExitStack) -> None:
        inject = self.config.northbound.inject
        if inject.listen is None:
            return
        assert inject.tls_cert_file is not None
        key = self.config.credentials.tls.inject_key_file
        assert key is not None
        server = InjectServer(self.runtime.on_transfer, server_ssl_context(str(inject.tls_cert_file), str(key)),
                              host=inject.listen, port=inject.port)
        await server.start()
        stack.push_async_callback(server.stop)
        self._links["inject"] = f"https://[{inject.listen}]:{server.port}"

    # --- loops -----------------------------------------------------------------------------

    async def _watchdog_loop(self) -> None:
        """WATCHDOG every half WatchdogSec; STATUS when the picture changed."""
        interval = self.notifier.watchdog_interval_s
        last = ""
        while True:
            if interval is not None:
                self.notifier.watchdog()
            line = self._status_line()
            if line != last:
                self.notifier.status(line)
                last = line
            await asyncio.sleep(min(interval, STATUS_EVERY_S) if interval is not None else STATUS_EVERY_S)

    async def _mqtt_connect_loop(self, gateway: MqttGateway, url: str) -> None:
        delay = 1.0
        while True:
            await self.clock.sleep(delay)
            try:
                await gateway.start()
            except (NetworkError, TransportTimeout) as exc:
                await gateway.close()
                delay = min(delay * 2, MQTT_RETRY_MAX_S)
                log.warning("MQTT broker %s still unreachable (%s): next try in %.0f s", url, exc, delay)
                continue
            self._links["mqtt"] = url
            self._mqtt_pending = None
            log.info("MQTT broker %s connected", url)
            return

    async def _serial_loop(self, device: Device) -> None:
        """A modem on the gateway's own serial port: the gateway plays its device agent."""
        serial = self.config.links.serial
        modem_config = ModemConfig(segment_size=min(serial.segment_size, device.segment_size),
                                   timeout_s=serial.response_timeout_s)
        retry_s = 1.0
        while True:
            try:
                modem = await asyncio.to_thread(ModemEuicc.open, device.identity, modem_config,
                                                baudrate=serial.baudrate)
            except GatewayError as exc:
                log.error("modem on %s unavailable (%s); retrying in %.0f s", device.identity, exc, retry_s,
                          extra=log_fields(eid=device.eid))
                await self.clock.sleep(retry_s)
                retry_s = min(retry_s * 2, 300.0)
                continue
            retry_s = 1.0
            local = LocalModemDevice(AsyncModemEuicc(modem), self.gate, device.eid)
            try:
                while not self.runtime.draining:
                    session = await local.run_session()
                    wait = device.poll_interval_s if session.idle_after_s is None else min(
                        float(session.idle_after_s), device.poll_interval_s)
                    await self.clock.sleep(wait)
            except GatewayError as exc:
                log.error("modem session on %s failed: %s", device.identity, exc, extra=log_fields(eid=device.eid))
                local.attach_failures += 1
            finally:
                await asyncio.to_thread(modem.close)
            await self.clock.sleep(retry_s)

    # --- policies (gateway.policy.gate.GateBackend) ----------------------------------------

    async def _start_webhooks(self, stack: contextlib.AsyncExitStack) -> webhooks.WebhookDispatcher | None:
        policy = self.config.policies.webhooks
        secret = self.config.credentials.webhooks.hmac_secret
        if not policy.urls or secret is None:
            return None
        sender = webhooks.WebhookSender(policy, secret.reveal().encode(), clock=self.clock)
        stack.push_async_callback(sender.close)
        return webhooks.WebhookDispatcher(self.astore, sender, clock=self.clock)

    async def operator(self, eid: bytes, kind: str, args: Iterable[tuple[str, str]] = ()) -> None:
        await self.runtime.operator(eid, kind, args)

    async def device_policy(self, eid: bytes, action: str, args: dict[str, Any]) -> None:
        """Operator quarantine / release of one device (gateway.policy.imei decisions)."""
        await self.astore.run(lambda s: s.devices.require(eid))
        now = self.clock()
        if action == "quarantine":
            decisions = imei.quarantine(eid, reason=str(args.get("reason", "operator request")), now=now)
        else:
            rebind = args.get("rebind")
            decisions = imei.release(eid, rebind=None if rebind is None else str(rebind),
                                     keep_binding=bool(args.get("keep_binding", True)), now=now)
        await self.apply_decisions(eid, decisions, now)

    def _profile_webhook(self, s: Store, audit: Audit, now: float) -> int:
        """On the store thread, in the engine step's transaction: the webhook event of a profile
        state change (an eUICC notification delivered and removed)."""
        change = profile_change(audit)
        if change is None or not self.config.policies.webhooks.urls:
            return 0
        event = profile_event(audit.eid, change[0], None if audit.iccid is None else iccid_digits(audit.iccid),
                              change[1], now)
        if event is None:
            return 0
        return webhooks.enqueue_event(s, event, self.config.policies.webhooks, gateway_id=self.config.gateway_id,
                                      now=now)

    def _kick_webhooks(self) -> None:
        if self.webhooks is not None:
            self.webhooks.kick()

    async def registry(self, eid: bytes) -> RegistryView:
        device = await self.astore.run(lambda s: s.devices.get(eid))
        if device is None:
            return RegistryView(imei=None, quarantined=False)
        return RegistryView(imei=device.imei, quarantined=device.quarantined, tags=device.tags)

    async def apply_decisions(self, eid: bytes | None, decisions: list[PolicyDecision], now: float) -> None:
        """Store decisions in one transaction; then timers for state-change reports."""
        self.policies.record_alarms(decisions, now)   # idempotent: on_status recorded its own already
        stored = [d for d in decisions if isinstance(d, (SetQuarantine, BindImei, AuditPolicy, EmitEvent,
                                                          SavePolicyState))]
        policy, gateway_id = self.config.policies.webhooks, self.config.gateway_id

        def write(s: Store) -> int:
            queued = 0
            for d in stored:
                if isinstance(d, SetQuarantine):
                    s.devices.set_quarantine(d.eid, d.quarantined, reason=d.reason, now=now)
                elif isinstance(d, BindImei):
                    s.devices.bind_imei(d.eid, d.imei, now=now)
                elif isinstance(d, AuditPolicy):
                    s.audit.append(time=now, eid=d.eid, iccid=d.iccid, operation=d.operation, result=d.result,
                                   detail=dict(d.detail))
                elif isinstance(d, SavePolicyState):
                    s.policy_state.put(d.eid, d.kind, d.blob.decode("utf-8"), now=now)
                else:
                    queued += webhooks.enqueue_event(s, d, policy, gateway_id=gateway_id, now=now)
            return queued

        if stored:
            queued = await self.astore.atomic(write)
            if queued and self.webhooks is not None:
                self.webhooks.kick()
        for d in decisions:
            if isinstance(d, ReportStateChange):
                # one report per switch: the engine holds back its own PLMN-change report meanwhile
                await self.runtime.feed(StateReportPending(eid=d.eid, now=now, pending=True))
                self._schedule_report(d, max(0.0, d.at - self.clock()))

    def _schedule_report(self, report: ReportStateChange, delay: float) -> None:
        old = self._report_timers.pop(report.token, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._report_timers.pop(report.token, None)
            self.runtime.spawn(self._report_state_change(report), "state-change report")

        self._report_timers[report.token] = self.clock.call_at(self.clock() + delay, fire)

    def _cancel_report_timers(self) -> None:
        for handle in self._report_timers.values():
            handle.cancel()
        self._report_timers.clear()

    async def _report_state_change(self, report: ReportStateChange, attempt: int = 0,
                                   owed: frozenset[str] | None = None, answered: bool = False) -> None:
        """GetEimPackage with notifyStateChange to each of the device's eIMs (its eUICC's eIM
        configuration once read, else the configured eIMs: Engine.state_report_posts). Once one
        eIM answered, the policies learn the report is sent and the engine reports PLMN changes
        itself again from the device's next report of its network on (that one counts as
        reported); a package in an answer goes to the engine as one received by poll from that
        eIM. An eIM whose post failed in a way that may pass (`owed`) is retried on its own after
        the delivery backoff ([northbound.retry]) while attempts remain (the report stays owed,
        also across a restart, until some eIM answered)."""
        body = self.gate.report_request(report)
        posts = [p for p in self.engine.state_report_posts(report.eid, f"policy-{report.token}", body)
                 if owed is None or p.eim_id in owed]
        if not posts:
            log.warning("state change of %s not reported: no eIM configured", report.eid.hex(),
                        extra=log_fields(eid=report.eid))
            if not answered:
                await self.runtime.feed(StateReportPending(eid=report.eid, now=self.clock(), pending=False))
            return
        outcomes = await asyncio.gather(*(self.runtime.backhaul.post_esipa(p) for p in posts), return_exceptions=True)
        backoff = self.engine.config.delivery_backoff     # [northbound.retry], as results and notifications
        retry: set[str] = set()
        answers: list[tuple[str, bytes]] = []
        for post, outcome in zip(posts, outcomes, strict=True):
            if isinstance(outcome, bytes):
                answers.append((post.eim_id, outcome))
            elif isinstance(outcome, GatewayError) and is_retryable(outcome) and not self.runtime.draining \
                    and (backoff.max_attempts is None or attempt < backoff.max_attempts):
                retry.add(post.eim_id)
                log.warning("state-change report of %s to %s failed (%s)", report.eid.hex(), post.eim_id, outcome,
                            extra=log_fields(eid=report.eid))
            elif isinstance(outcome, GatewayError):
                log.error("state-change report of %s to %s failed (%s): not retried before the next start",
                          report.eid.hex(), post.eim_id, outcome, extra=log_fields(eid=report.eid))
            else:
                raise outcome
        if retry:
            delay = backoff.wait(attempt, random.random)
            log.warning("state-change report of %s: next try to %s in %.0f s", report.eid.hex(),
                        ", ".join(sorted(retry)), delay, extra=log_fields(eid=report.eid))
            again, was_answered = frozenset(retry), answered or bool(answers)
            self._report_timers[report.token] = self.clock.call_at(
                self.clock() + delay, lambda: self.runtime.spawn(
                    self._report_state_change(report, attempt + 1, again, was_answered), "state-change report"))
        if answers and not answered:
            now = self.clock()
            await self.apply_decisions(report.eid, self.policies.report_sent(report.eid, report.token, now), now)
            await self.runtime.feed(StateReportPending(eid=report.eid, now=now, pending=False, answered=True))
        elif not answers and not retry and not answered:
            await self.runtime.feed(StateReportPending(eid=report.eid, now=self.clock(), pending=False))
        for eim_id, answer in answers:
            try:
                package = esipa.decode_response("GetEimPackage", answer)
            except (DecodeError, GatewayError) as exc:
                log.warning("state-change report of %s: unusable answer from %s (%s)", report.eid.hex(), eim_id, exc)
                continue
            if isinstance(package, tuple) and package[0] == "eimPackageError":
                continue
            await self.runtime.feed(EimPackageReceived(eid=report.eid, now=self.clock(), eim_id=eim_id, raw=answer,
                                                       via="poll"))

    async def _policy_tick_loop(self) -> None:
        """Every minute: the fallback policy's clock, and the outbox level against its alarm."""
        while True:
            await self.clock.sleep(POLICY_TICK_S)
            now = self.clock()
            usage = await self.astore.run(lambda s: s.outbox.usage())
            self.runtime.note_backlog(usage)    # webhook deliveries drain it too
            decisions = self.policies.tick(now) + self.policies.alarms.queue_level(
                usage.level, usage.entries, usage.payload_bytes, now)
            if decisions:
                await self.apply_decisions(None, decisions, now)

    async def _audit_retention_loop(self) -> None:
        """At start and every few hours: audit records older than [store] audit_retention_days go
        (the only deletion the audit table allows)."""
        while True:
            days = self.config.store.audit_retention_days
            now = self.clock()
            purged = await self.astore.run(lambda s: s.audit.purge(retention_days=days, now=now))
            if purged:
                log.info("audit: %d records older than %d days removed", purged, days)
            await self.clock.sleep(AUDIT_RETENTION_CHECK_S)

    def _on_backlog(self, usage: OutboxUsage) -> None:
        """The outbox level changed: the queue alarm is raised or cleared at once (status, webhook
        event), not at the next policy tick."""
        decisions = self.policies.alarms.queue_level(usage.level, usage.entries, usage.payload_bytes, self.clock())
        if decisions:
            self.runtime.spawn(self.apply_decisions(None, decisions, self.clock()), "queue alarm")

    # --- reload ------------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        self.runtime.spawn(self._reload_logged(), "reload")

    async def _reload_logged(self) -> None:
        await self.reload()

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration; swap devices, credentials and policies; keep sessions."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
            credentials = {link: link_credentials(new, link) for link in self.registries}
            base = engine_config(new)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            self.notifier.status(f"reload refused: {exc}")
            return {"reloaded": False, "error": str(exc)}
        finally:
            self.notifier.ready()
        old = self.config
        restart_needed = [name for name in ("links", "api", "store") if getattr(old, name) != getattr(new, name)]
        if old.northbound.inject != new.northbound.inject or old.credentials.tls != new.credentials.tls:
            restart_needed.append("northbound.inject")
        if old.credentials.mqtt != new.credentials.mqtt:
            restart_needed.append("credentials mqtt.password")
        self.config = new
        if self._redactor is not None:
            self._redactor.set_secrets(new.credentials.secret_values())
        logging.getLogger().setLevel(new.gateway.log_level.upper())
        for link, live in self.registries.items():
            live.replace(credentials[link])
        self.policies.reload(new.policies)
        if old.policies.webhooks != new.policies.webhooks or old.credentials.webhooks != new.credentials.webhooks:
            restart_needed.append("policies.webhooks")
        await self._register_fleet()
        configure_backhaul(self.backhaul, new)
        self.engine.config = reloaded_engine_config(self.engine.config, base)
        self.reloads += 1
        summary = {"reloaded": True, "devices": len(new.devices), "sessions_kept": len(self.engine.sessions),
                   "restart_needed_for": restart_needed}
        if restart_needed:
            log.warning("reloaded; changes to %s take effect at the next restart", ", ".join(restart_needed))
        log.info("configuration reloaded: %d devices", len(new.devices))
        self.notifier.status(self._status_line())
        return summary

    # --- ApiBackend ----------------------------------------------------------------------------

    def _bearer_token(self) -> str | None:
        token = self.config.credentials.api.bearer_token
        return token.reveal() if token is not None else None

    def _status_line(self) -> str:
        circuits = [server for server, state in self.backhaul_states().items() if state != "closed"]
        usage = self.runtime.backlog
        outbox = "" if usage is None or usage.level == "ok" else (
            f"; outbox {usage.level} ({usage.entries}/{usage.limits.max_entries})"
            + (", new work refused" if self.runtime.holding else ""))
        return (f"{len(self.config.devices)} devices; links {', '.join(self._links) or 'none'}; "
                f"{self.runtime.pending_exchanges} exchanges pending; "
                + (f"backhaul down: {', '.join(circuits)}" if circuits else "backhaul ok") + outbox)

    def backhaul_states(self) -> dict[str, str]:
        now = self.clock()
        out: dict[str, str] = {}
        for base_url, server in self.backhaul.servers.items():
            breaker = self.http.breaker(server)
            out[base_url] = breaker.current_state(now).value if breaker is not None else "closed"
        return out

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "gateway_id": self.config.gateway_id,
            "status": "stopping" if self.runtime.draining else "running",
            "uptime_s": round(now - self.started_at, 3),
            "config": [str(p) for p in self.config.sources],
            "reloads": self.reloads,
            "links": dict(self._links),
            "backhaul": self.backhaul_states(),
            "devices": len(self.config.devices),
            "engine_sessions": len(self.engine.sessions),
            "pending_exchanges": self.runtime.pending_exchanges,
            "inflight": self.runtime.inflight,
            "timers": self.runtime.timers,
            "alarms": [a.to_json() for a in self.policies.alarms.active.values()],
            "outbox": self._outbox_status(),
            "counters": {
                "round_trips": sum(self.metrics.round_trips.values.values()),
                "apdus": self.metrics.apdus.get(),
                "errors": sum(self.metrics.errors.values.values()),
            },
        }

    def _outbox_status(self) -> dict[str, Any]:
        usage = self.runtime.backlog
        if usage is None:
            return {}
        return {"entries": usage.entries, "bytes": usage.payload_bytes, "max_entries": usage.limits.max_entries,
                "max_bytes": usage.limits.max_bytes, "alarm_ratio": usage.limits.alarm_ratio, "level": usage.level,
                "holding_new_work": self.runtime.holding}

    def configured_devices(self) -> dict[bytes, dict[str, Any]]:
        return {d.eid: {"name": d.name, "link": d.link, "identity": d.identity, "source": d.source}
                for d in self.config.devices}

    def session_state(self, eid: bytes) -> str:
        return self.engine.state_of(eid)

    def refresh_gauges(self, stats: dict[str, int]) -> None:
        m = self.metrics
        m.queue_depth.set(stats["inbox_open"], queue="inbox")
        m.queue_depth.set(stats["outbox_pending"], queue="outbox")
        m.queue_bytes.set(stats["outbox_pending_bytes"])
        m.db_bytes.set(stats["db_bytes"])
        m.devices.set(stats["devices"])
        m.pending_exchanges.set(self.runtime.pending_exchanges)
        m.up.set(self.clock() - self.started_at)
        m.sessions.clear()
        states: dict[str, int] = {}
        for eid in self.engine.sessions:
            state = self.session_state(eid)
            states[state] = states.get(state, 0) + 1
        for state, n in states.items():
            m.sessions.set(n, state=state)
        m.policy.clear()
        for family, values in self.policies.gauges().items():
            for key, value in values.items():
                m.policy.set(value, family=family, key=key)
        m.backhaul_state.clear()
        for server, state in self.backhaul_states().items():
            m.backhaul_state.set(0 if state == BreakerState.CLOSED.value else 1, server=server, state=state)


async def run_daemon(config_path: Path, **kwargs: Any) -> int:
    return await Daemon(config_path, **kwargs).run()


def configure_backhaul(backhaul: HttpBackhaul, cfg: Config) -> None:
    """What [northbound] and the credentials say about TLS, the ESipa binding and timeouts."""
    nb = cfg.northbound
    ca_file = str(nb.eim_ca_file) if nb.eim_ca_file is not None else None
    backhaul.trust = TlsTrust(ca_file=ca_file)
    key = cfg.credentials.tls.eim_client_key_file
    backhaul.eim_trust = TlsTrust(
        ca_file=ca_file, client_cert_file=str(nb.eim_client_cert_file) if nb.eim_client_cert_file else None,
        client_key_file=str(key) if key is not None and nb.eim_client_cert_file else None)
    backhaul.eim_admin_protocol = f"gsma/rsp/v{nb.admin_protocol_version}"
    backhaul.esipa_binding = nb.esipa_binding
    backhaul.esipa_timeout_s, backhaul.es9_timeout_s = nb.esipa_timeout_s, nb.es9_timeout_s
    backhaul.es11_timeout_s = nb.es11_timeout_s
