"""A test eIM (SGP.32 v1.2 ESipa, ASN.1 and JSON bindings) with real signatures both ways.

    async with EimServer(pki, smdp_url=smdp.url) as eim:
        eim.service.queue_euicc_package(eid, {"psmo": [{"op": "enable", "iccid": "..."}]})
        eim.url        # https://127.0.0.1:<port>
        eim.fqdn       # 127.0.0.1:<port>, the eimFqdn of its EimConfigurationData

    python -m hil.peers.eim --pki DIR --host 127.0.0.1 --port P [--smdpp URL] [--inject URL] [--state FILE]

Modules: service (the eIM logic, no HTTP), server (ESipa and admin routes), wire (both
bindings to one value form), signing (what the eIM signs and verifies), packages (admin JSON
to PSMOs, eCOs, data requests and download triggers), model (what it keeps), relay (indirect
download), compact (minimized eUICC responses), push (TransferEimPackage), persist (--state).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hil.peers.common import HttpsPeer, server_ssl_context
from hil.peers.eim.server import make_app
from hil.peers.eim.model import Device, Package
from hil.peers.eim.service import DEFAULT_EIM_ID, DEFAULT_SESSION_TTL_S, Eim
from hil.pki import RspPki

__all__ = ["Device", "Eim", "EimServer", "Package"]


class EimServer:
    """The eIM on a real TLS socket (eim-tls of the test PKI), as an async context manager."""

    def __init__(self, pki: RspPki, *, host: str = "127.0.0.1", port: int = 0,
                 eim_id: str = DEFAULT_EIM_ID, smdp_url: str | None = None,
                 inject_url: str | None = None, inject_ca_file: str | None = None,
                 inject_binding: str = "asn1",
                 session_ttl_s: float = DEFAULT_SESSION_TTL_S, state_file: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.service = Eim(pki, eim_id=eim_id, smdp_url=smdp_url, inject_url=inject_url,
                           inject_ca_file=inject_ca_file, inject_binding=inject_binding, session_ttl_s=session_ttl_s, state_file=state_file, clock=clock)
        self.peer = HttpsPeer(make_app(self.service), server_ssl_context(pki.eim_tls), host=host, port=port)

    @property
    def url(self) -> str:
        return self.peer.url

    @property
    def fqdn(self) -> str:
        return self.service.fqdn

    async def start(self) -> None:
        await self.service.open()
        await self.peer.start()
        self.service.fqdn = f"{self.peer.host}:{self.peer.port}"

    async def stop(self) -> None:
        await self.peer.stop()
        await self.service.close()

    async def __aenter__(self) -> EimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
