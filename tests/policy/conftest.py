"""Fixtures of tests/policy: the test PKI (real TLS certificates) and a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store import AsyncStore
from hil.pki import RspPki, generate_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> RspPki:
    return generate_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    store = await AsyncStore.open(tmp_path / "gateway.sqlite3")
    try:
        yield store
    finally:
        await store.close()
