"""The configuration model: one frozen dataclass per TOML table of gateway.toml.

The field metadata (built by `setting`) is the single source of each key's default,
constraints and one-line documentation; `config/gateway.toml` shows every key with its
default, and a test keeps the two in step. Relative paths are taken from the directory of
gateway.toml, except `store.db_path`, which is taken from `gateway.state_dir`. The
`[policies]` tables live in policies.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config.policies import PoliciesSection
from gateway.config.schema import setting, table
from gateway.links.protocol import MAX_MESSAGE

LogLevel = Literal["debug", "info", "warning", "error"]
LinkKind = Literal["coap", "mqtt", "serial"]

_FQDN = r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
_HOST = rf"{_FQDN}|\d{{1,3}}(\.\d{{1,3}}){{3}}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*"


def _listen_address(value: Any) -> str | None:
    if not re.fullmatch(_HOST, str(value)):
        return "a host name or an IPv4/IPv6 address"
    return None


@dataclass(frozen=True, slots=True)
class GatewaySection:
    gateway_id: str | None = setting(
        None, "Name of this gateway in logs, metrics and the MQTT client id (default: the host name)",
        pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    state_dir: Path = setting(
        Path("/var/lib/ipae-gateway"), "Directory for the SQLite database and other state (systemd StateDirectory)")
    log_level: LogLevel = setting("info", "Least severe level logged: debug, info, warning or error")
    credentials_file: Path = setting(
        Path("credentials.toml"), "Secrets file (PSKs, passwords, tokens, key paths); refused if world-readable")
    devices_dir: Path = setting(
        Path("devices.d"), "Directory of device fleet files (*.toml, read in name order)")
    devices_csv: Path | None = setting(
        None, "Optional CSV file of devices, read after devices_dir (columns: see devices.csv.example)")
    shutdown_grace_s: float = setting(
        10.0, "On SIGTERM, seconds allowed for in-flight work to drain before the daemon exits", min=0, max=600)


@dataclass(frozen=True, slots=True)
class StoreSection:
    db_path: Path = setting(Path("gateway.sqlite3"), "SQLite database file (relative: inside gateway.state_dir)")
    outbox_max_messages: int = setting(
        100_000, "Messages waiting for the backhaul (results, notifications, cancellations, webhook events); at "
        "this bound the gateway takes no new work and drops nothing stored", min=100)
    outbox_max_bytes: int = setting(
        256 * 1024 * 1024, "Bytes waiting for the backhaul", min=1024 * 1024)
    outbox_alarm_ratio: float = setting(
        0.8, "Fill ratio of the outbox (by messages or bytes) that raises the queue alarm; new work is taken "
        "again under it", min=0.1, max=1.0)
    audit_retention_days: int = setting(
        365, "Days the audit log of eUICC state changes is kept", min=1, max=36500)


@dataclass(frozen=True, slots=True)
class RetrySection:
    """The engine's backoffs (gateway.core.config.northbound_backoffs): results and notifications
    follow these keys as they are; requests a device's session waits on keep at most 60 s between
    attempts and 3 retries, polls 30 s and 1 retry."""

    initial_backoff_s: float = setting(
        1.0, "Longest first wait after a retryable failure (the wait is drawn below it by the jitter)",
        min=0.01, max=3600)
    max_backoff_s: float = setting(900.0, "Longest wait between two attempts", min=0.01, max=86400)
    multiplier: float = setting(2.0, "Factor applied to the longest wait after each failure", min=1.0, max=10.0)
    jitter_ratio: float = setting(
        0.2, "Random spread of each wait, as a fraction of it: a wait w is drawn from "
        "[(1 - jitter_ratio) * w, w) (0: exactly w, 1: full jitter)", min=0.0, max=1.0)
    max_attempts: int = setting(
        0, "Attempts (the first included) before a result or notification is given up and audited "
        "(0: never give up)", min=0)


@dataclass(frozen=True, slots=True)
class CircuitBreakerSection:
    failure_threshold: int = setting(5, "Consecutive transport failures that open the circuit", min=1, max=1000)
    open_s: float = setting(60.0, "Seconds the circuit stays open before one probe is let through", min=1, max=86400)
    half_open_probes: int = setting(1, "Successful probes needed to close the circuit again", min=1, max=100)


@dataclass(frozen=True, slots=True)
class InjectSection:
    listen: str | None = setting(
        None, "Address of the ESipa inject endpoint (eIM pushes packages); unset: disabled", check=_listen_address)
    port: int = setting(8443, "TCP port of the inject endpoint", min=1, max=65535)
    tls_cert_file: Path | None = setting(
        None, "Certificate chain (PEM) of the inject endpoint; its key path is credentials tls.inject_key_file")


@dataclass(frozen=True, slots=True)
class InitialEimSection:
    enabled: bool = setting(
        False, "Give an eUICC that has no eIM yet the default eIM on first contact (AddInitialEim); "
        "needs northbound.eim_fqdn and certificate_file")
    certificate_file: Path | None = setting(
        None, "The default eIM's signing certificate (PEM or DER), sent as eimPublicKeyData: what the eUICC "
        "verifies eIM packages with")
    tls_trust_file: Path | None = setting(
        None, "Certificate (PEM or DER) the eUICC is to trust for the eIM's TLS (trustedPublicKeyDataTls); "
        "unset: not sent")
    ci_pkid: str | None = setting(
        None, "Subject key identifier (hex) of the eSIM CA the eIM works with (euiccCiPKId); unset: not sent",
        pattern=r"([0-9A-Fa-f]{2}){1,32}")
    indirect_profile_download: bool = setting(
        False, "Profiles are downloaded through the eIM (indirectProfileDownload), not from the SM-DP+ directly")


@dataclass(frozen=True, slots=True)
class NorthboundSection:
    eim_fqdn: str | None = setting(
        None, "Default eIM address (FQDN); unset: only the eIMs of each eUICC's eIM configuration", pattern=_FQDN)
    eim_id: str | None = setting(
        None, "Identifier (eimId) of the default eIM, as its packages name it; unset: eim_fqdn",
        pattern=r"[^\x00-\x1f]{1,128}")
    default_smdp: str | None = setting(
        None, "SM-DP+ address (FQDN, optionally :port) for contactDefaultSmdp when the eUICC has none; "
        "unset: the eUICC's own", pattern=_FQDN + r"(:\d{1,5})?")
    eim_port: int = setting(443, "TCP port of the default eIM", min=1, max=65535)
    eim_ca_file: Path | None = setting(
        None, "CA bundle (PEM) that eIM and SM-DP+ certificates must chain to; unset: the system trust store")
    eim_client_cert_file: Path | None = setting(
        None, "Client certificate (PEM) for mutual TLS to the eIM; its key path is credentials tls.eim_client_key_file")
    esipa_binding: Literal["asn1", "json"] = setting("asn1", "ESipa binding: asn1 (DER over HTTPS) or json")
    admin_protocol_version: str = setting(
        "2.1.0", "Version in the X-Admin-Protocol header of ESipa requests to the eIM (gsma/rsp/v<version>); "
        "ES9+ and ES11 requests send gsma/rsp/v2.2.0", pattern=r"\d+\.\d+\.\d+")
    polling_interval_s: float = setting(
        300.0, "Seconds between GetEimPackage polls of the eIM when nothing is pushed", min=5, max=86400)
    connect_timeout_s: float = setting(10.0, "TCP+TLS connect timeout for eIM, SM-DP+ and SM-DS", min=0.5, max=300)
    esipa_timeout_s: float = setting(60.0, "Timeout of one ESipa request", min=1, max=600)
    es9_timeout_s: float = setting(60.0, "Timeout of one ES9+ request to an SM-DP+", min=1, max=600)
    es11_timeout_s: float = setting(30.0, "Timeout of one ES11 request to an SM-DS", min=1, max=600)
    rearm_in_flight: int = setting(
        2, "Deliveries (results, notifications) of one device sent at once when their server answers "
        "again after failures, oldest first; each acknowledgement sends the next (0: each waits for its "
        "own backoff timer)", min=0, max=64)
    retry: RetrySection = table(RetrySection, "Backoff of retryable northbound failures")
    circuit_breaker: CircuitBreakerSection = table(CircuitBreakerSection, "Per-server circuit breaker")
    inject: InjectSection = table(InjectSection, "ESipa inject endpoint (eIM-initiated push)")
    initial_eim: InitialEimSection = table(InitialEimSection, "The default eIM given to eUICCs that have none")


@dataclass(frozen=True, slots=True)
class CoapSection:
    enabled: bool = setting(True, "Serve device agents over CoAP")
    listen: str = setting("::", "Address to bind (:: is every IPv6 and IPv4 address)", check=_listen_address)
    port: int = setting(5684, "UDP port (5684 is coaps, 5683 plain coap)", min=1, max=65535)
    dtls: bool = setting(True, "DTLS with a pre-shared key per device (identity bound to the EID)")
    allow_plain_lab: bool = setting(
        False, "Allow dtls = false; for a lab bench only: anyone on the network could act for a device")
    receive_buffer_bytes: int = setting(
        32 * 1024 * 1024, "UDP receive buffer of the CoAP socket: devices fetch their downlink blocks in "
        "parallel, so a fleet waking together sends bursts of thousands of small datagrams; capped by "
        "net.core.rmem_max (the package raises it to 32 MiB)", min=256 * 1024, max=1024 * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class MqttSection:
    enabled: bool = setting(False, "Serve device agents through an MQTT broker")
    broker_host: str | None = setting(None, "Broker host name or address (required when enabled)", check=_listen_address)
    broker_port: int = setting(8883, "Broker TCP port (8883 is MQTT over TLS)", min=1, max=65535)
    tls: bool = setting(True, "Connect to the broker over TLS")
    allow_plain_lab: bool = setting(False, "Allow tls = false; for a lab bench only")
    ca_file: Path | None = setting(None, "CA bundle (PEM) for the broker certificate; unset: the system trust store")
    client_id: str | None = setting(
        None, "MQTT client id (default: ipae-gateway-<gateway_id>)", pattern=r"[A-Za-z0-9._:-]{1,64}")
    topic_prefix: str = setting(
        "ipae", "Topic prefix; devices use <prefix>/<eid>/up and <prefix>/<eid>/down",
        pattern=r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
    username: str | None = setting(None, "Broker user name; its password is credentials mqtt.password")
    keepalive_s: int = setting(60, "MQTT keep-alive interval", min=5, max=3600)
    shared_group: str | None = setting(
        None, "MQTT 5 shared-subscription group, for several gateways on one broker", pattern=r"[A-Za-z0-9_-]{1,64}")


_BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


@dataclass(frozen=True, slots=True)
class SerialSection:
    enabled: bool = setting(False, "Drive modems on serial ports (AT+CSIM / AT+CGLA)")
    ports: tuple[str, ...] = setting(
        (), "Serial devices, one modem each (for example /dev/ttyUSB2)",
        check=lambda v: None if all(p.startswith("/dev/") for p in v) else "device paths under /dev/")
    baudrate: int = setting(115200, "Line speed", choices=_BAUD_RATES)
    segment_size: int = setting(
        255, "Largest APDU data field sent through the modem (AT+CSIM limits on some modems)", min=16, max=255)
    response_timeout_s: float = setting(5.0, "Time allowed for the modem to answer one AT command", min=0.1, max=120)


@dataclass(frozen=True, slots=True)
class LinksSection:
    coap: CoapSection = table(CoapSection, "CoAP / DTLS device link")
    mqtt: MqttSection = table(MqttSection, "MQTT device link")
    serial: SerialSection = table(SerialSection, "Serial modem link")


@dataclass(frozen=True, slots=True)
class ApiSection:
    socket_path: Path = setting(
        Path("/run/ipae-gateway/api.sock"), "Unix socket of the management API (used by the ipae-gateway CLI)")
    tcp_listen: str | None = setting(
        None, "Address for the API over TCP; unset: unix socket only. Needs credentials api.bearer_token",
        check=_listen_address)
    tcp_port: int = setting(8080, "TCP port of the API", min=1, max=65535)


@dataclass(frozen=True, slots=True)
class DeviceDefaultsSection:
    segment_size: int = setting(255, "STORE DATA segment size for devices that do not set one", min=16, max=255)
    max_batch_bytes: int | None = setting(
        None, "Largest APDU batch sent in one downlink, for agents that cannot stream; unset: the "
        "device's own report decides (a streaming agent applies any batch through a 4 KB buffer)",
        min=256, max=1024 * 1024)
    poll_interval_s: float = setting(
        3600.0, "Wake-up interval suggested to an idle device", min=1, max=7 * 86400)
    bpp_size_hint: int = setting(
        32 * 1024, "Bound Profile Package size announced (next_size_hint) with PrepareDownload, "
        "capped by the batch budget; a CoAP agent fetches that much with its uplink (0: nothing ahead)",
        min=0, max=MAX_MESSAGE)
    authenticate_server_size_hint: int = setting(
        2048, "AuthenticateServer size announced (next_size_hint) with the challenge "
        "(0: nothing ahead)", min=0, max=MAX_MESSAGE)


@dataclass(frozen=True, slots=True)
class GatewayFile:
    """The merged content of gateway.toml and its drop-ins."""

    gateway: GatewaySection = table(GatewaySection, "Identity, state and logging")
    store: StoreSection = table(StoreSection, "SQLite store")
    northbound: NorthboundSection = table(NorthboundSection, "eIM, SM-DP+ and SM-DS over HTTPS")
    links: LinksSection = table(LinksSection, "Device links")
    api: ApiSection = table(ApiSection, "Management API")
    device_defaults: DeviceDefaultsSection = table(DeviceDefaultsSection, "Per-device defaults")
    policies: PoliciesSection = table(PoliciesSection, "Policies")
