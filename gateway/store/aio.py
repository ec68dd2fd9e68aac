"""Async facade: the Store runs on one dedicated thread, so fsyncs never block the event loop.

SQLite commits wait for the disk (synchronous=FULL); on an SD card that can take tens of
milliseconds, far too long to hold an event loop that serves hundreds of devices. AsyncStore
owns a single worker thread that opens the Store, runs every call, and closes it: calls are
serialised (one connection, one writer, no locking between our own tasks) and the Store never
crosses threads. A unit of work is a plain function run inside one transaction:

    await astore.atomic(lambda s: (s.sessions.put(...), s.outbox.enqueue(...)))

so no transaction is ever held open across an `await`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from gateway.store.store import Store, StoreOptions

T = TypeVar("T")


class AsyncStore:
    def __init__(self, executor: concurrent.futures.ThreadPoolExecutor, store: Store) -> None:
        self._executor = executor
        self._store = store

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
        """Run `fn(store)` on the store thread inside one transaction."""
        def unit_of_work(store: Store) -> T:
            with store.transaction():
                return fn(store)
        return await self.run(unit_of_work)

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
