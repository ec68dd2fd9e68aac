"""Group commit: independent units of work share one COMMIT (one fsync) and each still succeeds
or fails on its own, and is answered only once what it wrote is committed."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.store import AsyncStore, Store, StoreDiskFull, StoreError

SERVER = "eim1"


Unit = Callable[[Store], Any]


def put(key: str, size: int = 1) -> Unit:
    def unit(s: Store) -> str:
        s.outbox.enqueue(SERVER, key, "r", key.encode() * size, now=1.0)
        return key
    return unit


def stored(s: Store) -> list[str]:
    return [e.key for e in s.outbox.pending()]


def failing_after_write(key: str) -> Unit:
    def unit(s: Store) -> None:
        s.outbox.enqueue(SERVER, key, "r", b"x", now=1.0)
        raise ValueError(f"{key} failed after writing")
    return unit


def with_deferred_check(s: Store) -> None:
    """A table whose foreign key is checked at COMMIT: a real way to make a COMMIT fail."""
    s._db.execute("CREATE TABLE t_parent (id INTEGER PRIMARY KEY)", action="test")
    s._db.execute("CREATE TABLE t_child (pid INTEGER REFERENCES t_parent (id) DEFERRABLE INITIALLY DEFERRED)",
                  action="test")


def orphan(s: Store) -> None:
    s._db.execute("INSERT INTO t_child (pid) VALUES (42)", action="test")


def test_a_failing_unit_is_undone_alone_and_the_others_commit(store: Store) -> None:
    outcomes = store.transaction_each([put("a"), failing_after_write("b"), put("c")])
    assert [o.value for o in outcomes] == ["a", None, "c"]
    assert isinstance(outcomes[1].error, ValueError) and outcomes[0].error is None and outcomes[2].error is None
    assert stored(store) == ["a", "c"]
    assert store.outbox.usage().entries == 2


def test_units_of_one_group_share_one_transaction(store: Store) -> None:
    other = sqlite3.connect(store.path)     # a second reader sees only what is committed
    seen: list[tuple[int, int]] = []

    def probe(s: Store) -> None:
        committed = other.execute("SELECT count(*) FROM outbox").fetchone()[0]
        seen.append((s.outbox.usage().entries, committed))
        s.outbox.enqueue(SERVER, f"p{len(seen)}", "r", b"x", now=1.0)

    store.transaction_each([probe, probe, probe])
    # each unit saw the writes of those before it, none of them committed yet: one transaction
    assert seen == [(0, 0), (1, 0), (2, 0)]
    assert other.execute("SELECT count(*) FROM outbox").fetchone()[0] == 3     # one COMMIT for all
    other.close()
    assert stored(store) == ["p1", "p2", "p3"]


def test_a_failed_commit_fails_every_unit_riding_on_it_and_keeps_nothing(store: Store) -> None:
    with_deferred_check(store)
    outcomes = store.transaction_each([put("a"), orphan, put("c")])
    assert all(isinstance(o.error, StoreError) for o in outcomes), outcomes
    assert "commit" in str(outcomes[0].error) and "FOREIGN KEY" in str(outcomes[0].error)
    assert stored(store) == [] and not store._db.conn.in_transaction
    store.outbox.enqueue(SERVER, "after", "r", b"x", now=2.0)    # the connection is usable again
    assert stored(store) == ["after"]


def test_when_sqlite_abandons_the_transaction_its_riders_fail_and_the_rest_go_on(store: Store) -> None:
    # SQLite rolls a whole transaction back by itself on some errors (SQLITE_FULL, IOERR); a
    # unit that ends the transaction under the group stands in for that here
    def abandon(s: Store) -> None:
        s._db.conn.execute("ROLLBACK")
        raise StoreDiskFull("disk full (the transaction was rolled back)")

    outcomes = store.transaction_each([put("a"), put("b"), abandon, put("d"), put("e")])
    assert [type(o.error).__name__ if o.error else o.value for o in outcomes] == [
        "StoreDiskFull", "StoreDiskFull", "StoreDiskFull", "d", "e"]
    assert stored(store) == ["d", "e"]


def test_a_full_disk_in_one_unit_loses_no_unit_that_was_reported_committed(db_path: Path) -> None:
    big = os.urandom(96 * 1024)
    with Store.open(db_path) as s:
        s.outbox.enqueue(SERVER, "before", "r", b"x", now=0.0)
        pages = s._db.fetchone("PRAGMA page_count", action="test")[0]
        s._db.execute(f"PRAGMA max_page_count = {pages + 4}", action="test")

        def huge(store: Store) -> None:
            store.outbox.enqueue(SERVER, "huge", "r", big, now=1.0)

        outcomes = s.transaction_each([put("a"), huge, put("c")])
        assert isinstance(outcomes[1].error, StoreDiskFull)
        committed = {o.value for o in outcomes if o.error is None}
        assert set(stored(s)) == {"before"} | committed      # told committed <=> on disk
    with Store.open(db_path) as again:
        assert set(stored(again)) == {"before"} | committed


def test_a_group_cannot_run_inside_an_open_transaction(store: Store) -> None:
    with store.transaction():
        with pytest.raises(StoreError, match="inside an open transaction"):
            store.transaction_each([put("a")])


async def _hold_store_thread(astore: AsyncStore) -> tuple[threading.Event, asyncio.Future[None]]:
    """Keep the store thread busy until the event is set, so units queue up behind it."""
    release = threading.Event()
    started = threading.Event()

    def hold(s: Store) -> None:
        started.set()
        release.wait(10)

    held = asyncio.ensure_future(astore.run(hold))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
    return release, held


async def test_units_queued_while_the_store_is_busy_commit_as_one_group(db_path: Path) -> None:
    async with await AsyncStore.open(db_path) as astore:
        release, held = await _hold_store_thread(astore)
        calls = [asyncio.ensure_future(astore.atomic(put(f"k{i}"))) for i in range(50)]
        await asyncio.sleep(0.05)
        assert not any(c.done() for c in calls)       # nobody is answered before the commit
        release.set()
        await held
        assert await asyncio.gather(*calls) == [f"k{i}" for i in range(50)]
        assert (astore.groups, astore.grouped_units) == (1, 50)
        assert await astore.run(stored) == [f"k{i}" for i in range(50)]


async def test_one_caller_failing_in_a_group_gets_its_own_error_and_the_others_their_values(db_path: Path) -> None:
    async with await AsyncStore.open(db_path) as astore:
        release, held = await _hold_store_thread(astore)
        calls = [asyncio.ensure_future(astore.atomic(unit)) for unit in (put("a"), failing_after_write("b"), put("c"))]
        release.set()
        await held
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert results[0] == "a" and results[2] == "c"
        assert isinstance(results[1], ValueError) and "b failed" in str(results[1])
        assert await astore.run(stored) == ["a", "c"]


async def test_a_failed_group_commit_is_reported_to_every_caller_in_it(db_path: Path) -> None:
    async with await AsyncStore.open(db_path) as astore:
        await astore.run(with_deferred_check)
        release, held = await _hold_store_thread(astore)
        calls = [asyncio.ensure_future(astore.atomic(unit)) for unit in (put("a"), orphan)]
        release.set()
        await held
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, StoreError) and "FOREIGN KEY" in str(r) for r in results), results
        assert await astore.run(stored) == []


async def test_a_caller_cancelled_before_its_unit_started_has_it_not_run(db_path: Path) -> None:
    async with await AsyncStore.open(db_path) as astore:
        release, held = await _hold_store_thread(astore)
        keep = asyncio.ensure_future(astore.atomic(put("kept")))
        drop = asyncio.ensure_future(astore.atomic(put("dropped")))
        await asyncio.sleep(0)
        drop.cancel()
        release.set()
        await held
        assert await keep == "kept"
        assert drop.cancelled()
        assert await astore.run(stored) == ["kept"]


async def test_a_lone_unit_is_a_group_of_one(db_path: Path) -> None:
    async with await AsyncStore.open(db_path) as astore:
        for i in range(3):
            assert await astore.atomic(put(f"k{i}")) == f"k{i}"
        assert (astore.groups, astore.grouped_units) == (3, 3)

