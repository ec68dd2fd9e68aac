"""The gateway's durable state: one SQLite file (WAL) behind one object.

`Store.open(path)` connects, upgrades the schema (see migrations.py) and exposes the tables:
`devices`, `inbox`, `outbox`, `deliveries` (the engine's, counted in the outbox usage), `sessions`,
`audit`, `policy_state`. Every method is atomic on its own.
`with store.transaction():` groups several calls into one unit of work: the engine's step
"session -> X, result Y into the outbox, inbox entry Z done, audit record W" commits as a whole
or not at all, which is what gives exactly one result per eIM package across a crash (after a
restart the session and inbox say either "not yet run" or "done, result queued", never half).

The Store is synchronous and not thread-safe: one thread owns it (`AsyncStore` in aio.py gives
an event loop a dedicated thread). The caller supplies every time value (`now`), and the
randomness used for retry jitter (`rng`), so tests can compress a day into seconds. `now` is
wall-clock seconds since the epoch (time.time() in production): stored times are compared
across restarts and reboots, which a monotonic clock cannot do.
"""

from __future__ import annotations

import contextlib
import functools
import random
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from gateway.store.audit import AuditLog
from gateway.core.retry import BackoffPolicy
from gateway.store.connection import Db, Outcome, connect
from gateway.store.deliveries import Deliveries
from gateway.store.devices import Devices
from gateway.store.errors import StoreCorrupt, translate
from gateway.store.inbox import Inbox
from gateway.store.migrations import Migration, MigrationReport, current_version, migrate
from gateway.store.outbox import Outbox, OutboxLimits
from gateway.store.policy_state import PolicyStates
from gateway.store.schema import MIGRATIONS
from gateway.store.sessions import Sessions


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoreOptions:
    outbox_limits: OutboxLimits = OutboxLimits()
    backoff: BackoffPolicy = BackoffPolicy(base_s=2.0, cap_s=900.0)
    busy_timeout_s: float = 5.0
    backup_before_migrating: bool = True


class Store:
    def __init__(self, db: Db, options: StoreOptions, rng: random.Random, migration: MigrationReport) -> None:
        self._db = db
        self.options = options
        self.migration = migration
        self.devices = Devices(db)
        self.inbox = Inbox(db)
        self.outbox = Outbox(db, options.outbox_limits, options.backoff, rng)
        self.deliveries = Deliveries(db)
        self.sessions = Sessions(db)
        self.audit = AuditLog(db)
        self.policy_state = PolicyStates(db)

    @classmethod
    def open(cls, path: str | Path, options: StoreOptions = StoreOptions(), *, rng: random.Random | None = None,
             migrations: Sequence[Migration] = MIGRATIONS) -> Store:
        """Open or create the database and bring its schema up to date."""
        path = Path(path)
        conn = connect(path, busy_timeout_s=options.busy_timeout_s)
        db = Db(conn, path)
        try:
            report = migrate(db, migrations, backup=options.backup_before_migrating)
            return cls(db, options, rng or random.Random(), report)
        except BaseException:
            conn.close()
            raise

    @property
    def path(self) -> Path:
        return self._db.path

    @property
    def schema_version(self) -> int:
        return current_version(self._db)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One unit of work: every store call inside commits together or not at all."""
        with self._db.atomic("store transaction"):
            yield

    def transaction_each(self, units: Sequence[Callable[[Store], T]]) -> list[Outcome[T]]:
        """Independent units of work sharing one commit (one fsync), each atomic on its own
        (see Db.atomic_each): what the async facade does with the steps of many devices."""
        return self._db.atomic_each([functools.partial(fn, self) for fn in units], "store transaction")

    def stats(self) -> dict[str, int]:
        """Row counts and file sizes for the metrics endpoint."""
        counts = self._db.fetchone(
            "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM inbox WHERE state != 'done'),"
            " (SELECT count(*) FROM sessions), (SELECT max(id) FROM audit), (SELECT count(*) FROM deliveries)",
            action="read store statistics")
        usage = self.outbox.usage()
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        return {
            "devices": counts[0], "inbox_open": counts[1], "sessions": counts[2],
            "audit_last_id": counts[3] or 0, "outbox_pending": usage.entries, "deliveries_waiting": counts[4],
            "outbox_pending_bytes": usage.payload_bytes,
            "db_bytes": sum(f.stat().st_size for f in files if f.exists()),
        }

    def check(self) -> None:
        """Full integrity check (PRAGMA quick_check); raises StoreCorrupt with SQLite's findings."""
        rows = self._db.fetchall("PRAGMA quick_check", action=f"check {self.path}")
        problems = [r[0] for r in rows if r[0] != "ok"]
        if problems:
            raise StoreCorrupt(f"{self.path}: integrity check failed: {'; '.join(problems[:5])}")

    def checkpoint(self) -> None:
        """Fold the WAL back into the main file (the daemon calls this when idle and at stop)."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)", action=f"checkpoint {self.path}")

    def close(self) -> None:
        try:
            self._db.conn.close()
        except sqlite3.Error as exc:
            raise translate(exc, f"close {self.path}") from exc

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
