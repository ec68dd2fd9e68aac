"""A newer gateway upgrades an older file; a failed upgrade leaves the old one exactly as it was."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from gateway.store import MigrationFailed, NotAGatewayDatabase, SchemaTooNew, Store
from gateway.store.migrations import Migration
from gateway.store.schema import MIGRATIONS

EID = bytes.fromhex("89049032123451234512345678901235")


def _add_priority(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE inbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX inbox_priority ON inbox (priority)")


def _half_done_then_fail(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE outbox ADD COLUMN doomed TEXT")
    conn.execute("DELETE FROM outbox")
    raise RuntimeError("injected failure in the middle of step v3")


LATEST = len(MIGRATIONS)
V2 = Migration(LATEST + 1, "inbox priority", _add_priority)          # the next release's step
V3_BROKEN = Migration(LATEST + 2, "broken step", _half_done_then_fail)


def _snapshot(path: Path) -> tuple[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    try:
        schema = "\n".join(r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"))
        rows = conn.execute("SELECT id, server, key, payload FROM outbox ORDER BY id").fetchall()
        return hashlib.sha256(schema.encode()).hexdigest(), rows
    finally:
        conn.close()


def _old_database(path: Path) -> None:
    with Store.open(path, migrations=MIGRATIONS) as s:
        s.outbox.enqueue("eim", "k1", "r", b"one", now=1.0)
        s.inbox.enqueue(EID, "p1", "pkg", b"pkg", origin="eim1", now=1.0)
        assert s.schema_version == LATEST


def test_a_new_database_starts_at_the_latest_version(db_path: Path) -> None:
    with Store.open(db_path) as s:
        assert s.schema_version == len(MIGRATIONS)
        assert (s.migration.from_version, s.migration.backup) == (0, None)


def test_newer_gateway_upgrades_an_older_database_and_keeps_a_backup(db_path: Path) -> None:
    _old_database(db_path)
    with Store.open(db_path, migrations=(*MIGRATIONS, V2)) as s:
        assert s.schema_version == LATEST + 1
        assert (s.migration.from_version, s.migration.to_version) == (LATEST, LATEST + 1)
        assert s.migration.backup == db_path.with_name(f"gateway.db.v{LATEST}.bak")
        assert [e.key for e in s.outbox.pending()] == ["k1"]
        assert s.inbox.find(EID, "p1") is not None
    with sqlite_utils.Database(db_path) as db:
        assert db["inbox"].columns_dict["priority"] is int  # type: ignore[union-attr]
        versions = [(r["version"], r["description"]) for r in db["schema_version"].rows]  # type: ignore[union-attr]
    assert versions == [(m.version, m.description) for m in MIGRATIONS] + [(LATEST + 1, "inbox priority")]
    with Store.open(db_path.with_name(f"gateway.db.v{LATEST}.bak"), migrations=MIGRATIONS) as backup:
        assert backup.schema_version == LATEST and [e.key for e in backup.outbox.pending()] == ["k1"]


def test_failed_upgrade_leaves_the_old_database_intact_and_openable(db_path: Path) -> None:
    _old_database(db_path)
    before = _snapshot(db_path)
    with pytest.raises(MigrationFailed) as info:
        Store.open(db_path, migrations=(*MIGRATIONS, V2, V3_BROKEN))
    assert f"v{LATEST + 2} (broken step)" in str(info.value) and f"left at v{LATEST}" in str(info.value)
    assert not info.value.retryable
    assert _snapshot(db_path) == before  # v2 was rolled back too: all or nothing
    with Store.open(db_path, migrations=MIGRATIONS) as s:
        assert s.schema_version == LATEST
        assert [(e.key, e.payload) for e in s.outbox.pending()] == [("k1", b"one")]
    with Store.open(db_path, migrations=(*MIGRATIONS, V2)) as s:  # the fixed release upgrades fine
        assert s.schema_version == LATEST + 1


def test_a_database_from_a_newer_gateway_is_refused(db_path: Path) -> None:
    with Store.open(db_path, migrations=(*MIGRATIONS, V2)):
        pass
    with pytest.raises(SchemaTooNew, match=f"v{LATEST + 1}.*knows up to v{LATEST}"):
        Store.open(db_path, migrations=MIGRATIONS)


def test_someone_elses_database_is_refused(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(NotAGatewayDatabase, match="photos"):
        Store.open(db_path)


def test_migration_versions_must_be_contiguous(db_path: Path) -> None:
    with pytest.raises(ValueError):
        Store.open(db_path, migrations=(*MIGRATIONS, Migration(LATEST + 2, "gap", _add_priority)))
