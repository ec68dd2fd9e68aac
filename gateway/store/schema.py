"""The gateway's schema, as the ordered list of migration steps that builds it.

Append a step to change the schema; never edit a released one (a gateway in the field has
already applied it). Times are REAL seconds since the epoch, taken from the caller's injected
clock; EIDs and transaction ids are BLOBs (bytes inside, hex only when exported); idempotency
keys, server names and link identities are TEXT.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from gateway.store.migrations import Migration

_V1 = """
CREATE TABLE devices (
    eid               BLOB PRIMARY KEY,
    link_kind         TEXT NOT NULL,
    link_identity     TEXT NOT NULL,
    imei              TEXT,
    quarantined       INTEGER NOT NULL DEFAULT 0 CHECK (quarantined IN (0, 1)),
    quarantine_reason TEXT,
    eim_config        BLOB,
    last_contact      REAL,
    last_status       TEXT CHECK (last_status IS NULL OR json_valid(last_status)),
    device_group      TEXT,
    tags              TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tags)),
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    UNIQUE (link_kind, link_identity)
);
CREATE INDEX devices_group ON devices (device_group);

CREATE TABLE inbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    eid        BLOB NOT NULL,
    key        TEXT NOT NULL,
    origin     TEXT,
    kind       TEXT NOT NULL,
    payload    BLOB NOT NULL,
    state      TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'in_progress', 'done')),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (eid, key)
);
CREATE INDEX inbox_open ON inbox (eid, id) WHERE state != 'done';

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    server          TEXT NOT NULL,
    key             TEXT NOT NULL,
    kind            TEXT NOT NULL,
    eid             BLOB,
    payload         BLOB NOT NULL,
    size            INTEGER NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'acked')),
    created_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_until     REAL,
    last_error      TEXT,
    acked_at        REAL,
    UNIQUE (server, key)
);
CREATE INDEX outbox_pending ON outbox (server, id) WHERE state = 'pending';
CREATE INDEX outbox_acked ON outbox (acked_at) WHERE state = 'acked';

-- running totals of pending entries, so the bound is checked without counting rows
CREATE TABLE outbox_usage (
    one     INTEGER PRIMARY KEY CHECK (one = 1),
    entries INTEGER NOT NULL,
    bytes   INTEGER NOT NULL
);
INSERT INTO outbox_usage VALUES (1, 0, 0);
CREATE TRIGGER outbox_usage_insert AFTER INSERT ON outbox WHEN new.state = 'pending' BEGIN
    UPDATE outbox_usage SET entries = entries + 1, bytes = bytes + new.size;
END;
CREATE TRIGGER outbox_usage_ack AFTER UPDATE OF state ON outbox
WHEN old.state = 'pending' AND new.state != 'pending' BEGIN
    UPDATE outbox_usage SET entries = entries - 1, bytes = bytes - old.size;
END;
CREATE TRIGGER outbox_usage_delete AFTER DELETE ON outbox WHEN old.state = 'pending' BEGIN
    UPDATE outbox_usage SET entries = entries - 1, bytes = bytes - old.size;
END;

CREATE TABLE breakers (
    server     TEXT PRIMARY KEY,
    state      TEXT NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    failures   INTEGER NOT NULL,
    opened_at  REAL,
    open_s     REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE sessions (
    eid        BLOB PRIMARY KEY,
    state      TEXT NOT NULL,
    blob       BLOB NOT NULL,
    version    INTEGER NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    time       REAL NOT NULL,
    eid        BLOB,
    iccid      TEXT,
    operation  TEXT NOT NULL,
    origin_eim TEXT,
    origin_tx  BLOB,
    result     TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail))
);
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_eid_time ON audit (eid, time);
CREATE INDEX audit_operation_time ON audit (operation, time);

-- Append-only. The retention purge is the one path allowed to delete: it is the only code
-- that makes ipae_audit_purge_allowed() (a function the gateway registers on its own
-- connection) return 1. Any other connection (sqlite3 shell, another program) lacks the
-- function, so its DELETE fails as well.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit WHEN NOT ipae_audit_purge_allowed() BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused outside the retention purge');
END;
"""


def _script(script: str) -> Callable[[sqlite3.Connection], None]:
    """A migration step that runs `script`, statement by statement, in the open transaction."""
    statements = _split(script)

    def run(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)
    return run


def _split(script: str) -> list[str]:
    """Split a script into statements (executescript() would COMMIT the open transaction)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--") and not current.strip():
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        raise ValueError(f"incomplete SQL statement in schema: {current.strip()[:60]!r}")
    return statements


_V2 = """
CREATE TABLE policy_state (
    eid        BLOB NOT NULL,
    kind       TEXT NOT NULL,
    blob       TEXT NOT NULL CHECK (json_valid(blob)),
    updated_at REAL NOT NULL,
    PRIMARY KEY (eid, kind)
);
"""


# the engine's deliveries waiting for the backhaul (gateway/store/deliveries.py): counted in
# outbox_usage with the outbox's own entries, so one bound and one alarm cover both
_V3 = """
CREATE TABLE deliveries (
    eid             BLOB NOT NULL,
    key             TEXT NOT NULL,
    kind            TEXT NOT NULL,
    server          TEXT NOT NULL,
    function        TEXT NOT NULL,
    size            INTEGER NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at REAL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    PRIMARY KEY (eid, key)
);
CREATE INDEX deliveries_server ON deliveries (server, created_at);
CREATE TRIGGER deliveries_usage_insert AFTER INSERT ON deliveries BEGIN
    UPDATE outbox_usage SET entries = entries + 1, bytes = bytes + new.size;
END;
CREATE TRIGGER deliveries_usage_update AFTER UPDATE OF size ON deliveries BEGIN
    UPDATE outbox_usage SET bytes = bytes - old.size + new.size;
END;
CREATE TRIGGER deliveries_usage_delete AFTER DELETE ON deliveries BEGIN
    UPDATE outbox_usage SET entries = entries - 1, bytes = bytes - old.size;
END;
"""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "devices, inbox, outbox, breakers, sessions, append-only audit log", _script(_V1)),
    Migration(2, "edge-policy state (fallback, roaming, wave) per EID and kind", _script(_V2)),
    Migration(3, "the engine's deliveries waiting for the backhaul, counted in the outbox usage", _script(_V3)),
)
