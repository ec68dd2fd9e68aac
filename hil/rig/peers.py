"""The SM-DP+ and eIM peers a rig orders operations from, through their admin HTTP APIs.

Theory of operation. A state-changing scenario needs an order at the test SM-DP+ (a profile
for this EID) and eUICC packages at the test eIM (download trigger, enable, disable, delete).
`PeerAdmin` speaks the peers' admin API (hil/peers/README.md) over HTTPS, trusting the
TLS bundle of the rig's PKI directory, whether the peers run in this process (`local_peers`,
the default) or elsewhere (`--eim URL --smdp URL`, e.g. `python -m hil.peers.eim`). The same
client in both cases keeps one code path, so what the tests exercise is what a rig PC runs.
"""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from gateway.errors import NetworkError, RemoteProtocolError

OPEN_STATES = ("queued", "delivered")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def loopback_port(fqdn: str | None) -> int | None:
    """The port of an eIM FQDN on this machine ("127.0.0.1:8444"), else None."""
    if not fqdn:
        return None
    host, _, port = fqdn.rpartition(":")
    return int(port) if host in LOOPBACK_HOSTS and port.isdigit() and 0 < int(port) < 65536 else None


class PeerAdmin:
    def __init__(self, eim_url: str, smdp_url: str, ca_file: str, *, timeout_s: float = 30.0) -> None:
        self.eim_url = eim_url.rstrip("/")
        self.smdp_url = smdp_url.rstrip("/")
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PeerAdmin:
        self._session = aiohttp.ClientSession(timeout=self._timeout,
                                              connector=aiohttp.TCPConnector(ssl=self._ssl))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, url: str, body: Any = None) -> Any:
        assert self._session is not None
        try:
            async with self._session.request(method, url, json=body) as reply:
                answer = await reply.json(content_type=None)
                if reply.status >= 300:
                    raise RemoteProtocolError(f"{method} {url}: HTTP {reply.status} {answer}")
                return answer
        except aiohttp.ClientError as exc:
            raise NetworkError(f"{method} {url}: {exc}") from exc
        except ValueError as exc:
            raise RemoteProtocolError(f"{method} {url}: not JSON ({exc})") from exc

    # --- eIM -------------------------------------------------------------------------------

    async def eim_identity(self) -> dict[str, Any]:
        return dict(await self._call("GET", f"{self.eim_url}/admin/eim"))

    async def register(self, eid: bytes, *, certificates: dict[str, bytes], counter: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if certificates:
            body["euiccCertificate"] = base64.b64encode(certificates["euiccCertificate"]).decode()
            body["eumCertificate"] = base64.b64encode(certificates["eumCertificate"]).decode()
        if counter is not None:
            body["counterValue"] = counter
        return dict(await self._call("POST", f"{self.eim_url}/admin/eids/{eid.hex()}", body))

    async def download(self, eid: bytes, activation_code: str) -> dict[str, Any]:
        answer = await self._call("POST", f"{self.eim_url}/admin/eids/{eid.hex()}/download",
                                  {"activationCode": activation_code})
        return dict(answer["package"])

    async def psmo(self, eid: bytes, operations: list[dict[str, Any]]) -> dict[str, Any]:
        answer = await self._call("POST", f"{self.eim_url}/admin/eids/{eid.hex()}/psmo", {"operations": operations})
        return dict(answer["package"])

    async def device(self, eid: bytes) -> dict[str, Any]:
        return dict(await self._call("GET", f"{self.eim_url}/admin/eids/{eid.hex()}"))

    async def package(self, eid: bytes, package_id: Any) -> dict[str, Any]:
        for package in (await self.device(eid))["packages"]:
            if package["packageId"] == package_id:
                return dict(package)
        raise RemoteProtocolError(f"the eIM lost package {package_id}")

    # --- SM-DP+ ----------------------------------------------------------------------------

    async def order(self, eid: bytes) -> dict[str, Any]:
        return dict(await self._call("POST", f"{self.smdp_url}/admin/orders", {"eid": eid.hex()}))

    async def smdp_notifications(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", f"{self.smdp_url}/admin/notifications"))["notifications"])

    async def delivered(self, eid: bytes) -> int:
        """Notifications the peers received so far: all at the SM-DP+, this EID's at the eIM."""
        at_eim = len((await self.device(eid))["notifications"])
        return at_eim + len(await self.smdp_notifications())


@contextlib.asynccontextmanager
async def local_peers(pki: Any, *, eim_port: int = 0, smdp_port: int = 0) -> AsyncIterator[tuple[str, str]]:
    """The SM-DP+ and eIM peers in this process on loopback: (eim_url, smdp_url).

    `eim_port` 0 picks a free port; a card that already holds the test eIM's configuration
    knows it by its FQDN (127.0.0.1:port), so a later run must start the eIM on that port;
    likewise a profile sends its notifications to the SM-DP+ address it was installed from.
    """
    from hil.peers.eim import EimServer
    from hil.peers.smdpp import SmdppServer

    async with SmdppServer(pki, port=smdp_port) as smdp, EimServer(pki, smdp_url=smdp.url, port=eim_port) as eim:
        yield eim.url, smdp.url
