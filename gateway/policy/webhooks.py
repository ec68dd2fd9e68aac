"""Webhook delivery: events wait in the store's outbox and are POSTed, signed, over verified TLS.

Theory of operation. The runtime turns each `EmitEvent` decision into one outbox entry per
configured URL (`enqueue_event`, inside the same store transaction as the rest of the
decisions of that uplink): server "webhook <url>", key = the event id, payload = the exact
JSON body (gateway.policy.events). Nothing else happens on the device's path, so a slow or
dead receiver never delays device work. The outbox is shared with eIM results: an event is
not queued once the outbox is above its alarm ratio (results for the eIM keep the headroom),
except the alarm events themselves (the queue alarm is one: its raising must reach the receiver),
and that drop is logged and counted.

`WebhookDispatcher` runs beside the devices: one `OutboxDrainer` (gateway.store.drain:
lease, send, ack/nack with jittered exponential backoff, per-server circuit breaker) per
URL, and `WebhookSender.send` as its send function: one aiohttp POST with the HMAC headers,
TLS verified against `policies.webhooks.ca_file` or the system store (the trust handling of
gateway.backhaul.http.TlsTrust). A receiver that is down gets the event later, once: 2xx
acks it, 408/429/5xx/401/403, timeouts, connection and TLS failures retry (a configuration
mistake on either side can be fixed without losing events), any other 4xx is a refusal
for good (acked and audited by the drainer).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Final

import aiohttp

from gateway.backhaul.http import TlsTrust
from gateway.config.policies import WebhooksPolicy
from gateway.clock import Clock, as_clock
from gateway.core.retry import BreakerPolicy
from gateway.errors import NetworkError, TransportTimeout
from gateway.policy.decisions import EmitEvent
from gateway.policy.events import (
    CONTENT_TYPE,
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    WebhookEvent,
    sign,
)
from gateway.store import AsyncStore, IdempotencyConflict, OutboxEntry, OutboxFull, Store
from gateway.store.drain import Outcome, OutboxDrainer

log = logging.getLogger(__name__)

SERVER_PREFIX: Final = "webhook "
KIND_PREFIX: Final = "webhook:"
RETRY_STATUSES: Final = frozenset({401, 403, 408, 429})
USER_AGENT: Final = "ipae-gateway-webhooks"
MAX_IDLE_S: Final = 60.0


def server_name(url: str) -> str:
    return SERVER_PREFIX + url


ALARM_EVENT_PREFIX = "alarm."     # alarm.raised / alarm.cleared: queued above the alarm ratio too


def wanted(policy: WebhooksPolicy, event_type: str) -> bool:
    return not policy.events or "*" in policy.events or event_type in policy.events


def enqueue_event(store: Store, decision: EmitEvent, policy: WebhooksPolicy, *, gateway_id: str,
                  now: float) -> int:
    """Queue one event for every URL (sync: call it on the store thread, inside the
    transaction of the decision). Returns the number of entries added."""
    if not policy.urls or not wanted(policy, decision.type):
        return 0
    if store.outbox.usage().level != "ok" and not decision.type.startswith(ALARM_EVENT_PREFIX):
        # the headroom is for results and notifications; an alarm event is what tells of it
        log.warning("webhook event %s not queued: the outbox is above its alarm level", decision.event_id)
        return 0
    body = WebhookEvent.of(decision).body(gateway_id)
    added = 0
    for url in policy.urls:
        try:
            added += store.outbox.enqueue(server_name(url), decision.event_id, KIND_PREFIX + decision.type, body,
                                          eid=decision.eid, now=now).new
        except OutboxFull:
            log.warning("webhook event %s not queued for %s: outbox full", decision.event_id, url)
        except IdempotencyConflict:
            log.info("webhook event %s for %s is queued already (with other data)", decision.event_id, url)
    return added


def drop_unconfigured(store: Store, policy: WebhooksPolicy, *, now: float) -> int:
    """At start-up and after a reload: events still queued for URLs no longer configured are
    dropped (acknowledged, so they stop counting against the outbox bound). Returns how many."""
    keep = {server_name(url) for url in policy.urls}
    dropped = 0
    for server in store.outbox.servers():
        if server.startswith(SERVER_PREFIX) and server not in keep:
            entries = store.outbox.pending(server)
            dropped += store.outbox.ack([e.id for e in entries], now=now)
            log.warning("dropped %d webhook events queued for %s, no longer configured",
                        len(entries), server[len(SERVER_PREFIX):])
    return dropped


class WebhookSender:
    """POSTs one outbox entry; use as ``async with WebhookSender(...) as sender``."""

    def __init__(self, policy: WebhooksPolicy, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self._secret = secret
        self._clock = clock
        self._ssl: ssl.SSLContext = TlsTrust(ca_file=str(policy.ca_file) if policy.ca_file else None).ssl_context()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WebhookSender:
        self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32, limit_per_host=self.policy.max_concurrency),
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout_s),
                headers={"User-Agent": USER_AGENT})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def send(self, entry: OutboxEntry) -> Outcome:
        url = entry.server[len(SERVER_PREFIX):]
        headers = {
            "Content-Type": CONTENT_TYPE,
            EVENT_ID_HEADER: entry.key,
            EVENT_TYPE_HEADER: entry.kind[len(KIND_PREFIX):],
            SIGNATURE_HEADER: sign(self._secret, int(self._clock()), entry.payload),
        }
        session = self._open()
        try:
            async with session.post(url, data=entry.payload, headers=headers, allow_redirects=False,
                                    ssl=self._ssl if url.startswith("https://") else False) as resp:
                await resp.read()
                status = resp.status
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TransportTimeout(f"webhook {url}: no answer in {self.policy.timeout_s} s") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            log.error("webhook %s: certificate did not verify (%s); will retry", url, exc.certificate_error)
            return "retry"
        except (aiohttp.ClientError, OSError) as exc:
            raise NetworkError(f"webhook {url}: {type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            return "delivered"
        if status >= 500 or status in RETRY_STATUSES:
            log.info("webhook %s answered HTTP %d for %s; will retry", url, status, entry.key)
            return "retry"
        log.warning("webhook %s refused %s with HTTP %d", url, entry.key, status)
        return "rejected"


class WebhookDispatcher:
    """Drains the webhook entries of the outbox, one drainer per URL, until stopped."""

    def __init__(self, astore: AsyncStore, sender: WebhookSender, *, clock: Clock | Callable[[], float] = time.time,
                 breaker: BreakerPolicy = BreakerPolicy()) -> None:
        self._clock = as_clock(clock)
        self._kick = asyncio.Event()
        self.drainers = [OutboxDrainer(astore, server_name(url), sender.send, policy=breaker,
                                       concurrency=sender.policy.max_concurrency)
                         for url in sender.policy.urls]
        self.delivered = 0
        self.rejected = 0

    def kick(self) -> None:
        """Something was queued: drain now rather than at the next planned wake-up."""
        self._kick.set()

    async def step(self) -> float | None:
        """One round over every URL; the earliest time worth waking up again (None: empty)."""
        wakeups: list[float] = []
        for drainer in self.drainers:
            result = await drainer.step(self._clock())
            self.delivered += result.delivered
            self.rejected += result.rejected
            if result.next_wakeup is not None:
                wakeups.append(result.next_wakeup)
        return min(wakeups) if wakeups else None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._kick.clear()
            wake = await self.step()
            delay = MAX_IDLE_S if wake is None else min(MAX_IDLE_S, max(0.0, wake - self._clock()))
            if delay <= 0:
                await asyncio.sleep(0)
                continue
            kicked = asyncio.ensure_future(self._kick.wait())
            stopped = asyncio.ensure_future(stop.wait())
            slept = asyncio.ensure_future(self._clock.sleep(delay))
            try:
                await asyncio.wait({kicked, stopped, slept}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in (kicked, stopped, slept):
                    f.cancel()
                await asyncio.gather(kicked, stopped, slept, return_exceptions=True)
