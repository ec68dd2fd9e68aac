"""Store errors: what went wrong with the SQLite file, as classes the daemon can act on.

`translate()` is the one place where a `sqlite3.Error` becomes a `StoreError` subclass; it
reads the SQLite primary result code (Python 3.11 exposes it as `sqlite_errorcode`). Every
class says whether a retry can help (`retryable`): a full disk, a locked database or a
read-only file system may clear up while the daemon keeps running; a corrupt file or a schema
from a newer gateway will not.
"""

from __future__ import annotations

import sqlite3

from gateway.errors import StoreError

__all__ = [
    "StoreError", "StoreDiskFull", "StoreReadOnly", "StoreLocked", "StoreCorrupt", "StoreIOError",
    "StoreUnavailable", "StoreIntegrityError", "OutboxFull", "IdempotencyConflict", "StaleSession", "LinkIdentityTaken",
    "MigrationFailed", "SchemaTooNew", "NotAGatewayDatabase", "translate",
]

# SQLite primary result codes (https://sqlite.org/rescode.html)
SQLITE_PERM = 3
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_NOMEM = 7
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_CONSTRAINT = 19
SQLITE_NOTADB = 26


class StoreDiskFull(StoreError):
    """SQLITE_FULL: the file system (or the database's size limit) has no room left."""


class StoreReadOnly(StoreError):
    """SQLITE_READONLY / SQLITE_PERM: the file or its file system refuses writes."""


class StoreLocked(StoreError):
    """SQLITE_BUSY / SQLITE_LOCKED: another connection held the lock past the busy timeout."""


class StoreIOError(StoreError):
    """SQLITE_IOERR: the operating system failed a read, write or fsync."""


class StoreUnavailable(StoreError):
    """SQLITE_CANTOPEN: the file (or its directory) cannot be opened or created."""


class StoreCorrupt(StoreError):
    """SQLITE_CORRUPT / SQLITE_NOTADB: the file is damaged or not a database; needs an operator."""

    retryable = False


class StoreIntegrityError(StoreError):
    """SQLITE_CONSTRAINT: a write broke a schema constraint; a bug, retrying cannot help."""

    retryable = False


class OutboxFull(StoreError):
    """The outbox reached its configured bound; nothing was added, nothing stored was dropped.

    Retryable: the entry fits again once the backhaul drains the outbox.
    """

    def __init__(self, message: str, *, entries: int, payload_bytes: int) -> None:
        self.entries = entries
        self.payload_bytes = payload_bytes
        super().__init__(message)


class IdempotencyConflict(StoreError):
    """The same idempotency key came back with different bytes: never silently merged."""

    retryable = False


class StaleSession(StoreError):
    """A session write expected a version that another writer already replaced."""

    retryable = False


class LinkIdentityTaken(StoreError):
    """A device link identity (PSK identity, MQTT user, serial port) already maps to another EID."""

    retryable = False


class MigrationFailed(StoreError):
    """A schema upgrade step failed; the database was rolled back to its previous version."""

    retryable = False


class SchemaTooNew(StoreError):
    """The file was written by a newer gateway; an older one must not guess at its schema."""

    retryable = False


class NotAGatewayDatabase(StoreError):
    """A valid SQLite file that holds someone else's tables and no schema_version."""

    retryable = False


_BY_CODE: dict[int, tuple[type[StoreError], str]] = {
    SQLITE_FULL: (StoreDiskFull, "disk full"),
    SQLITE_READONLY: (StoreReadOnly, "database or file system is read-only"),
    SQLITE_PERM: (StoreReadOnly, "permission denied"),
    SQLITE_BUSY: (StoreLocked, "database is locked by another connection (busy timeout expired)"),
    SQLITE_LOCKED: (StoreLocked, "database table is locked"),
    SQLITE_IOERR: (StoreIOError, "I/O error (failing disk or file system gone read-only?)"),
    SQLITE_CORRUPT: (StoreCorrupt, "database file is corrupt"),
    SQLITE_NOTADB: (StoreCorrupt, "file is not an SQLite database"),
    SQLITE_CANTOPEN: (StoreUnavailable, "cannot open the database file"),
    SQLITE_NOMEM: (StoreError, "out of memory"),
    SQLITE_CONSTRAINT: (StoreIntegrityError, "constraint violated"),
}


def translate(exc: sqlite3.Error, action: str) -> StoreError:
    """Map a sqlite3 exception to the StoreError subclass for its result code.

    `action` names what the store was doing ("enqueue outbox entry", "open /var/lib/...").
    """
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if code is not None and (code & 0xFF) in _BY_CODE:
        cls, summary = _BY_CODE[code & 0xFF]
    else:
        cls, summary = StoreError, "database error"
    err = cls(f"{action}: {summary} [{name}: {exc}]")
    err.__cause__ = exc
    return err
