"""Fixtures shared by every test tier. Tier-specific peers live in each folder's conftest."""

from __future__ import annotations

import socket

import pytest


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def free_tcp_port() -> int:
    return _free_port(socket.SOCK_STREAM)


@pytest.fixture
def free_udp_port() -> int:
    return _free_port(socket.SOCK_DGRAM)
