"""Outbox: per-server messages waiting for the backhaul (results, notifications, cancellations).

Delivery is at-least-once toward the server, which deduplicates by the idempotency key sent
with each message:

- `lease(server, now)` hands out the oldest due entries and marks them leased until
  `now + lease_s`. A sender then posts them and calls `ack(ids)` (delivered: the entry becomes
  an acknowledged tombstone, its payload dropped, its key kept so a late duplicate `enqueue`
  is still recognised) or `nack(id, now, error)` (failed: attempts + 1, next attempt after an
  exponential backoff with full jitter, `gateway.core.retry.BackoffPolicy`). A crash between
  the post and the ack leaves the lease to expire, and the entry is sent again;
  `release_leases()` at start-up makes that immediate.
- "Due" means `next_attempt_at <= now` and no live lease; among due entries the oldest goes
  first (by insertion order).
- The pending entries are bounded (`OutboxLimits`): above `alarm_ratio` of either bound
  `enqueue` reports the alarm level (and logs it once on crossing: `note`); at the bound it
  raises `OutboxFull` and adds nothing. The totals live in `outbox_usage`, kept by triggers,
  and count the engine's deliveries waiting for the backhaul too (gateway/store/deliveries.py):
  one accounting of everything waiting for the backhaul.

Time is the caller's (`now`), randomness for the jitter comes from the injected `random.Random`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.core.retry import BackoffPolicy, BreakerPolicy, CircuitBreaker
from gateway.store import breaker
from gateway.store.connection import Db
from gateway.store.errors import IdempotencyConflict, OutboxFull

log = logging.getLogger(__name__)

UsageLevel = Literal["ok", "alarm", "full"]


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    max_entries: int = 200_000
    max_bytes: int = 512 * 1024 * 1024
    alarm_ratio: float = 0.8


@dataclass(frozen=True, slots=True)
class OutboxUsage:
    entries: int
    payload_bytes: int
    limits: OutboxLimits

    @property
    def level(self) -> UsageLevel:
        ratio = max(self.entries / self.limits.max_entries, self.payload_bytes / self.limits.max_bytes)
        if ratio >= 1.0:
            return "full"
        return "alarm" if ratio >= self.limits.alarm_ratio else "ok"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    server: str
    key: str
    kind: str
    eid: bytes | None
    payload: bytes
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True, slots=True)
class OutboxEnqueued:
    id: int
    new: bool
    level: UsageLevel


_COLUMNS = "id, server, key, kind, eid, payload, created_at, attempts, next_attempt_at, last_error"


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    return OutboxEntry(id=row[0], server=row[1], key=row[2], kind=row[3],
                       eid=None if row[4] is None else bytes(row[4]), payload=bytes(row[5]),
                       created_at=row[6], attempts=row[7], next_attempt_at=row[8], last_error=row[9])


class Outbox:
    def __init__(self, db: Db, limits: OutboxLimits, backoff: BackoffPolicy, rng: random.Random) -> None:
        self._db = db
        self.limits = limits
        self.backoff = backoff
        self._rng = rng
        self._level: UsageLevel = "ok"

    def enqueue(self, server: str, key: str, kind: str, payload: bytes, *, eid: bytes | None = None,
                now: float) -> OutboxEnqueued:
        action = f"enqueue outbox entry {key!r} for {server}"
        with self._db.atomic(action) as conn:
            row = conn.execute("SELECT id, payload, state FROM outbox WHERE server = ? AND key = ?",
                               (server, key)).fetchone()
            if row is not None:
                if row[2] == "pending" and bytes(row[1]) != payload:
                    raise IdempotencyConflict(f"{action}: key already used for different bytes")
                return OutboxEnqueued(row[0], False, self.usage().level)
            before = self.usage()
            after = OutboxUsage(before.entries + 1, before.payload_bytes + len(payload), self.limits)
            if after.entries > self.limits.max_entries or after.payload_bytes > self.limits.max_bytes:
                raise OutboxFull(
                    f"{action}: outbox full ({before.entries} entries, {before.payload_bytes} bytes; limits "
                    f"{self.limits.max_entries} entries, {self.limits.max_bytes} bytes); nothing was added",
                    entries=before.entries, payload_bytes=before.payload_bytes)
            cur = conn.execute(
                "INSERT INTO outbox (server, key, kind, eid, payload, size, created_at, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (server, key, kind, eid, payload, len(payload), now, now))
            assert cur.lastrowid is not None
        return OutboxEnqueued(cur.lastrowid, True, self.note(after))

    def note(self, usage: OutboxUsage) -> UsageLevel:
        """The level of `usage`, logged when it changed since the last one noted (by this object)."""
        level = usage.level
        if level != self._level:
            limits = self.limits
            if level == "ok":
                log.info("outbox back under its alarm level: %d entries / %d bytes", usage.entries,
                         usage.payload_bytes)
            else:
                log.log(logging.ERROR if level == "full" else logging.WARNING,
                        "outbox %s: %d entries / %d bytes waiting for the backhaul (alarm at %d%%, limit %d entries"
                        " / %d bytes)", "FULL, new work refused" if level == "full" else "above its alarm level",
                        usage.entries, usage.payload_bytes, round(limits.alarm_ratio * 100), limits.max_entries,
                        limits.max_bytes)
            self._level = level
        return level

    def usage(self) -> OutboxUsage:
        row = self._db.fetchone("SELECT entries, bytes FROM outbox_usage", action="read outbox usage")
        return OutboxUsage(row[0], row[1], self.limits)

    def lease(self, server: str, *, now: float, limit: int = 100, lease_s: float = 60.0) -> list[OutboxEntry]:
        """The oldest due entries for `server`, leased to the caller until now + lease_s."""
        with self._db.atomic(f"lease outbox entries for {server}") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE server = ? AND state = 'pending'"
                " AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until <= ?) ORDER BY id LIMIT ?",
                (server, now, now, limit)).fetchall()
            conn.executemany("UPDATE outbox SET lease_until = ? WHERE id = ?", [(now + lease_s, r[0]) for r in rows])
        return [_entry(r) for r in rows]

    def ack(self, ids: Iterable[int], *, now: float) -> int:
        """Delivered: keep only the key (a later duplicate enqueue is recognised). Idempotent."""
        with self._db.atomic("acknowledge outbox entries") as conn:
            cur = conn.executemany(
                "UPDATE outbox SET state = 'acked', acked_at = ?, payload = X'', lease_until = NULL"
                " WHERE id = ? AND state = 'pending'", [(now, i) for i in ids])
            return cur.rowcount

    def nack(self, entry_id: int, *, now: float, error: str) -> float | None:
        """Delivery failed: back off. Returns the next attempt time (None if already acked)."""
        with self._db.atomic(f"record failed delivery of outbox entry {entry_id}") as conn:
            row = conn.execute("SELECT attempts FROM outbox WHERE id = ? AND state = 'pending'",
                               (entry_id,)).fetchone()
            if row is None:
                return None
            attempts = row[0] + 1
            at = now + self.backoff.delay(attempts - 1, self._rng.random)
            conn.execute("UPDATE outbox SET attempts = ?, next_attempt_at = ?, lease_until = NULL,"
                         " last_error = ? WHERE id = ?", (attempts, at, error[:500], entry_id))
            return at

    def release(self, ids: Sequence[int]) -> None:
        """Give leased entries back untouched (shutting down before they were sent)."""
        with self._db.atomic("release outbox leases") as conn:
            conn.executemany("UPDATE outbox SET lease_until = NULL WHERE id = ? AND state = 'pending'",
                             [(i,) for i in ids])

    def release_leases(self) -> int:
        """At start-up: every lease belongs to a process that is gone; make its entries due again."""
        with self._db.atomic("release stale outbox leases") as conn:
            return conn.execute("UPDATE outbox SET lease_until = NULL WHERE state = 'pending'"
                                " AND lease_until IS NOT NULL").rowcount

    def pending(self, server: str | None = None) -> list[OutboxEntry]:
        sql = f"SELECT {_COLUMNS} FROM outbox WHERE state = 'pending'"
        params: tuple[Any, ...] = ()
        if server is not None:
            sql += " AND server = ?"
            params = (server,)
        return [_entry(r) for r in self._db.fetchall(sql + " ORDER BY id", params, action="list outbox")]

    def servers(self) -> list[str]:
        return [r[0] for r in self._db.fetchall(
            "SELECT DISTINCT server FROM outbox WHERE state = 'pending' ORDER BY server",
            action="list outbox servers")]

    def next_due(self, server: str) -> float | None:
        """Earliest time an entry for `server` becomes due (to sleep until then)."""
        row = self._db.fetchone(
            "SELECT min(max(next_attempt_at, coalesce(lease_until, 0))) FROM outbox"
            " WHERE server = ? AND state = 'pending'", (server,), action=f"next outbox time for {server}")
        return None if row[0] is None else float(row[0])

    def is_acked(self, server: str, key: str) -> bool:
        row = self._db.fetchone("SELECT state FROM outbox WHERE server = ? AND key = ?", (server, key),
                                action=f"read outbox entry {key!r}")
        return row is not None and row[0] == "acked"

    def purge_acked(self, *, older_than: float) -> int:
        """Forget delivered tombstones (their keys stop deduplicating re-enqueues)."""
        with self._db.atomic("purge acknowledged outbox entries") as conn:
            return conn.execute("DELETE FROM outbox WHERE state = 'acked' AND acked_at < ?",
                                (older_than,)).rowcount

    def load_breaker(self, server: str, policy: BreakerPolicy = BreakerPolicy()) -> CircuitBreaker:
        """The breaker of `server` with `policy`, in the state last saved (closed if never saved)."""
        row = self._db.fetchone("SELECT state, failures, opened_at, open_s FROM breakers WHERE server = ?",
                                (server,), action=f"read circuit breaker of {server}")
        return breaker.from_row(policy.breaker(server), row)

    def save_breaker(self, b: CircuitBreaker, *, now: float) -> None:
        with self._db.atomic(f"save circuit breaker of {b.server}") as conn:
            conn.execute("INSERT INTO breakers (server, state, failures, opened_at, open_s, updated_at)"
                         " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (server) DO UPDATE SET state = excluded.state,"
                         " failures = excluded.failures, opened_at = excluded.opened_at,"
                         " open_s = excluded.open_s, updated_at = excluded.updated_at",
                         (b.server, *breaker.to_row(b), now))
