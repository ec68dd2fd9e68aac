"""Fixtures of the service tests: a configuration directory laid out as /etc/ipae-gateway."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from runtime_support import EID
from service_support import SHIPPED

from gateway.store import AsyncStore


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """A config directory holding the shipped gateway.toml with state inside tmp_path."""
    d = tmp_path / "etc"
    d.mkdir()
    text = (SHIPPED / "gateway.toml").read_text()
    text = text.replace('state_dir = "/var/lib/ipae-gateway"', f'state_dir = "{tmp_path / "state"}"')
    (d / "gateway.toml").write_text(text)
    return d


@pytest.fixture
def write_credentials(etc: Path) -> Callable[[str], Path]:
    def write(text: str, mode: int = 0o600) -> Path:
        path = etc / "credentials.toml"
        path.write_text(text)
        os.chmod(path, mode)
        return path
    return write


@pytest.fixture
def dropin(etc: Path) -> Callable[[str, str], Path]:
    def write(name: str, text: str) -> Path:
        d = etc / "gateway.d"
        d.mkdir(exist_ok=True)
        path = d / name
        path.write_text(text)
        return path
    return write


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    """A store with the runtime tests' device (runtime_support.EID) registered."""
    store = await AsyncStore.open(tmp_path / "gw.sqlite3")
    await store.run(lambda s: s.devices.register(EID, "coap", "dev1", now=1000.0))
    try:
        yield store
    finally:
        await store.close()
