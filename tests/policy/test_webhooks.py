"""Webhooks to a local HTTPS receiver: real TLS (hil.pki), real SQLite outbox, HMAC checked."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from gateway.backhaul.inject_server import server_ssl_context
from gateway.config.policies import WebhooksPolicy
from gateway.core.actions import Waiting
from gateway.policy import EmitEvent
from gateway.policy.alarms import AlarmBook
from gateway.policy.events import SignatureInvalid, WebhookEvent, profile_event, sign, verify_signature
from gateway.policy.webhooks import WebhookDispatcher, WebhookSender, enqueue_event, server_name
from gateway.store import AsyncStore, OutboxLimits, Store, StoreOptions
from hil.pki import RspPki
from policy_support import SECRET, FakeClock, Receiver

EID = bytes.fromhex("89049032123451234512345678901235")


def events(now: float) -> list[EmitEvent]:
    return [EmitEvent(f"fallback.executed:{EID.hex()}:{i}", "fallback.executed", now, EID, (("group", "meters"),))
            for i in range(3)]


@pytest.fixture
def receiver(pki: RspPki, free_tcp_port: int) -> Receiver:
    ctx = server_ssl_context(str(pki.eim_tls.cert_path), str(pki.eim_tls.key_path))
    return Receiver(ctx, free_tcp_port, FakeClock(time.time()))


def policy_for(receiver: Receiver, pki: RspPki, **kw: object) -> WebhooksPolicy:
    return WebhooksPolicy(urls=(receiver.url,), ca_file=pki.tls_ca.cert_path, timeout_s=2.0, **kw)  # type: ignore[arg-type]


async def drain_until_empty(dispatcher: WebhookDispatcher, clock: FakeClock, rounds: int = 20) -> None:
    for _ in range(rounds):
        wake = await dispatcher.step()
        if wake is None:
            return
        clock.now = max(clock.now, wake)
    raise AssertionError("outbox not drained")


async def test_receiver_down_then_up_gets_every_event_exactly_once_with_a_valid_hmac(
        pki: RspPki, receiver: Receiver, astore: AsyncStore) -> None:
    clock = receiver.clock
    policy = policy_for(receiver, pki)
    for ev in events(clock()):
        added = await astore.atomic(lambda s, ev=ev: enqueue_event(s, ev, policy, gateway_id="gw1", now=clock()))
        assert added == 1
    async with WebhookSender(policy, SECRET, clock=clock) as sender:
        dispatcher = WebhookDispatcher(astore, sender, clock=clock)
        wake = await dispatcher.step()                     # receiver down: connection refused
        assert receiver.received == [] and dispatcher.delivered == 0
        pending = await astore.run(lambda s: s.outbox.pending(server_name(receiver.url)))
        assert [e.attempts for e in pending] == [1, 1, 1]
        assert wake is not None and wake > clock()
        await receiver.start()
        try:
            await drain_until_empty(dispatcher, clock)
            # the same events queued again (a replayed decision list) are not sent twice
            for ev in events(clock()):
                assert await astore.atomic(
                    lambda s, ev=ev: enqueue_event(s, ev, policy, gateway_id="gw1", now=clock())) == 0
            assert await dispatcher.step() is None
        finally:
            await receiver.stop()
    ids = [i for i, _ in receiver.received]
    assert sorted(ids) == sorted(e.event_id for e in events(0)) and len(ids) == len(set(ids))
    assert receiver.bad_signatures == 0
    body = receiver.received[0][1]
    assert body["type"] == "fallback.executed" and body["eid"] == EID.hex() and body["gateway"] == "gw1"
    assert body["data"] == {"group": "meters"}


async def test_http_503_is_retried_and_delivered_once(pki: RspPki, receiver: Receiver, astore: AsyncStore) -> None:
    clock = receiver.clock
    policy = policy_for(receiver, pki)
    ev = events(clock())[0]
    await astore.atomic(lambda s: enqueue_event(s, ev, policy, gateway_id="gw1", now=clock()))
    receiver.fail_next = 2
    await receiver.start()
    try:
        async with WebhookSender(policy, SECRET, clock=clock) as sender:
            await drain_until_empty(WebhookDispatcher(astore, sender, clock=clock), clock)
    finally:
        await receiver.stop()
    assert [i for i, _ in receiver.received] == [ev.event_id]


async def test_a_wrong_secret_is_refused_by_the_receiver_and_kept_for_retry(
        pki: RspPki, receiver: Receiver, astore: AsyncStore) -> None:
    clock = receiver.clock
    policy = policy_for(receiver, pki)
    ev = events(clock())[0]
    await astore.atomic(lambda s: enqueue_event(s, ev, policy, gateway_id="gw1", now=clock()))
    await receiver.start()
    try:
        async with WebhookSender(policy, b"not-the-secret-the-receiver-expects", clock=clock) as sender:
            await WebhookDispatcher(astore, sender, clock=clock).step()
    finally:
        await receiver.stop()
    assert receiver.bad_signatures == 1 and receiver.received == []
    assert len(await astore.run(lambda s: s.outbox.pending())) == 1


async def test_an_untrusted_receiver_certificate_is_never_accepted(
        pki: RspPki, receiver: Receiver, astore: AsyncStore) -> None:
    clock = receiver.clock
    policy = WebhooksPolicy(urls=(receiver.url,), ca_file=pki.ci.cert_path, timeout_s=2.0)  # wrong CA
    ev = events(clock())[0]
    await astore.atomic(lambda s: enqueue_event(s, ev, policy, gateway_id="gw1", now=clock()))
    await receiver.start()
    try:
        async with WebhookSender(policy, SECRET, clock=clock) as sender:
            await WebhookDispatcher(astore, sender, clock=clock).step()
    finally:
        await receiver.stop()
    assert receiver.received == []
    assert len(await astore.run(lambda s: s.outbox.pending())) == 1


async def test_the_run_loop_delivers_soon_after_a_kick(pki: RspPki, receiver: Receiver, astore: AsyncStore) -> None:
    clock = receiver.clock
    policy = policy_for(receiver, pki)
    await receiver.start()
    stop = asyncio.Event()
    try:
        async with WebhookSender(policy, SECRET, clock=clock) as sender:
            dispatcher = WebhookDispatcher(astore, sender, clock=clock)
            task = asyncio.create_task(dispatcher.run(stop))
            await asyncio.sleep(0.05)
            ev = events(clock())[0]
            await astore.atomic(lambda s: enqueue_event(s, ev, policy, gateway_id="gw1", now=clock()))
            dispatcher.kick()
            for _ in range(100):
                if receiver.received:
                    break
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(task, 5)
    finally:
        await receiver.stop()
    assert [i for i, _ in receiver.received] == [ev.event_id]


def test_events_not_selected_or_without_urls_are_not_queued(tmp_path: object) -> None:
    from pathlib import Path
    assert isinstance(tmp_path, Path)
    with Store.open(tmp_path / "g.sqlite3") as store:
        ev = events(1.0)[0]
        assert enqueue_event(store, ev, WebhooksPolicy(), gateway_id="gw", now=1.0) == 0
        only = WebhooksPolicy(urls=("https://127.0.0.1/x",), events=("profile.enabled",))
        assert enqueue_event(store, ev, only, gateway_id="gw", now=1.0) == 0
        assert enqueue_event(store, ev, WebhooksPolicy(urls=("https://127.0.0.1/x", "https://127.0.0.2/y")),
                             gateway_id="gw", now=1.0) == 2


def test_signature_verification_accepts_the_documented_format_and_refuses_tampering() -> None:
    body = WebhookEvent.of(events(1_767_225_600.0)[0]).body("gw1")
    assert json.loads(body)["time_utc"] == "2026-01-01T00:00:00Z"
    header = sign(SECRET, 1_767_225_600, body)
    assert verify_signature(SECRET, header, body, now=1_767_225_700.0) == 1_767_225_600
    for bad_header, bad_body, now in [
        (header, body + b" ", 1_767_225_600.0),
        (header, body, 1_767_226_000.0),                                  # too old
        (sign(b"other", 1_767_225_600, body), body, 1_767_225_600.0),
        ("t=abc,v1=00", body, 1_767_225_600.0),
        ("garbage", body, 1_767_225_600.0),
        (None, body, 1_767_225_600.0),
    ]:
        with pytest.raises(SignatureInvalid):
            verify_signature(SECRET, bad_header, bad_body, now=now)


def test_profile_events_map_notification_operations() -> None:
    ev = profile_event(EID, "enable", "8944001234567890123", 7, 1.0)
    assert ev is not None and ev.type == "profile.enabled" and ev.event_id.endswith(":7")
    assert profile_event(EID, "other", None, None, 1.0) is None


def test_a_delivered_notification_audit_becomes_a_profile_event() -> None:
    from gateway.policy.events import profile_event_from_audit
    ev = profile_event_from_audit(EID, "deliverNotification", "ok", "enable to smdp.example", "8944", 5.0)
    assert ev is not None and ev.type == "profile.enabled" and dict(ev.data)["iccid"] == "8944"
    assert profile_event_from_audit(EID, "deliverNotification", "failed", "enable to x", None, 5.0) is None
    assert profile_event_from_audit(EID, "deliverResult", "ok", "result to eim", None, 5.0) is None


def test_events_queued_for_a_url_no_longer_configured_are_dropped(tmp_path: object) -> None:
    from pathlib import Path

    from gateway.policy.webhooks import drop_unconfigured
    assert isinstance(tmp_path, Path)
    with Store.open(tmp_path / "g.sqlite3") as store:
        both = WebhooksPolicy(urls=("https://127.0.0.1/a", "https://127.0.0.1/b"))
        for ev in events(1.0):
            enqueue_event(store, ev, both, gateway_id="gw", now=1.0)
        store.outbox.enqueue("eim.example", "k1", "ProvideEimPackageResult", b"x", now=1.0)
        assert drop_unconfigured(store, WebhooksPolicy(urls=("https://127.0.0.1/a",)), now=2.0) == 3
        assert sorted({e.server for e in store.outbox.pending()}) == ["eim.example", server_name("https://127.0.0.1/a")]


def test_above_the_outbox_alarm_ratio_only_alarm_events_are_queued(tmp_path: Path) -> None:
    """The headroom above the alarm ratio is for results and notifications, but the queue
    alarm's own event must still reach the receiver; at the bound nothing is added at all."""
    hooks = WebhooksPolicy(urls=("https://127.0.0.1/a",))
    limits = OutboxLimits(max_entries=4, max_bytes=1024 * 1024, alarm_ratio=0.5)
    with Store.open(tmp_path / "g.sqlite3", StoreOptions(outbox_limits=limits)) as store:
        store.deliveries.replace(EID, [Waiting(f"r{i}", "result", "eim-1", "ProvideEimPackageResult", 100,
                                               "WAITING", 1, None) for i in range(2)], now=1.0)
        usage = store.outbox.usage()
        assert usage.level == "alarm"
        assert enqueue_event(store, events(2.0)[0], hooks, gateway_id="gw", now=2.0) == 0
        raised = [d for d in AlarmBook().queue_level(usage.level, usage.entries, usage.payload_bytes, 2.0)
                  if isinstance(d, EmitEvent)]
        assert [d.type for d in raised] == ["alarm.raised"]
        assert enqueue_event(store, raised[0], hooks, gateway_id="gw", now=2.0) == 1
        store.deliveries.replace(EID, [Waiting(f"r{i}", "result", "eim-1", "ProvideEimPackageResult", 100,
                                               "WAITING", 1, None) for i in range(3)], now=3.0)
        assert store.outbox.usage().level == "full"
        full = EmitEvent("alarm.raised:queue:outbox:full:3", "alarm.raised", 3.0, None, ())
        assert enqueue_event(store, full, hooks, gateway_id="gw", now=3.0) == 0
        assert [e.kind for e in store.outbox.pending()] == ["webhook:alarm.raised"]
