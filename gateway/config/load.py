"""Loading the whole configuration: gateway.toml, its drop-ins, credentials and the fleet.

Order: `gateway.toml`, then `gateway.d/*.toml` in name order, deep-merged (a drop-in's table
merges key by key into the main file's; an array or a plain value replaces the earlier one).
Then the credentials file, then the fleet (`devices.d/*.toml` in name order, then the CSV
file if configured). Cross-checks run last, on the merged result, and name the key that
has to change: a device on a disabled link, a CoAP device without a PSK, plain CoAP or MQTT
without the lab flag, a TCP API without a bearer token, an MQTT user without a password.

The result is one frozen `Config`. Reloading (SIGHUP) is calling `load_config` again and
swapping the object.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.credentials import DTLS_PSK_IDENTITY_MAX, Credentials, check_permissions
from gateway.config.devices import Device, Located, load_devices_csv, load_devices_toml, read_toml, resolve_fleet
from gateway.config.model import (
    ApiSection,
    DeviceDefaultsSection,
    GatewayFile,
    GatewaySection,
    LinksSection,
    NorthboundSection,
    StoreSection,
)
from gateway.config.policies import PoliciesSection, check_policies
from gateway.config.schema import Origins, build, dotted
from gateway.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/ipae-gateway/gateway.toml")
DROPIN_DIR = "gateway.d"


@dataclass(frozen=True, slots=True)
class Config:
    gateway: GatewaySection
    store: StoreSection
    northbound: NorthboundSection
    links: LinksSection
    api: ApiSection
    device_defaults: DeviceDefaultsSection
    policies: PoliciesSection
    credentials: Credentials
    devices: tuple[Device, ...]
    sources: tuple[Path, ...]
    """Every file read, in order (for check-config and the reload log line)."""

    @property
    def gateway_id(self) -> str:
        return self.gateway.gateway_id or os.uname().nodename

    @property
    def mqtt_client_id(self) -> str:
        return self.links.mqtt.client_id or f"ipae-gateway-{self.gateway_id}"[:64]

    def device_by_eid(self, eid: bytes) -> Device | None:
        return next((d for d in self.devices if d.eid == eid), None)

    def device_by_identity(self, link: str, identity: str) -> Device | None:
        return next((d for d in self.devices if d.link == link and d.identity == identity), None)


def load_config(path: Path = DEFAULT_CONFIG) -> Config:
    """Read, merge and validate everything; any problem is a ConfigError naming file and key."""
    path = Path(path)
    base = path.parent
    merged, origins, sources = _merge_with_dropins(path)
    parsed = build(GatewayFile, merged, origins)
    parsed = _resolve_paths(parsed, base)

    creds_path = parsed.gateway.credentials_file
    credentials = Credentials()
    if creds_path.exists():
        check_permissions(creds_path)
        credentials = build(Credentials, read_toml(creds_path), Origins(str(creds_path)))
        credentials = dataclasses.replace(credentials, tls=_resolve_fields(credentials.tls, base))
        sources.append(creds_path)

    entries: list[Located] = []
    devices_dir = parsed.gateway.devices_dir
    if devices_dir.is_dir():
        for file in sorted(devices_dir.glob("*.toml")):
            entries.extend(load_devices_toml(file))
            sources.append(file)
    elif devices_dir.exists():
        raise ConfigError("not a directory", file=origins.file_of("gateway.devices_dir"), key="gateway.devices_dir")
    if parsed.gateway.devices_csv is not None:
        entries.extend(load_devices_csv(parsed.gateway.devices_csv))
        sources.append(parsed.gateway.devices_csv)
    devices = resolve_fleet(entries, parsed.device_defaults)

    config = Config(
        gateway=parsed.gateway, store=parsed.store, northbound=parsed.northbound, links=parsed.links,
        api=parsed.api, device_defaults=parsed.device_defaults, policies=parsed.policies,
        credentials=credentials, devices=devices, sources=tuple(sources))
    _cross_check(config, origins, creds_path, entries)
    return config


def _merge_with_dropins(path: Path) -> tuple[dict[str, Any], Origins, list[Path]]:
    origins = Origins(str(path))
    merged: dict[str, Any] = {}
    sources = [path]
    _deep_merge(merged, read_toml(path), origins, str(path), "")
    dropins = path.parent / DROPIN_DIR
    if dropins.is_dir():
        for file in sorted(dropins.glob("*.toml")):
            _deep_merge(merged, read_toml(file), origins, str(file), "")
            sources.append(file)
    return merged, origins, sources


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any], origins: Origins, file: str, prefix: str) -> None:
    for key, value in new.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value, origins, file, dotted)
        else:
            into[key] = value
            origins.record(dotted, file)
            if isinstance(value, dict):
                _record_all(value, origins, file, dotted)


def _record_all(table: Mapping[str, Any], origins: Origins, file: str, prefix: str) -> None:
    for key, value in table.items():
        origins.record(f"{prefix}.{key}", file)
        if isinstance(value, dict):
            _record_all(value, origins, file, f"{prefix}.{key}")


def _resolve_fields(obj: Any, base: Path) -> Any:
    """Make every relative Path field of a dataclass (and its sub-tables) relative to `base`."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Path) and not value.is_absolute():
            changes[f.name] = base / value
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = _resolve_fields(value, base)
    return dataclasses.replace(obj, **changes) if changes else obj


