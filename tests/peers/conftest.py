"""Fixtures for the SM-DP+ and eIM peer tests: the peers on real TLS sockets and the gateway's
own HTTPS client pointed at them (the test PKI and the software eUICC are tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.backhaul.http import BackhaulHttp, HttpLimits, Server, TlsTrust
from hil.peers.eim import EimServer
from hil.peers.smdpp import SmdppServer
from hil.pki import RspPki


@pytest.fixture
async def smdpp(pki: RspPki) -> AsyncIterator[SmdppServer]:
    async with SmdppServer(pki) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[BackhaulHttp]:
    async with BackhaulHttp(HttpLimits(request_timeout_s=20.0, connect_timeout_s=5.0)) as client:
        yield client


def server_for(pki: RspPki, url: str) -> Server:
    return Server(url, TlsTrust(ca_file=str(pki.tls_trust_path)))


@pytest.fixture
async def eim(pki: RspPki, smdpp: SmdppServer) -> AsyncIterator[EimServer]:
    async with EimServer(pki, smdp_url=smdpp.url) as server:
        yield server
