"""Audit log: one append-only row per eUICC state change and per operation.

Rows are never changed: triggers in the schema refuse UPDATE always and DELETE unless the
connection says a retention purge is running (`ipae_audit_purge_allowed()`, a function registered
on the gateway's own connection by connection.Db and turned on only inside `purge()`). A
record carries the time (from the caller's clock), EID, ICCID, operation (an ES10b/ESipa
function name such as "EnableProfile" or "ProvideEimPackageResult"), origin (eIM id and
eimTransactionId), result, and a JSON detail object.

Exports are JSON lines: one object per record, bytes as lower-case hex, time as both epoch
seconds and ISO 8601 UTC.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

import sqlite_utils

from gateway.store.connection import Db
from gateway.store.devices import dumps_json
from gateway.store.errors import translate

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    time: float
    eid: bytes | None
    iccid: str | None
    operation: str
    origin_eim: str | None
    origin_tx: bytes | None
    result: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "time_utc": datetime.fromtimestamp(self.time, timezone.utc).isoformat().replace("+00:00", "Z"),
            "eid": None if self.eid is None else self.eid.hex(),
            "iccid": self.iccid,
            "operation": self.operation,
            "origin": {"eim_id": self.origin_eim,
                       "transaction_id": None if self.origin_tx is None else self.origin_tx.hex()},
            "result": self.result,
            "detail": self.detail,
        }


def _record(row: Mapping[str, Any]) -> AuditRecord:
    return AuditRecord(
        id=row["id"], time=row["time"], eid=None if row["eid"] is None else bytes(row["eid"]),
        iccid=row["iccid"], operation=row["operation"], origin_eim=row["origin_eim"],
        origin_tx=None if row["origin_tx"] is None else bytes(row["origin_tx"]), result=row["result"],
        detail=json.loads(row["detail"]))


class AuditLog:
    def __init__(self, db: Db) -> None:
        self._db = db
        self._utils = sqlite_utils.Database(db.conn, execute_plugins=False)

    def append(self, *, time: float, operation: str, result: str, eid: bytes | None = None,
               iccid: str | None = None, origin_eim: str | None = None, origin_tx: bytes | None = None,
               detail: Mapping[str, Any] | None = None) -> int:
        detail_json = dumps_json(detail or {}, "audit detail")
        with self._db.atomic(f"append audit record {operation}") as conn:
            cur = conn.execute(
                "INSERT INTO audit (time, eid, iccid, operation, origin_eim, origin_tx, result, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (time, eid, iccid, operation, origin_eim, origin_tx, result, detail_json))
            assert cur.lastrowid is not None
            return cur.lastrowid

    def query(self, *, eid: bytes | None = None, operation: str | None = None, since: float | None = None,
              until: float | None = None, limit: int | None = None) -> list[AuditRecord]:
        """Records matching every given filter, oldest first; `until` is exclusive."""
        return list(self._iter(eid=eid, operation=operation, since=since, until=until, limit=limit))

    def export_jsonl(self, out: TextIO, *, eid: bytes | None = None, operation: str | None = None,
                     since: float | None = None, until: float | None = None) -> int:
        count = 0
        for record in self._iter(eid=eid, operation=operation, since=since, until=until, limit=None):
            out.write(json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")) + "\n")
            count += 1
        return count

    def purge(self, *, retention_days: float, now: float) -> int:
        """Delete records older than the retention; the only deletion the triggers allow."""
        if retention_days <= 0:
            raise ValueError("retention_days must be positive")
        cutoff = now - retention_days * DAY_S
        with self._db.atomic("purge audit records past retention") as conn:
            self._db.audit_purge_allowed = True
            try:
                return conn.execute("DELETE FROM audit WHERE time < ?", (cutoff,)).rowcount
            finally:
                self._db.audit_purge_allowed = False

    def _iter(self, *, eid: bytes | None, operation: str | None, since: float | None, until: float | None,
              limit: int | None) -> Iterator[AuditRecord]:
        where = []
        params: list[Any] = []
        for clause, value in (("eid = ?", eid), ("operation = ?", operation), ("time >= ?", since),
                              ("time < ?", until)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY time, id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        try:
            for row in self._utils.query(sql, params):
                yield _record(row)
        except sqlite3.Error as exc:
            raise translate(exc, "query audit log") from exc
