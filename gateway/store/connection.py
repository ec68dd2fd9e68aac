"""One SQLite connection in WAL mode, and the only code that begins, commits or rolls back.

The connection runs with `isolation_level=None` so the sqlite3 module never opens a transaction
behind our back. `Db.atomic()` is the unit of work: the outermost block runs
`BEGIN IMMEDIATE` (the write lock is taken up front, so a busy database fails at the start of
a unit of work, never half-way through it) and `COMMIT`; nested blocks become SAVEPOINTs, so an
inner failure that the caller catches undoes only the inner writes. Every sqlite3 exception
leaves through `translate()` as a StoreError subclass, and after any failure the connection is
back in autocommit with nothing half-written: what was committed before stays committed.

`synchronous=FULL`: a commit is on disk when it returns, across a power cut too (the gateway
answers an eIM push only after the package is committed). That fsync is the price of a commit,
so `Db.atomic_each()` lets independent units of work share one: each unit runs in a SAVEPOINT
of one transaction and succeeds or fails on its own (a failing unit is rolled back to its
savepoint, the others stay), and one COMMIT makes them all durable. Each unit learns its own
outcome only after that commit, so "persist before acknowledge" holds for every one of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from gateway.store.errors import StoreError, StoreIOError, StoreReadOnly, StoreUnavailable, translate

log = logging.getLogger(__name__)

Params = Sequence[Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What one unit of a group commit came to: its value once committed, or its error."""

    value: T | None = None
    error: Exception | None = None


def connect(path: Path, *, busy_timeout_s: float) -> sqlite3.Connection:
    """Open (or create) the database file and set the pragmas every connection needs."""
    action = f"open database {path}"
    try:
        conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    except sqlite3.Error as exc:
        raise explain(translate(exc, action), path) from exc
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{action}: cannot switch to WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    except sqlite3.Error as exc:
        conn.close()
        raise explain(translate(exc, action), path) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def explain(err: StoreError, path: Path) -> StoreError:
    """SQLite reports a read-only mount as CANTOPEN or IOERR; say what it is when we can tell."""
    if isinstance(err, (StoreUnavailable, StoreIOError, StoreReadOnly)):
        try:
            read_only = bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        if read_only:
            new = StoreReadOnly(f"{err} (the file system holding {path.parent} is mounted read-only)")
            new.__cause__ = err.__cause__
            return new
    return err


class Db:
    """A connection plus transaction nesting; shared by every table module of one Store."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._depth = 0
        # read by the audit table's DELETE trigger through ipae_audit_purge_allowed()
        self.audit_purge_allowed = False
        conn.create_function("ipae_audit_purge_allowed", 0, lambda: int(self.audit_purge_allowed))

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @contextlib.contextmanager
    def atomic(self, action: str = "transaction") -> Iterator[sqlite3.Connection]:
        """All writes in the block commit together or not at all (nested: a savepoint)."""
        if self._depth:
            name = f"sp{self._depth}"
            self._run(f"SAVEPOINT {name}", action)
            self._depth += 1
            try:
                yield self.conn
            except BaseException:
                self._depth -= 1
                self._quiet(f"ROLLBACK TO {name}")
                self._quiet(f"RELEASE {name}")
                raise
            self._depth -= 1
            self._run(f"RELEASE {name}", action)
            return
        self._run("BEGIN IMMEDIATE", action)
        self._depth = 1
        try:
            yield self.conn
        except sqlite3.Error as exc:
            self._depth = 0
            self._rollback()
            raise self._translate(exc, action) from exc
        except BaseException:
            self._depth = 0
            self._rollback()
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._translate(exc, f"{action} (commit)") from exc
        finally:
            self._depth = 0

    def atomic_each(self, units: Sequence[Callable[[], T]], action: str = "transaction") -> list[Outcome[T]]:
        """Run independent units of work in as few transactions as they allow, one SAVEPOINT each.

        A unit that raises is undone alone. If SQLite abandons the whole transaction under a unit
        (a full disk, an I/O error), the units already done in it share its error and the rest go
        on in a new transaction. If the COMMIT fails, every unit riding on it gets that error.
        """
        if self._depth:
            raise StoreError(f"{action}: a group of units cannot run inside an open transaction")
        outcomes: list[Outcome[T] | None] = [None] * len(units)
        start = 0
        while start < len(units):
            start = self._one_group(units, start, outcomes, action)
        return [o if o is not None else Outcome(error=StoreError(f"{action}: not run")) for o in outcomes]

    def _one_group(self, units: Sequence[Callable[[], T]], start: int, outcomes: list[Outcome[T] | None],
                   action: str) -> int:
        """One transaction over units[start:]; returns where the next one must start."""
        try:
            self._run("BEGIN IMMEDIATE", action)
        except StoreError as refused:
            for i in range(start, len(units)):
                outcomes[i] = Outcome(error=refused)
            return len(units)
        self._depth = 1
        riding: list[int] = []
        try:
            for i in range(start, len(units)):
                try:
                    self.conn.execute("SAVEPOINT unit")
                    value = units[i]()
                    self.conn.execute("RELEASE unit")
                except Exception as exc:
                    err = self._translate(exc, action) if isinstance(exc, sqlite3.Error) else exc
                    outcomes[i] = Outcome(error=err)
                    if not self.conn.in_transaction:
                        for j in riding:
                            outcomes[j] = Outcome(error=err)
                        return i + 1
                    self._quiet("ROLLBACK TO unit")
                    self._quiet("RELEASE unit")
                    continue
                riding.append(i)
                outcomes[i] = Outcome(value)
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                lost = self._translate(exc, f"{action} (commit)")
                for j in riding:
                    outcomes[j] = Outcome(error=lost)
            return len(units)
        finally:
            self._depth = 0
            self._rollback()

    def execute(self, sql: str, params: Params = (), *, action: str) -> sqlite3.Cursor:
        """One statement, its sqlite3 errors translated; joins the open transaction if any."""
        try:
            return self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._translate(exc, action) from exc

    def executemany(self, sql: str, rows: Sequence[Params], *, action: str) -> sqlite3.Cursor:
        try:
            return self.conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise self._translate(exc, action) from exc

    def fetchone(self, sql: str, params: Params = (), *, action: str) -> Any:
        try:
            return self.conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise self._translate(exc, action) from exc

    def fetchall(self, sql: str, params: Params = (), *, action: str) -> list[Any]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._translate(exc, action) from exc

    def _run(self, sql: str, action: str) -> None:
        try:
            self.conn.execute(sql)
        except sqlite3.Error as exc:
            raise self._translate(exc, action) from exc

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self._quiet("ROLLBACK")

    def _quiet(self, sql: str) -> None:
        # SQLite may already have rolled back by itself (SQLITE_FULL, IOERR): nothing left to undo
        try:
            self.conn.execute(sql)
        except sqlite3.Error as exc:
            log.debug("%s after a failed transaction: %s", sql, exc)

    def _translate(self, exc: sqlite3.Error, action: str) -> StoreError:
        return explain(translate(exc, action), self.path)
