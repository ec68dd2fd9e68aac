"""Device sessions: the engine's state name and the opaque blob it needs to resume or cancel.

One row per EID. The store does not look inside the blob (the engine serialises its own
frozen dataclasses). `version` grows by one on every write; a writer that passes
`expect_version` is refused (`StaleSession`) if someone else wrote in between, which catches
two engines driving one device. Writes are meant to happen inside `Store.transaction()` with
the inbox and outbox changes the same engine step produced.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.store.connection import Db
from gateway.store.errors import StaleSession


@dataclass(frozen=True, slots=True)
class Session:
    eid: bytes
    state: str
    blob: bytes
    version: int
    updated_at: float


def _session(row: tuple[Any, ...]) -> Session:
    return Session(bytes(row[0]), row[1], bytes(row[2]), row[3], row[4])


class Sessions:
    def __init__(self, db: Db) -> None:
        self._db = db

    def get(self, eid: bytes) -> Session | None:
        row = self._db.fetchone("SELECT eid, state, blob, version, updated_at FROM sessions WHERE eid = ?",
                                (eid,), action=f"read session of {eid.hex()}")
        return None if row is None else _session(row)

    def put(self, eid: bytes, state: str, blob: bytes, *, now: float, expect_version: int | None = None) -> int:
        """Write the session; returns its new version (1 for a new session)."""
        action = f"write session of {eid.hex()} ({state})"
        with self._db.atomic(action) as conn:
            row = conn.execute("SELECT version FROM sessions WHERE eid = ?", (eid,)).fetchone()
            current = 0 if row is None else int(row[0])
            if expect_version is not None and expect_version != current:
                raise StaleSession(f"{action}: expected version {expect_version}, found {current}")
            conn.execute("INSERT INTO sessions (eid, state, blob, version, updated_at) VALUES (?, ?, ?, ?, ?)"
                         " ON CONFLICT (eid) DO UPDATE SET state = excluded.state, blob = excluded.blob,"
                         " version = excluded.version, updated_at = excluded.updated_at",
                         (eid, state, blob, current + 1, now))
            return current + 1

    def delete(self, eid: bytes) -> bool:
        with self._db.atomic(f"delete session of {eid.hex()}") as conn:
            return conn.execute("DELETE FROM sessions WHERE eid = ?", (eid,)).rowcount == 1

    def list(self, states: Iterable[str] | None = None) -> list[Session]:
        sql = "SELECT eid, state, blob, version, updated_at FROM sessions"
        params: tuple[str, ...] = ()
        if states is not None:
            params = tuple(states)
            sql += f" WHERE state IN ({', '.join('?' * len(params))})"
        return [_session(r) for r in self._db.fetchall(sql + " ORDER BY eid", params, action="list sessions")]
