"""Inbox: per-EID work waiting for a sleeping device (eIM packages, download orders).

Each entry carries an idempotency key chosen by the caller (eIM id + eimTransactionId, or a
hash of the package bytes: `package_key()`). `enqueue` with a key already present adds
nothing and says so, whatever state the entry is in: an eIM that pushes the same package
again after the gateway ran it gets the old entry back, not a second run. The same key with
different bytes is refused (`IdempotencyConflict`).

States: queued -> in_progress -> done. `next_for(eid)` returns the entry in progress first
(the one a crash interrupted), then the oldest queued one, so a device works through its
inbox in arrival order. The state change to done is meant to be committed in the same
`Store.transaction()` as the session state and the outbox result it produced.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from gateway.store.connection import Db
from gateway.store.errors import IdempotencyConflict

InboxState = Literal["queued", "in_progress", "done"]


@dataclass(frozen=True, slots=True)
class InboxEntry:
    id: int
    eid: bytes
    key: str
    origin: str | None
    kind: str
    payload: bytes
    state: InboxState
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class InboxEnqueued:
    id: int
    new: bool
    state: InboxState


def transaction_key(eim_id: str, eim_transaction_id: bytes) -> str:
    """The idempotency key of an eIM package that carries an eimTransactionId (SGP.32 §2.11)."""
    return f"eim:{eim_id}/tx:{eim_transaction_id.hex()}"


def package_key(payload: bytes) -> str:
    """An idempotency key from the package bytes, for packages without a transaction id."""
    return "sha256:" + hashlib.sha256(payload).hexdigest()


_COLUMNS = "id, eid, key, origin, kind, payload, state, created_at, updated_at"


def _entry(row: tuple[Any, ...]) -> InboxEntry:
    return InboxEntry(id=row[0], eid=bytes(row[1]), key=row[2], origin=row[3], kind=row[4],
                      payload=bytes(row[5]), state=row[6], created_at=row[7], updated_at=row[8])


class Inbox:
    def __init__(self, db: Db) -> None:
        self._db = db

    def enqueue(self, eid: bytes, key: str, kind: str, payload: bytes, *, origin: str | None,
                now: float) -> InboxEnqueued:
        action = f"enqueue inbox entry {key!r} for {eid.hex()}"
        with self._db.atomic(action) as conn:
            row = conn.execute("SELECT id, payload, state FROM inbox WHERE eid = ? AND key = ?",
                               (eid, key)).fetchone()
            if row is not None:
                if bytes(row[1]) != payload:
                    raise IdempotencyConflict(f"{action}: key already used for different bytes")
                return InboxEnqueued(row[0], False, row[2])
            cur = conn.execute(
                "INSERT INTO inbox (eid, key, origin, kind, payload, state, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)", (eid, key, origin, kind, payload, now, now))
            assert cur.lastrowid is not None
            return InboxEnqueued(cur.lastrowid, True, "queued")

    def get(self, entry_id: int) -> InboxEntry | None:
        row = self._db.fetchone(f"SELECT {_COLUMNS} FROM inbox WHERE id = ?", (entry_id,),
                                action=f"read inbox entry {entry_id}")
        return None if row is None else _entry(row)

    def find(self, eid: bytes, key: str) -> InboxEntry | None:
        row = self._db.fetchone(f"SELECT {_COLUMNS} FROM inbox WHERE eid = ? AND key = ?", (eid, key),
                                action=f"find inbox entry {key!r}")
        return None if row is None else _entry(row)

    def next_for(self, eid: bytes) -> InboxEntry | None:
        row = self._db.fetchone(
            f"SELECT {_COLUMNS} FROM inbox WHERE eid = ? AND state != 'done'"
            " ORDER BY state = 'queued', id LIMIT 1", (eid,), action=f"next inbox entry of {eid.hex()}")
        return None if row is None else _entry(row)

    def pending(self, eid: bytes) -> list[InboxEntry]:
        return [_entry(r) for r in self._db.fetchall(
            f"SELECT {_COLUMNS} FROM inbox WHERE eid = ? AND state != 'done' ORDER BY id", (eid,),
            action=f"list inbox of {eid.hex()}")]

    def entries(self, eid: bytes | None = None) -> list[InboxEntry]:
        """Every entry, done ones included (history, checks), oldest first."""
        if eid is None:
            rows = self._db.fetchall(f"SELECT {_COLUMNS} FROM inbox ORDER BY id", action="list inbox entries")
        else:
            rows = self._db.fetchall(f"SELECT {_COLUMNS} FROM inbox WHERE eid = ? ORDER BY id", (eid,),
                                     action=f"list inbox entries of {eid.hex()}")
        return [_entry(r) for r in rows]

    def eids_with_work(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._db.fetchall(
            "SELECT DISTINCT eid FROM inbox WHERE state != 'done' ORDER BY eid", action="list inboxes")]

    def start(self, entry_id: int, *, now: float) -> bool:
        """queued -> in_progress; False when the entry was not queued."""
        return self._move(entry_id, ("queued",), "in_progress", now)

    def finish(self, entry_id: int, *, now: float) -> bool:
        """queued/in_progress -> done; False when it was already done (nothing changes)."""
        return self._move(entry_id, ("queued", "in_progress"), "done", now)

    def requeue(self, entry_id: int, *, now: float) -> bool:
        """in_progress -> queued, for work that must run again from its start."""
        return self._move(entry_id, ("in_progress",), "queued", now)

    def purge_done(self, *, older_than: float) -> int:
        """Forget finished entries; their keys no longer deduplicate a re-push after this."""
        with self._db.atomic("purge done inbox entries") as conn:
            return conn.execute("DELETE FROM inbox WHERE state = 'done' AND updated_at < ?",
                                (older_than,)).rowcount

    def _move(self, entry_id: int, sources: tuple[InboxState, ...], target: InboxState, now: float) -> bool:
        marks = ", ".join("?" * len(sources))
        with self._db.atomic(f"inbox entry {entry_id} -> {target}") as conn:
            cur = conn.execute(f"UPDATE inbox SET state = ?, updated_at = ? WHERE id = ? AND state IN ({marks})",
                               (target, now, entry_id, *sources))
            return cur.rowcount == 1
