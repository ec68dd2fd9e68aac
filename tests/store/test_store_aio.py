"""The async facade runs the store on one dedicated thread and never on the event loop's."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from gateway.store import AsyncStore, OutboxFull, OutboxLimits, Store, StoreOptions


async def test_calls_run_on_one_store_thread_and_units_of_work_are_atomic(db_path: Path) -> None:
    loop_thread = threading.get_ident()
    async with await AsyncStore.open(db_path, StoreOptions(outbox_limits=OutboxLimits(max_entries=3))) as astore:
        threads = await asyncio.gather(*(astore.run(lambda s: threading.get_ident()) for _ in range(20)))
        assert len(set(threads)) == 1 and threads[0] != loop_thread

        def step(s: Store, n: int) -> None:
            s.sessions.put(b"\x89" * 16, f"state{n}", b"", now=float(n))
            s.outbox.enqueue("eim", f"r{n}", "r", b"x", now=float(n))

        for n in range(3):
            await astore.atomic(lambda s, n=n: step(s, n))  # type: ignore[misc]
        with pytest.raises(OutboxFull):
            await astore.atomic(lambda s: step(s, 3))
        session = await astore.run(lambda s: s.sessions.get(b"\x89" * 16))
        assert session is not None and session.state == "state2"
        assert await astore.run(lambda s: s.outbox.usage().entries) == 3


async def test_the_event_loop_keeps_running_during_store_work(db_path: Path) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with await AsyncStore.open(db_path) as astore:
        task = asyncio.create_task(ticker())

        def many(s: Store) -> None:
            for i in range(200):
                s.outbox.enqueue("eim", f"k{i}", "r", b"x", now=0.0)

        await astore.run(many)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert ticks > 10


async def test_open_failure_leaves_no_thread_behind(tmp_path: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    (tmp_path / "bad.db").write_bytes(b"not a database" * 500)
    with pytest.raises(Exception, match="not an SQLite database|corrupt"):
        await AsyncStore.open(tmp_path / "bad.db")
    assert {t.name for t in threading.enumerate()} - before == set()
