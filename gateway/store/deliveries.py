"""The engine's deliveries waiting for the backhaul, counted in the outbox's one accounting.

Theory of operation. Results, notifications and cancellations for the eIM and SM-DP+s are
sent, retried and acknowledged by the engine (gateway.core: per-device oldest-first re-arm,
full-jitter backoff, the HTTPS client's per-server circuit breaker), and their bytes live in
the device's session blob. This table is their index: one row per delivery not yet
acknowledged by its server (EID + the delivery's key: the idempotency key), written from the
engine's `BackhaulWaiting` action in the same transaction as the session blob, so the two
never disagree across a crash. Triggers add its rows to `outbox_usage`, the running totals
the outbox bound is checked against: `Outbox.usage()` -- the alarm, the bound, the metrics,
`status` and `/v1/queue` -- counts everything waiting for the backhaul, whichever code sends
it. At the bound nothing is refused here (a result of a package already run must be kept):
the runtime stops taking new work instead (see gateway.service.runtime).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.actions import Waiting
from gateway.store.connection import Db


@dataclass(frozen=True, slots=True)
class WaitingDelivery:
    eid: bytes
    key: str
    kind: str
    server: str
    function: str
    size: int
    state: str
    attempts: int
    next_attempt_at: float | None
    created_at: float

    @property
    def idempotency_key(self) -> str:
        return f"{self.eid.hex()}/{self.key}"


_COLUMNS = "eid, key, kind, server, function, size, state, attempts, next_attempt_at, created_at"


def _row(r: tuple[Any, ...]) -> WaitingDelivery:
    return WaitingDelivery(bytes(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])


class Deliveries:
    def __init__(self, db: Db) -> None:
        self._db = db

    def replace(self, eid: bytes, waiting: Sequence[Waiting], *, now: float,
                previous: Sequence[Waiting] | None = None) -> None:
        """The device's waiting deliveries are now exactly `waiting` (a row keeps its first
        `created_at`: its age in the queue). Given `previous`, the set last written for this EID,
        only the rows that changed are written (a result acknowledged out of ten waiting: one
        DELETE, not ten upserts)."""
        if previous is not None:
            before = {w.key: w for w in previous}
            gone = before.keys() - {w.key for w in waiting}
            changed = [w for w in waiting if before.get(w.key) != w]
        else:
            changed = list(waiting)
        with self._db.atomic(f"record deliveries of {eid.hex()} waiting for the backhaul") as conn:
            if previous is None:
                keys = [w.key for w in waiting]
                conn.execute(f"DELETE FROM deliveries WHERE eid = ? AND key NOT IN ({', '.join('?' * len(keys))})",
                             (eid, *keys))
            elif gone:
                conn.executemany("DELETE FROM deliveries WHERE eid = ? AND key = ?", [(eid, k) for k in gone])
            if changed:
                conn.executemany(
                    "INSERT INTO deliveries (eid, key, kind, server, function, size, state, attempts, next_attempt_at,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (eid, key) DO UPDATE"
                    " SET kind = excluded.kind, server = excluded.server, function = excluded.function,"
                    " size = excluded.size, state = excluded.state, attempts = excluded.attempts,"
                    " next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at",
                    [(eid, w.key, w.kind, w.server, w.function, w.size, w.state, w.attempts, w.next_at, now, now)
                     for w in changed])

    def list(self, server: str | None = None, *, limit: int = -1) -> list[WaitingDelivery]:
        """Oldest first."""
        where, params = ("WHERE server = ?", (server,)) if server is not None else ("", ())
        return [_row(r) for r in self._db.fetchall(
            f"SELECT {_COLUMNS} FROM deliveries {where} ORDER BY created_at, eid, key LIMIT ?", (*params, limit),
            action="list deliveries waiting for the backhaul")]

    def by_server(self) -> dict[str, tuple[int, int]]:
        """server -> (deliveries, bytes) waiting for it."""
        rows = self._db.fetchall("SELECT server, count(*), sum(size) FROM deliveries GROUP BY server ORDER BY server",
                                 action="count deliveries per server")
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}
