"""Device registry: which sensor is behind which link identity, and what the gateway knows of it.

A device is keyed by its EID. Its link identity (DTLS PSK identity, MQTT user name, serial
port) maps to exactly one EID: registering a second EID on a taken identity is refused
(`LinkIdentityTaken`), which is what lets a link adapter refuse an uplink for someone else's
EID. The IMEI binding and the quarantine flag let the service refuse a device moved into
another host module. The eIM configuration is the raw GetEimConfigurationData response bytes
learnt from the eUICC; the last reported status is JSON.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import LocalProtocolError, UnknownDevice
from gateway.store.connection import Db
from gateway.store.errors import LinkIdentityTaken, translate


@dataclass(frozen=True, slots=True)
class Device:
    eid: bytes
    link_kind: str
    link_identity: str
    imei: str | None
    quarantined: bool
    quarantine_reason: str | None
    eim_config: bytes | None
    last_contact: float | None
    last_status: dict[str, Any] | None
    group: str | None
    tags: tuple[str, ...]
    created_at: float
    updated_at: float


_COLUMNS = ("eid, link_kind, link_identity, imei, quarantined, quarantine_reason, eim_config, "
            "last_contact, last_status, device_group, tags, created_at, updated_at")


def _device(row: tuple[Any, ...]) -> Device:
    return Device(
        eid=bytes(row[0]), link_kind=row[1], link_identity=row[2], imei=row[3],
        quarantined=bool(row[4]), quarantine_reason=row[5],
        eim_config=None if row[6] is None else bytes(row[6]), last_contact=row[7],
        last_status=None if row[8] is None else json.loads(row[8]), group=row[9],
        tags=tuple(json.loads(row[10])), created_at=row[11], updated_at=row[12])


def dumps_json(value: Mapping[str, Any], what: str) -> str:
    try:
        return json.dumps(dict(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"{what} is not JSON-serialisable: {exc}") from exc


class Devices:
    def __init__(self, db: Db) -> None:
        self._db = db

    def register(self, eid: bytes, link_kind: str, link_identity: str, *, now: float,
                 group: str | None = None, tags: Iterable[str] = ()) -> Device:
        """Add a device, or return it unchanged when it is already registered on this link."""
        action = f"register device {eid.hex()}"
        with self._db.atomic(action):
            existing = self.get(eid)
            if existing is not None:
                if (existing.link_kind, existing.link_identity) != (link_kind, link_identity):
                    raise LinkIdentityTaken(
                        f"{action}: EID already registered on {existing.link_kind} "
                        f"{existing.link_identity!r}; use rebind() to move it")
                return existing
            try:
                self._db.conn.execute(
                    f"INSERT INTO devices ({_COLUMNS}) VALUES (?, ?, ?, NULL, 0, NULL, NULL, NULL, NULL, ?, ?, ?, ?)",
                    (eid, link_kind, link_identity, group, json.dumps(sorted(set(tags))), now, now))
            except sqlite3.IntegrityError as exc:
                raise LinkIdentityTaken(
                    f"{action}: {link_kind} identity {link_identity!r} already belongs to another EID") from exc
            except sqlite3.Error as exc:
                raise translate(exc, action) from exc
        device = self.get(eid)
        assert device is not None
        return device

    def rebind(self, eid: bytes, link_kind: str, link_identity: str, *, now: float) -> None:
        """Move a device to another link identity (an operator action)."""
        self._update(eid, "link_kind = ?, link_identity = ?", (link_kind, link_identity), now,
                     f"rebind device {eid.hex()}")

    def get(self, eid: bytes) -> Device | None:
        row = self._db.fetchone(f"SELECT {_COLUMNS} FROM devices WHERE eid = ?", (eid,),
                                action=f"read device {eid.hex()}")
        return None if row is None else _device(row)

    def require(self, eid: bytes) -> Device:
        device = self.get(eid)
        if device is None:
            raise UnknownDevice(f"EID {eid.hex()} is not registered")
        return device

    def by_link(self, link_kind: str, link_identity: str) -> Device | None:
        row = self._db.fetchone(
            f"SELECT {_COLUMNS} FROM devices WHERE link_kind = ? AND link_identity = ?",
            (link_kind, link_identity), action=f"look up {link_kind} identity {link_identity!r}")
        return None if row is None else _device(row)

    def list(self, *, group: str | None = None, tag: str | None = None) -> list[Device]:
        sql = f"SELECT {_COLUMNS} FROM devices WHERE 1"
        params: list[Any] = []
        if group is not None:
            sql += " AND device_group = ?"
            params.append(group)
        if tag is not None:
            sql += " AND EXISTS (SELECT 1 FROM json_each(devices.tags) WHERE value = ?)"
            params.append(tag)
        return [_device(r) for r in self._db.fetchall(sql + " ORDER BY eid", params, action="list devices")]

    def bind_imei(self, eid: bytes, imei: str | None, *, now: float) -> None:
        self._update(eid, "imei = ?", (imei,), now, f"bind IMEI of {eid.hex()}")

    def set_quarantine(self, eid: bytes, quarantined: bool, *, reason: str | None = None, now: float) -> None:
        self._update(eid, "quarantined = ?, quarantine_reason = ?",
                     (int(quarantined), reason if quarantined else None), now, f"quarantine {eid.hex()}")

    def set_eim_config(self, eid: bytes, eim_config: bytes, *, now: float) -> None:
        """Store the GetEimConfigurationData response (BF55) exactly as the eUICC sent it."""
        self._update(eid, "eim_config = ?", (eim_config,), now, f"store eIM configuration of {eid.hex()}")

    def record_contact(self, eid: bytes, *, now: float, status: Mapping[str, Any] | None = None) -> None:
        if status is None:
            self._update(eid, "last_contact = ?", (now,), now, f"record contact of {eid.hex()}")
        else:
            self._update(eid, "last_contact = ?, last_status = ?",
                         (now, dumps_json(status, "device status")), now, f"record status of {eid.hex()}")

    def set_group(self, eid: bytes, group: str | None, tags: Iterable[str], *, now: float) -> None:
        self._update(eid, "device_group = ?, tags = ?", (group, json.dumps(sorted(set(tags)))), now,
                     f"set group of {eid.hex()}")

    def _update(self, eid: bytes, assignments: str, params: tuple[Any, ...], now: float, action: str) -> None:
        with self._db.atomic(action) as conn:
            try:
                cur = conn.execute(f"UPDATE devices SET {assignments}, updated_at = ? WHERE eid = ?",
                                   (*params, now, eid))
            except sqlite3.IntegrityError as exc:
                raise LinkIdentityTaken(f"{action}: {exc}") from exc
            if cur.rowcount == 0:
                raise UnknownDevice(f"{action}: EID {eid.hex()} is not registered")
