"""Test helpers of tests/policy: a local HTTPS webhook receiver, a hand-driven clock, and a
software eUICC with a home and a fallback profile, with the daemon configuration that falls it back."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
from dataclasses import dataclass, field

from pathlib import Path

from aiohttp import web

from hil.euicc import SoftEuicc
from hil.euicc.eim import eim_config_from
from hil.euicc.state import Profile
from hil.peers.eim import EimServer
from hil.pki import RspPki
from tests.service.daemon_support import Layout, free_udp_port

SECRET = b"webhook-secret-of-at-least-32-characters!"
HOME = bytes.fromhex("98001032547698103214")
FALLBACK = bytes.fromhex("98001032547698103215")


def with_fallback_profile(card: SoftEuicc) -> SoftEuicc:
    """`card` with its home profile enabled and a fallback profile beside it."""
    card.state.profiles += [
        Profile(HOME, card.new_isdp_aid(), state="enabled", install_state="installed"),
        Profile(FALLBACK, card.new_isdp_aid(), install_state="installed", fallback=True, fallback_allowed=True)]
    card.commit()
    return card


def fallback_card(pki: RspPki, eid: bytes, eims: list[EimServer]) -> SoftEuicc:
    """A software eUICC with a home and a fallback profile, managed by `eims` (each knows it)."""
    card = SoftEuicc(pki, eid)
    for eim in eims:
        eim.service.device(eid, create=True)
        card.state.eims.append(eim_config_from(card, eim.service.own_configuration_data(indirect_download=False)))
    return with_fallback_profile(card)


def fallback_layout(workdir: Path, pki: RspPki, eim: EimServer, *, report_spread_s: float = 0.0,
                    extra: str = "") -> Layout:
    """The daemon with `eim` as its one configured eIM and the fallback policy on (3 attach failures)."""
    host, port = eim.fqdn.split(":")
    lay = Layout(workdir, free_udp_port(), workdir / "api.sock", [1], extra=(
        f'[northbound]\neim_fqdn = "{host}"\neim_port = {port}\neim_ca_file = "{pki.tls_ca.cert_path}"\n'
        "[policies.fallback]\nenabled = true\nattach_failures = 3\n"
        f"[policies.fallback_wave]\nreport_spread_s = {report_spread_s}\n" + extra))
    lay.write()
    return lay


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Receiver:
    """Checks the HMAC exactly as docs/webhooks.md tells receivers to, records what arrived."""

    ssl_context: ssl.SSLContext
    port: int
    clock: FakeClock
    received: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    bad_signatures: int = 0
    fail_next: int = 0            # answer HTTP 503 to this many requests first
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get("X-Ipae-Signature", "")
        fields = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
        expected = hmac.new(SECRET, fields.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
        fresh = abs(self.clock() - int(fields.get("t", "0"))) <= 300
        if not (hmac.compare_digest(expected, fields.get("v1", "")) and fresh):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=503)
        self.received.append((request.headers["X-Ipae-Event-Id"], json.loads(body)))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/ipae", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.ssl_context).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hooks/ipae"
