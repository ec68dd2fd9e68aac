"""The device fleet: which sensors this gateway serves and how each one reaches it.

A device is its EID (32 digits, ISO 7064 mod 97-10 check digits as every eUICC's EID) bound
to one link and one link identity: the DTLS PSK identity (CoAP), the MQTT user name (MQTT)
or the serial device path. The link adapter trusts the identity it authenticated and looks
the EID up here; an identity maps to exactly one EID and an EID to one identity.

Fleet files are TOML (`devices.d/*.toml`, each an array `[[device]]`) or CSV with a header
line (columns named as the TOML keys, empty cell = unset, lines starting with # ignored).
"""

from __future__ import annotations

import csv
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.model import DeviceDefaultsSection, LinkKind
from gateway.config.schema import Origins, build, setting
from gateway.errors import ConfigError


def eid_check_digits(first30: str) -> str:
    """The two check digits that complete a 30-digit EID prefix (ISO 7064 mod 97-10)."""
    return f"{98 - int(first30 + '00') % 97:02d}"


def _eid_problem(value: Any) -> str | None:
    text = str(value)
    if not re.fullmatch(r"\d{32}", text):
        return "an EID of 32 decimal digits"
    if int(text) % 97 != 1:
        return f"an EID with valid check digits (these 30 digits end in {eid_check_digits(text[:30])})"
    return None


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    eid: str = setting("", "EID, 32 digits", check=_eid_problem)
    link: LinkKind = setting("coap", "Link the device uses: coap, mqtt or serial")
    identity: str = setting(
        "", "DTLS PSK identity (coap), MQTT user name (mqtt) or serial device path (serial)",
        pattern=r"[A-Za-z0-9._:/@+-]{1,128}")
    name: str | None = setting(None, "Free label shown by the CLI")
    segment_size: int | None = setting(None, "Overrides device_defaults.segment_size", min=16, max=255)
    max_batch_bytes: int | None = setting(None, "Overrides device_defaults.max_batch_bytes", min=256, max=1024 * 1024)
    poll_interval_s: float | None = setting(None, "Overrides device_defaults.poll_interval_s", min=1, max=7 * 86400)


@dataclass(frozen=True, slots=True)
class DevicesFile:
    device: tuple[DeviceEntry, ...] = setting((), "The devices of this file")


@dataclass(frozen=True, slots=True)
class Device:
    """One device with its defaults applied."""

    eid: bytes
    link: LinkKind
    identity: str
    name: str | None
    segment_size: int
    max_batch_bytes: int | None
    poll_interval_s: float
    source: str

    @property
    def eid_text(self) -> str:
        return self.eid.hex()


Located = tuple[DeviceEntry, str, str]
"""A device entry with the file and the key (or CSV line) it was read from."""

_REQUIRED = ("eid", "link", "identity")
_INT_COLUMNS = ("segment_size", "max_batch_bytes")
_FLOAT_COLUMNS = ("poll_interval_s",)


def load_devices_toml(path: Path) -> list[Located]:
    data = read_toml(path)
    origins = Origins(str(path))
    parsed = build(DevicesFile, data, origins)
    for i, raw in enumerate(data.get("device", [])):
        _require(raw, origins, f"device[{i}]")
    return [(entry, str(path), f"device[{i}]") for i, entry in enumerate(parsed.device)]


def load_devices_csv(path: Path) -> list[Located]:
    """Import a fleet from CSV (header line naming the columns, as the TOML keys)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read device CSV: {exc}", file=str(path)) from exc
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return []
    reader = csv.reader([line for _, line in lines], strict=True)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise ConfigError(f"malformed CSV: {exc}", file=str(path)) from exc
    header = [h.strip() for h in rows[0]]
    known = set(DeviceEntry.__dataclass_fields__)
    for column in header:
        if column not in known:
            raise ConfigError(f"unknown column (known: {', '.join(sorted(known))})",
                              file=str(path), key=f"line {lines[0][0]}.{column or '<empty>'}")
    for column in _REQUIRED:
        if column not in header:
            raise ConfigError("missing required column", file=str(path), key=f"line {lines[0][0]}.{column}")
    out = []
    origins = Origins(str(path))
    for (lineno, _), row in zip(lines[1:], rows[1:]):
        prefix = f"line {lineno}"
        if len(row) != len(header):
            raise ConfigError(f"expected {len(header)} cells, got {len(row)}", file=str(path), key=prefix)
        raw: dict[str, Any] = {}
        for column, cell in zip(header, row):
            cell = cell.strip()
            if cell == "":
                continue
            raw[column] = _csv_value(column, cell, path, f"{prefix}.{column}")
        _require(raw, origins, prefix)
        out.append((build(DeviceEntry, raw, origins, prefix), str(path), prefix))
    return out


def _csv_value(column: str, cell: str, path: Path, key: str) -> Any:
    try:
        if column in _INT_COLUMNS:
            return int(cell)
        if column in _FLOAT_COLUMNS:
            return float(cell)
    except ValueError:
        kind = "an integer" if column in _INT_COLUMNS else "a number"
        raise ConfigError(f"expected {kind}, got {cell!r}", file=str(path), key=key) from None
    return cell


def _require(raw: Any, origins: Origins, prefix: str) -> None:
    for column in _REQUIRED:
        if isinstance(raw, dict) and column not in raw:
            raise ConfigError("missing required key", file=origins.file_of(prefix), key=f"{prefix}.{column}")


def resolve_fleet(entries: Iterable[Located], defaults: DeviceDefaultsSection) -> tuple[Device, ...]:
    """Apply defaults and refuse a second device with the same EID or link identity."""
    by_eid: dict[str, str] = {}
    by_identity: dict[tuple[str, str], str] = {}
    fleet = []
    for entry, file, key in entries:
        source = f"{file}:{key}"
        if entry.eid in by_eid:
            raise ConfigError(f"EID {entry.eid} already defined at {by_eid[entry.eid]}", file=file, key=f"{key}.eid")
        if (entry.link, entry.identity) in by_identity:
            raise ConfigError(f"{entry.link} identity {entry.identity!r} already bound at "
                              f"{by_identity[(entry.link, entry.identity)]}", file=file, key=f"{key}.identity")
        by_eid[entry.eid] = source
        by_identity[(entry.link, entry.identity)] = source
        fleet.append(Device(
            eid=bytes.fromhex(entry.eid), link=entry.link, identity=entry.identity, name=entry.name,
            segment_size=entry.segment_size if entry.segment_size is not None else defaults.segment_size,
            max_batch_bytes=entry.max_batch_bytes if entry.max_batch_bytes is not None else defaults.max_batch_bytes,
            poll_interval_s=entry.poll_interval_s if entry.poll_interval_s is not None else defaults.poll_interval_s,
            source=source))
    return tuple(fleet)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; a missing or malformed file is a ConfigError naming it."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(path)) from None
