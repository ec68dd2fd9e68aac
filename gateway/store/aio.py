"""Async facade: the Store runs on one dedicated thread, so fsyncs never block the event loop.

SQLite commits wait for the disk (synchronous=FULL); on an SD card that can take tens of
milliseconds, far too long to hold an event loop that serves hundreds of devices. AsyncStore
owns a single worker thread that opens the Store, runs every call, and closes it: calls are
serialised (one connection, one writer, no locking between our own tasks) and the Store never
crosses threads. A unit of work is a plain function run inside one transaction:

    await astore.atomic(lambda s: (s.sessions.put(...), s.outbox.enqueue(...)))

so no transaction is ever held open across an `await`.

Group commit. Every commit waits for an fsync, and with hundreds of devices stepping at once
the store thread would spend its life in fsyncs, one per device step. So `atomic` does not
hand each unit to the thread on its own: it queues the unit, and wakes the thread only if no
wake-up is pending. When the thread gets to it, it takes every unit queued by then and runs
them as one group (Store.transaction_each: one SAVEPOINT each, one COMMIT for all); each
caller is answered after that commit, with its own value or its own error. Under no load a
group is one unit and nothing waits longer than before; under load the group grows with the
queue, and the fsyncs per second stay bounded while the units per second grow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from gateway.store.connection import Outcome
from gateway.store.errors import StoreError
from gateway.store.store import Store, StoreOptions

T = TypeVar("T")


class AsyncStore:
    def __init__(self, executor: concurrent.futures.ThreadPoolExecutor, store: Store) -> None:
        self._executor = executor
        self._store = store
        self._lock = threading.Lock()
        self._queued: list[tuple[Callable[[Store], Any], asyncio.Future[Any]]] = []
        self._wake_pending = False
        self.groups = 0            # commits made by atomic()
        self.grouped_units = 0     # units of work they carried

    @classmethod
    async def open(cls, path: str | Path, options: StoreOptions = StoreOptions(), **kwargs: Any) -> AsyncStore:
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipae-store")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(executor, functools.partial(Store.open, path, options, **kwargs))
        except BaseException:
            executor.shutdown(wait=True)
            raise
        return cls(executor, store)

    async def run(self, fn: Callable[[Store], T]) -> T:
        """Run `fn(store)` on the store thread (each store call inside is atomic on its own)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._store)

    async def atomic(self, fn: Callable[[Store], T]) -> T:
        """Run `fn(store)` on the store thread as one unit of work: its writes commit together
        or not at all, and it returns (or raises) only once they are committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._queued.append((fn, future))
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            try:
                self._executor.submit(self._commit_queued)
            except RuntimeError:
                with self._lock:
                    self._queued.remove((fn, future))
                    self._wake_pending = False
                raise
        return await future

    def _commit_queued(self) -> None:
        """On the store thread: run every unit queued so far as one group commit."""
        with self._lock:
            queued, self._queued = self._queued, []
            self._wake_pending = False
        # a caller cancelled before its unit started: it is not run (as with run_in_executor)
        queued = [(fn, future) for fn, future in queued if not future.cancelled()]
        if not queued:
            return
        try:
            outcomes = self._store.transaction_each([fn for fn, _ in queued])
        except BaseException as exc:     # nothing was committed; no caller may wait forever
            failed: Outcome[Any] = Outcome(error=StoreError(f"store transaction interrupted: {exc!r}"))
            outcomes = [failed] * len(queued)
            if not isinstance(exc, Exception):
                self._answer(queued, outcomes)
                raise
        self.groups += 1
        self.grouped_units += len(queued)
        self._answer(queued, outcomes)

    @staticmethod
    def _answer(queued: list[tuple[Callable[[Store], Any], asyncio.Future[Any]]],
                outcomes: list[Outcome[Any]]) -> None:
        """One wake-up per event loop for the whole group, not one per caller."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome[Any]]]] = {}
        for (_, future), outcome in zip(queued, outcomes, strict=True):
            by_loop.setdefault(future.get_loop(), []).append((future, outcome))
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, answers)
            except RuntimeError:    # that event loop is closed: nobody is waiting any more
                pass

    async def close(self) -> None:
        try:
            await self.run(Store.close)
        finally:
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


def _settle(answers: list[tuple[asyncio.Future[Any], Outcome[Any]]]) -> None:
    for future, outcome in answers:
        if future.done():
            continue
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.value)
