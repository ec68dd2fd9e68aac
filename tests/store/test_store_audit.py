"""The audit log is append-only, queryable, purged only by retention, exported as JSON lines."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import LocalProtocolError
from gateway.store import Store, StoreIntegrityError
from gateway.store.audit import DAY_S

EID_A = bytes.fromhex("89049032123451234512345678901235")
EID_B = bytes.fromhex("89049032123451234512345678901236")


def _fill(store: Store) -> None:
    store.audit.append(time=1 * DAY_S, eid=EID_A, iccid="8988211000000000001", operation="EnableProfile",
                       origin_eim="eim1", origin_tx=b"\x01\x02", result="ok", detail={"seq": 1})
    store.audit.append(time=2 * DAY_S, eid=EID_B, operation="ProfileDownload", result="installed",
                       detail={"iccid": "8988211000000000002"})
    store.audit.append(time=3 * DAY_S, eid=EID_A, operation="DisableProfile", result="error",
                       detail={"sw": "6A88"})


def test_update_and_delete_are_refused_by_the_database_itself(store: Store, db_path: Path) -> None:
    _fill(store)
    conn = store._db.conn
    with pytest.raises(sqlite3.IntegrityError, match="append-only: UPDATE"):
        conn.execute("UPDATE audit SET result = 'ok'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only: DELETE"):
        conn.execute("DELETE FROM audit WHERE operation = 'DisableProfile'")
    other = sqlite3.connect(db_path)  # another program on the same file
    try:
        with pytest.raises(sqlite3.OperationalError, match="ipae_audit_purge_allowed"):
            other.execute("DELETE FROM audit")
        with pytest.raises(sqlite3.IntegrityError):
            other.execute("UPDATE audit SET eid = NULL")
    finally:
        other.close()
    assert len(store.audit.query()) == 3


def test_a_refused_change_inside_the_store_surfaces_as_a_store_error(store: Store) -> None:
    _fill(store)
    with pytest.raises(StoreIntegrityError) as info:
        store._db.execute("UPDATE audit SET result = 'x'", action="tamper")
    assert not info.value.retryable


def test_query_by_eid_time_and_operation(store: Store) -> None:
    _fill(store)
    assert [r.operation for r in store.audit.query(eid=EID_A)] == ["EnableProfile", "DisableProfile"]
    assert [r.operation for r in store.audit.query(since=2 * DAY_S)] == ["ProfileDownload", "DisableProfile"]
    assert [r.operation for r in store.audit.query(until=2 * DAY_S)] == ["EnableProfile"]
    assert [r.eid for r in store.audit.query(operation="ProfileDownload")] == [EID_B]
    first = store.audit.query(limit=1)[0]
    assert (first.iccid, first.origin_eim, first.origin_tx, first.detail) == (
        "8988211000000000001", "eim1", b"\x01\x02", {"seq": 1})


def test_retention_purge_deletes_only_old_records(store: Store) -> None:
    _fill(store)
    assert store.audit.purge(retention_days=1.5, now=3 * DAY_S) == 1
    assert [r.operation for r in store.audit.query()] == ["ProfileDownload", "DisableProfile"]
    with pytest.raises(sqlite3.IntegrityError):  # the purge path closed behind itself
        store._db.conn.execute("DELETE FROM audit")
    with pytest.raises(ValueError):
        store.audit.purge(retention_days=0, now=3 * DAY_S)


def test_export_is_json_lines_with_hex_bytes(store: Store) -> None:
    _fill(store)
    out = io.StringIO()
    assert store.audit.export_jsonl(out, eid=EID_A) == 2
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {
        "id": 1, "time": DAY_S, "time_utc": "1970-01-02T00:00:00Z", "eid": EID_A.hex(),
        "iccid": "8988211000000000001", "operation": "EnableProfile",
        "origin": {"eim_id": "eim1", "transaction_id": "0102"}, "result": "ok", "detail": {"seq": 1},
    }
    assert lines[1]["result"] == "error"


def test_detail_must_be_json(store: Store) -> None:
    with pytest.raises(LocalProtocolError):
        store.audit.append(time=1.0, operation="x", result="ok", detail={"b": b"\x00"})
    assert store.audit.query() == []
