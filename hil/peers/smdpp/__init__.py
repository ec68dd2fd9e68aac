"""A test SM-DP+ (SGP.22 ES9+, JSON binding) with real eUICC verification and real BPPs.

    async with SmdppServer(pki, host="127.0.0.1", port=0) as smdp:
        order = smdp.service.order_profile(size=20_000)      # or POST /admin/orders
        smdp.url          # https://127.0.0.1:<port>
        smdp.address      # 127.0.0.1:<port>, the SM-DP+ address (serverAddress, activation codes)

    python -m hil.peers.smdpp --pki DIR --host 127.0.0.1 --port P [--state FILE]

Modules: service (the SM-DP+ logic, no HTTP), server (ES9+ and admin routes), bpp_builder
(Bound Profile Packages), codes (SGP.22 subject/reason codes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hil.peers.common import HttpsPeer, server_ssl_context
from hil.peers.smdpp.server import make_app
from hil.peers.smdpp.service import DEFAULT_SESSION_TTL_S, Order, SmdpPlus
from hil.pki import RspPki

__all__ = ["Order", "SmdpPlus", "SmdppServer"]


class SmdppServer:
    """The SM-DP+ on a real TLS socket (CERT.DP.TLS of the test PKI), as an async context manager."""

    def __init__(self, pki: RspPki, *, host: str = "127.0.0.1", port: int = 0,
                 address: str | None = None, state_file: Path | None = None,
                 session_ttl_s: float = DEFAULT_SESSION_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.service = SmdpPlus(pki, address=address or "", session_ttl_s=session_ttl_s,
                                state_file=state_file, clock=clock)
        self._fixed_address = address
        self.peer = HttpsPeer(make_app(self.service), server_ssl_context(pki.dptls), host=host, port=port)

    @property
    def url(self) -> str:
        return self.peer.url

    @property
    def address(self) -> str:
        return self.service.address

    async def start(self) -> None:
        await self.peer.start()
        port = self.peer.port
        names = (f"{self.peer.host}:{port}", f"localhost:{port}")
        self.service.set_address(self._fixed_address or names[0], names)

    async def stop(self) -> None:
        await self.peer.stop()

    async def __aenter__(self) -> SmdppServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
