"""Edge-policy state: one JSON document per (EID, kind), as the policies last decided it.

The policies (gateway.policy) hand their state out as `SavePolicyState` decisions: kinds
"fallback" and "roaming" per device, "wave" gateway-wide under the empty EID. The daemon
writes each one in the same transaction as the other decisions of that step, and at start-up
gives every row back to `Policies.restore` -- so a device in fallback keeps its return timer
across a restart. The store does not read the JSON beyond checking it is JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.store.connection import Db


@dataclass(frozen=True, slots=True)
class PolicyState:
    eid: bytes
    kind: str
    blob: str
    updated_at: float


def _state(row: tuple[Any, ...]) -> PolicyState:
    return PolicyState(bytes(row[0]), row[1], row[2], row[3])


class PolicyStates:
    def __init__(self, db: Db) -> None:
        self._db = db

    def get(self, eid: bytes, kind: str) -> PolicyState | None:
        row = self._db.fetchone("SELECT eid, kind, blob, updated_at FROM policy_state WHERE eid = ? AND kind = ?",
                                (eid, kind), action=f"read {kind} policy state of {eid.hex() or 'the gateway'}")
        return None if row is None else _state(row)

    def put(self, eid: bytes, kind: str, blob: str, *, now: float) -> None:
        action = f"write {kind} policy state of {eid.hex() or 'the gateway'}"
        with self._db.atomic(action) as conn:
            conn.execute("INSERT INTO policy_state (eid, kind, blob, updated_at) VALUES (?, ?, ?, ?)"
                         " ON CONFLICT (eid, kind) DO UPDATE SET blob = excluded.blob,"
                         " updated_at = excluded.updated_at", (eid, kind, blob, now))

    def list(self, kind: str | None = None) -> list[PolicyState]:
        sql = "SELECT eid, kind, blob, updated_at FROM policy_state"
        params: tuple[str, ...] = ()
        if kind is not None:
            sql, params = sql + " WHERE kind = ?", (kind,)
        return [_state(r) for r in self._db.fetchall(sql + " ORDER BY eid, kind", params,
                                                     action="list policy state")]
