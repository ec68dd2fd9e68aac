"""Schema migrations: ordered steps, applied all-or-nothing, with a backup taken first.

The `schema_version` table holds one row per applied step (version, description, time).
Opening a database runs every step whose version is above the highest row:

- all pending steps run in ONE `BEGIN IMMEDIATE` transaction, each step inside its own
  savepoint; a failing step rolls the whole upgrade back, so the file stays exactly at its old
  version and the old gateway (or a fixed new one) still opens it. SQLite DDL is
  transactional, which is what makes this possible; a step must therefore not run VACUUM or
  change the journal mode.
- before upgrading a database that already holds data, a consistent copy is written next to
  it with SQLite's online backup API (`<name>.v<old>.bak`), for the operator who wants to go
  back to an older gateway release.
- a file whose version is above what this gateway knows is refused (`SchemaTooNew`): guessing
  at a newer schema could lose data.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.store.connection import Db
from gateway.store.errors import MigrationFailed, NotAGatewayDatabase, SchemaTooNew, StoreError, translate


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]


@dataclass(frozen=True, slots=True)
class MigrationReport:
    from_version: int
    to_version: int
    backup: Path | None


_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)"""


def current_version(db: Db) -> int:
    action = f"read schema version of {db.path}"
    tables = {r[0] for r in db.fetchall("SELECT name FROM sqlite_master WHERE type='table'", action=action)}
    if "schema_version" not in tables:
        if tables:
            raise NotAGatewayDatabase(
                f"{db.path}: holds tables {sorted(tables)} but no schema_version: not a gateway database")
        return 0
    row = db.fetchone("SELECT max(version) FROM schema_version", action=action)
    return int(row[0] or 0)


def check_steps(steps: Sequence[Migration]) -> None:
    versions = [m.version for m in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise ValueError(f"migration versions must be 1..n in order, got {versions}")


def migrate(db: Db, steps: Sequence[Migration], *, backup: bool = True) -> MigrationReport:
    """Bring the database to the last step's version (see the module docstring)."""
    check_steps(steps)
    target = len(steps)
    old = current_version(db)
    if old > target:
        raise SchemaTooNew(
            f"{db.path}: database schema is v{old}, this gateway knows up to v{target}; "
            "refusing to open it (upgrade the gateway, or restore a backup)")
    if old == target:
        return MigrationReport(old, old, None)
    backup_path = _backup(db, old) if backup and old > 0 else None
    step: Migration | None = None
    try:
        with db.atomic(f"migrate {db.path} from v{old} to v{target}") as conn:
            if current_version(db) != old:
                raise StoreError("another process changed the schema version while this one was upgrading")
            conn.execute(_VERSION_TABLE)
            for step in steps[old:]:
                with db.atomic(f"migration step v{step.version}"):
                    step.apply(conn)
                    conn.execute("INSERT INTO schema_version (version, description) VALUES (?, ?)",
                                 (step.version, step.description))
    except Exception as exc:
        where = f"v{step.version} ({step.description})" if step else "start"
        err = MigrationFailed(
            f"{db.path}: upgrade from v{old} to v{target} failed at step {where}: {exc}; "
            f"the database was left at v{old}")
        err.retryable = isinstance(exc, StoreError) and exc.retryable
        raise err from exc
    return MigrationReport(old, target, backup_path)


def _backup(db: Db, version: int) -> Path:
    target = db.path.with_name(f"{db.path.name}.v{version}.bak")
    try:
        dest = sqlite3.connect(target)
        try:
            db.conn.backup(dest)
        finally:
            dest.close()
    except sqlite3.Error as exc:
        raise translate(exc, f"back up {db.path} to {target} before migrating") from exc
    except OSError as exc:
        raise StoreError(f"back up {db.path} to {target} before migrating: {exc}") from exc
    return target
