"""Fixtures of tests/policy: a real SQLite store (the test PKI is the session-wide `pki` of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store import AsyncStore


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    store = await AsyncStore.open(tmp_path / "gateway.sqlite3")
    try:
        yield store
    finally:
        await store.close()
