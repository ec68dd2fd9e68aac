"""Test helpers of tests/policy: a local HTTPS webhook receiver and a hand-driven clock."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
from dataclasses import dataclass, field

from aiohttp import web

SECRET = b"webhook-secret-of-at-least-32-characters!"


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
