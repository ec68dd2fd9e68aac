"""Store tests run against real SQLite files in tmp_path; the clock is a plain number."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import Store, StoreOptions


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gateway.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store.open(db_path, StoreOptions(), rng=random.Random(7))
    try:
        yield s
    finally:
        s.close()