def _resolve_paths(parsed: GatewayFile, base: Path) -> GatewayFile:
    store = parsed.store
    resolved: GatewayFile = _resolve_fields(dataclasses.replace(parsed, store=StoreSection()), base)
    state_dir = resolved.gateway.state_dir
    db_path = store.db_path if store.db_path.is_absolute() else state_dir / store.db_path
    return dataclasses.replace(resolved, store=dataclasses.replace(store, db_path=db_path))


def _cross_check(config: Config, origins: Origins, creds_path: Path, entries: list[Located]) -> None:
    links = config.links
    creds = str(creds_path)

    def at(key: str) -> str:
        return origins.file_of(key)

    if not links.coap.dtls and not links.coap.allow_plain_lab:
        raise ConfigError("plain CoAP (dtls = false) lets anyone act for a device; set "
                          "links.coap.allow_plain_lab = true on a lab bench only", file=at("links.coap.dtls"),
                          key="links.coap.dtls")
    mqtt = links.mqtt
    if mqtt.enabled and mqtt.broker_host is None:
        raise ConfigError("required when links.mqtt.enabled = true", file=at("links.mqtt"), key="links.mqtt.broker_host")
    if mqtt.enabled and not mqtt.tls and not mqtt.allow_plain_lab:
        raise ConfigError("MQTT without TLS sends device traffic in clear; set links.mqtt.allow_plain_lab = true "
                          "on a lab bench only", file=at("links.mqtt.tls"), key="links.mqtt.tls")
    if mqtt.enabled and mqtt.username is not None and config.credentials.mqtt.password is None:
        raise ConfigError(f"required because links.mqtt.username is set (in {at('links.mqtt.username')})",
                          file=creds, key="mqtt.password")
    if links.serial.enabled and not links.serial.ports:
        raise ConfigError("at least one port is required when links.serial.enabled = true",
                          file=at("links.serial"), key="links.serial.ports")
    if config.api.tcp_listen is not None and config.credentials.api.bearer_token is None:
        raise ConfigError(f"required because api.tcp_listen is set (in {at('api.tcp_listen')})",
                          file=creds, key="api.bearer_token")
    nb = config.northbound
    if nb.inject.listen is not None:
        if nb.inject.tls_cert_file is None:
            raise ConfigError("required when northbound.inject.listen is set", file=at("northbound.inject"),
                              key="northbound.inject.tls_cert_file")
        if config.credentials.tls.inject_key_file is None:
            raise ConfigError("required when northbound.inject.listen is set", file=creds, key="tls.inject_key_file")
    if nb.eim_client_cert_file is not None and config.credentials.tls.eim_client_key_file is None:
        raise ConfigError("required when northbound.eim_client_cert_file is set", file=creds,
                          key="tls.eim_client_key_file")
    if nb.initial_eim.enabled:
        for key, value in (("northbound.eim_fqdn", nb.eim_fqdn),
                           ("northbound.initial_eim.certificate_file", nb.initial_eim.certificate_file)):
            if value is None:
                raise ConfigError("required when northbound.initial_eim.enabled = true",
                                  file=at("northbound.initial_eim"), key=key)

    check_policies(config.policies, has_webhook_secret=config.credentials.webhooks.hmac_secret is not None,
                   file_of=at, credentials_file=creds)

    enabled = {"coap": links.coap.enabled, "mqtt": links.mqtt.enabled, "serial": links.serial.enabled}
    for entry, file, key in entries:
        if not enabled[entry.link]:
            raise ConfigError(f"device uses link {entry.link!r}, which is not enabled (links.{entry.link}.enabled)",
                              file=file, key=f"{key}.link")
        if entry.link == "coap" and not 1 <= len(entry.identity.encode()) <= DTLS_PSK_IDENTITY_MAX:
            raise ConfigError(f"a DTLS PSK identity of 1 to {DTLS_PSK_IDENTITY_MAX} bytes (the DTLS stack takes no "
                              "longer one, docs/dtls-limits.md)", file=file, key=f"{key}.identity")
        if entry.link == "coap" and links.coap.dtls and entry.identity not in config.credentials.dtls_psk:
            raise ConfigError(f"no DTLS PSK for the identity of device {entry.eid} ({file} {key})",
                              file=creds, key=dotted("dtls_psk", entry.identity))
        if entry.link == "serial" and entry.identity not in links.serial.ports:
            raise ConfigError("a serial device's identity must be one of links.serial.ports",
                              file=file, key=f"{key}.identity")
