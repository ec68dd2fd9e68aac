"""The runtime applies an engine action list atomically: store first (one transaction), then I/O."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from runtime_support import BATCH, EID, RecordingBackhaul, ScriptedEngine, committed_sessions

from gateway.core.actions import (
    Action,
    Audit,
    BackhaulWaiting,
    MarkInbox,
    PostEs9,
    PostEsipa,
    ReplyIdle,
    SaveSession,
    SendBatch,
    StaleAnswer,
    StartTimer,
    Waiting,
)
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.core.events import BackhaulAnswered, BackhaulFailed, DeviceHello, EimPackageReceived, Event, TimerFired
from gateway.errors import NetworkError, RemoteProtocolError
from gateway.links.protocol import BatchMsg, DeviceStatus, ErrorCode, ErrorMsg, Hello, Idle
from gateway.service.runtime import Runtime, RuntimeOptions, iccid_digits, profile_change
from gateway.spec import codec
from gateway.store import AsyncStore, OutboxLimits, Store, StoreDiskFull, StoreOptions

HERE = Path(__file__).resolve().parent
HELLO = Hello(DeviceStatus(eid=EID, imei="356938035643809"))


async def test_store_actions_commit_before_the_backhaul_post_and_the_downlink(astore: AsyncStore) -> None:
    seen_at_post: list[list[tuple[bytes, str]]] = []

    def script(event: Event) -> list[Action]:
        if isinstance(event, DeviceHello):
            return [SaveSession(EID, "polling", b"blob-1"), Audit(EID, None, "GetEimPackage", "eim.test", "sent"),
                    PostEsipa(EID, "r1", "eim.test", "eim.test", "GetEimPackage", b"\xbf\x4f\x00")]
        assert isinstance(event, BackhaulAnswered) and event.request_id == "r1" and event.body == b"answer"
        return [SaveSession(EID, "running", b"blob-2"), SendBatch(EID, BATCH)]

    db = await astore.run(lambda s: s.path)
    backhaul = RecordingBackhaul(answer=b"answer", on_post=lambda a: seen_at_post.append(committed_sessions(db)))
    runtime = Runtime(ScriptedEngine(script), astore, backhaul, clock=lambda: 2000.0)
    downlink = await runtime.exchange(EID, HELLO)
    await runtime.close()

    assert downlink == BatchMsg(BATCH)
    assert seen_at_post == [[(EID, "polling")]]          # the post saw the session already committed
    session = await astore.run(lambda s: s.sessions.get(EID))
    assert session is not None and (session.state, session.blob) == ("running", b"blob-2")
    audit = await astore.run(lambda s: s.audit.query(eid=EID))
    assert [(r.operation, r.result, r.origin_eim, r.time) for r in audit] == [("GetEimPackage", "sent", "eim.test", 2000.0)]
    device = await astore.run(lambda s: s.devices.require(EID))
    assert device.last_contact == 2000.0 and device.last_status is not None
    assert device.last_status["imei"] == "356938035643809"
    assert runtime.metrics.round_trips.get(downlink="BatchMsg") == 1
    assert runtime.metrics.apdus.get() == 1


async def test_a_failing_store_action_rolls_back_the_list_and_performs_no_io(astore: AsyncStore) -> None:
    def script(event: Event) -> list[Action]:
        return [SaveSession(EID, "polling", b"blob"), Audit(EID, None, "GetEimPackage", "", "sent"),
                MarkInbox(EID, "key-1", "no-such-state"),
                PostEsipa(EID, "r1", "eim.test", "eim.test", "GetEimPackage", b""), SendBatch(EID, BATCH)]

    backhaul = RecordingBackhaul()
    runtime = Runtime(ScriptedEngine(script), astore, backhaul, clock=lambda: 2000.0)
    downlink = await runtime.exchange(EID, HELLO)
    await runtime.close()

    assert isinstance(downlink, ErrorMsg) and downlink.code == ErrorCode.INTERNAL
    assert backhaul.posts == []
    assert await astore.run(lambda s: s.sessions.get(EID)) is None
    assert await astore.run(lambda s: s.audit.query()) == []
    assert await astore.run(lambda s: s.inbox.entries()) == []


def test_a_crash_between_commit_and_io_leaves_the_session_and_the_engine_resends_on_restore(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite3"
    done = subprocess.run([sys.executable, str(HERE / "runtime_crash_worker.py"), str(db)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr

    with Store.open(db) as store:
        store.check()
        session = store.sessions.get(EID)
        assert session is not None
        engine = Engine(EngineConfig(eims=(EimEndpoint("eim.test", "eim.test:8443"),), seed=1))
        engine.restore(EID, session.blob)
        again = engine.resume(1001.0)
    posts = [a for a in again if isinstance(a, PostEsipa)]
    assert [p.function for p in posts] == ["GetEimPackage"]


async def test_a_backhaul_failure_comes_back_to_the_engine_as_backhaul_failed(astore: AsyncStore) -> None:
    failed: list[BackhaulFailed] = []

    def script(event: Event) -> list[Action]:
        if isinstance(event, DeviceHello):
            return [PostEs9(EID, "r9", "smdp.test", "initiateAuthentication", b"{}")]
        assert isinstance(event, BackhaulFailed)
        failed.append(event)
        return [ReplyIdle(EID, 120)]

    runtime = Runtime(ScriptedEngine(script), astore, RecordingBackhaul(error=NetworkError("refused")),
                      clock=lambda: 5.0)
    downlink = await runtime.exchange(EID, HELLO)
    await runtime.close()
    assert downlink == Idle(120)
    assert [(f.request_id, f.error_class, f.retryable, f.detail) for f in failed] == [
        ("r9", "NetworkError", True, "refused")]
    assert runtime.metrics.errors.get(kind="NetworkError") == 1


async def test_a_timer_fires_back_into_the_engine_at_its_time(astore: AsyncStore) -> None:
    fired = asyncio.Event()
    clock = [100.0]

    def script(event: Event) -> list[Action]:
        if isinstance(event, DeviceHello):
            return [StartTimer(EID, "poll", at=100.05), ReplyIdle(EID, 60)]
        assert isinstance(event, TimerFired) and event.name == "poll"
        fired.set()
        return []

    runtime = Runtime(ScriptedEngine(script), astore, RecordingBackhaul(), clock=lambda: clock[0])
    assert await runtime.exchange(EID, HELLO) == Idle(60)
    assert runtime.timers == 1
    await asyncio.wait_for(fired.wait(), 5)
    await runtime.close()


async def test_an_uplink_the_engine_does_not_answer_in_time_gets_idle(astore: AsyncStore) -> None:
    runtime = Runtime(ScriptedEngine(lambda e: []), astore, RecordingBackhaul(),
                      options=RuntimeOptions(exchange_timeout_s=0.05, busy_retry_s=17))
    assert await runtime.exchange(EID, HELLO) == Idle(17)
    assert runtime.metrics.errors.get(kind="exchange-timeout") == 1
    await runtime.close()


def _pushed_package(eid: bytes, tx: bytes) -> bytes:
    request = {"euiccPackageSigned": {"eimId": "eim.test", "eidValue": eid, "counterValue": 1,
                                      "eimTransactionId": tx,
                                      "euiccPackage": ("psmoList", [("listProfileInfo", {})])},
               "eimSignature": bytes(64)}
    return codec.encode("TransferEimPackageRequest", ("euiccPackageRequest", request))


async def test_a_pushed_package_is_in_the_inbox_before_it_is_acknowledged_and_runs_once(astore: AsyncStore) -> None:
    received: list[EimPackageReceived] = []
    engine = ScriptedEngine(lambda e: received.append(e) or [] if isinstance(e, EimPackageReceived) else [])
    runtime = Runtime(engine, astore, RecordingBackhaul(), clock=lambda: 50.0)
    body = _pushed_package(EID, b"\x01\x02")

    answer = await runtime.on_transfer(body, "asn1")
    assert codec.decode("TransferEimPackageResponse", answer) == ("eimPackageReceived", None)
    entries = await astore.run(lambda s: s.inbox.entries(EID))
    assert [(e.key, e.payload, e.state) for e in entries] == [("eim:eim.test/tx:0102", body, "queued")]
    assert await runtime.on_transfer(body, "asn1") == answer      # pushed again: acknowledged, not re-run
    await asyncio.sleep(0.05)
    await runtime.close()
    assert [(r.key, r.raw, r.via) for r in received] == [("eim:eim.test/tx:0102", body, "push")]


async def test_a_pushed_package_for_an_unknown_device_is_refused(astore: AsyncStore) -> None:
    runtime = Runtime(ScriptedEngine(lambda e: []), astore, RecordingBackhaul())
    with pytest.raises(RemoteProtocolError, match="not registered"):
        await runtime.on_transfer(_pushed_package(bytes(16), b"\x01"), "asn1")
    with pytest.raises(RemoteProtocolError):
        await runtime.on_transfer(b"\xbf\x4e\x03\x02\x01\x01", "asn1")
    await runtime.close()


async def test_mark_inbox_moves_the_entry_in_the_same_transaction_as_the_session(astore: AsyncStore) -> None:
    await astore.run(lambda s: s.inbox.enqueue(EID, "k1", "eim-package", b"pkg", origin="eim.test", now=1.0))

    def script(event: Event) -> list[Action]:
        return [SaveSession(EID, "running", b"b"), MarkInbox(EID, "k1", "running"), ReplyIdle(EID, 5)]

    runtime = Runtime(ScriptedEngine(script), astore, RecordingBackhaul(), clock=lambda: 3.0)
    assert await runtime.exchange(EID, HELLO) == Idle(5)
    await runtime.close()
    entry = await astore.run(lambda s: s.inbox.find(EID, "k1"))
    assert entry is not None and entry.state == "in_progress" and entry.updated_at == 3.0


def test_iccid_digits_swap_nibbles_and_drop_the_filler() -> None:
    assert iccid_digits(bytes.fromhex("981001000000000000F1")) == "8901100000000000001"


async def test_drain_waits_for_in_flight_work_and_idles_new_uplinks(astore: AsyncStore) -> None:
    release = asyncio.Event()

    class SlowBackhaul(RecordingBackhaul):
        async def post_es9(self, action: PostEs9) -> bytes:
            await release.wait()
            return b"{}"

    def script(event: Event) -> list[Action]:
        if isinstance(event, DeviceHello):
            return [PostEs9(EID, "r1", "smdp.test", "initiateAuthentication", b"{}")]
        return [SendBatch(EID, BATCH)]

    runtime = Runtime(ScriptedEngine(script), astore, SlowBackhaul(), options=RuntimeOptions(stopping_retry_s=99))
    in_flight = asyncio.create_task(runtime.exchange(EID, HELLO))
    await asyncio.sleep(0.05)
    assert runtime.pending_exchanges == 1
    drained = asyncio.create_task(runtime.drain(5.0))
    await asyncio.sleep(0.05)
    assert not drained.done()
    assert await runtime.exchange(EID, HELLO) == Idle(99)          # stopping: come back later
    release.set()
    assert await drained is True
    assert await in_flight == BatchMsg(BATCH)                       # the in-flight exchange finished
    await runtime.close()


async def test_drain_gives_up_at_its_bound_and_close_answers_what_is_left(astore: AsyncStore) -> None:
    class StuckBackhaul(RecordingBackhaul):
        async def post_es9(self, action: PostEs9) -> bytes:
            await asyncio.Event().wait()
            return b""

    runtime = Runtime(ScriptedEngine(lambda e: [PostEs9(EID, "r1", "smdp.test", "initiateAuthentication", b"{}")]),
                      astore, StuckBackhaul(), options=RuntimeOptions(stopping_retry_s=42))
    in_flight = asyncio.create_task(runtime.exchange(EID, HELLO))
    await asyncio.sleep(0.05)
    assert await runtime.drain(0.1) is False
    await runtime.close()
    assert await in_flight == Idle(42)


async def test_a_removed_notification_queues_its_webhook_event_in_the_same_transaction(astore: AsyncStore) -> None:
    def script(event: Event) -> list[Action]:
        return [SaveSession(EID, "idle", b"s"),
                Audit(EID, bytes.fromhex("98490000000000000010"), "removeNotification", "engine", "ok", "seq 3 (enable)",
                      event="enable", seq=3),
                Audit(EID, None, "removeNotification", "engine", "ok", "seq 4 (result)", seq=4), ReplyIdle(EID, 5)]

    seen: list[tuple[str, int]] = []

    def on_audit(s: Store, a: Audit, now: float) -> int:
        change = profile_change(a)
        if change is None:
            return 0
        seen.append(change)
        s.outbox.enqueue("webhook http://receiver.test/hook", f"{change[0]}:{change[1]}", "webhook:profile.enabled",
                         b"{}", eid=a.eid, now=now)
        return 1

    kicked: list[bool] = []
    runtime = Runtime(ScriptedEngine(script), astore, RecordingBackhaul(), clock=lambda: 9.0, on_audit=on_audit)
    runtime.on_queued = lambda: kicked.append(True)
    assert await runtime.exchange(EID, HELLO) == Idle(5)
    await runtime.close()
    assert seen == [("enable", 3)] and kicked == [True]
    pending = await astore.run(lambda s: s.outbox.pending())
    assert [(e.key, e.eid) for e in pending] == [("enable:3", EID)]


async def test_a_step_whose_transaction_fails_rewinds_the_engine_to_the_stored_session(
        astore: AsyncStore, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(EngineConfig(eims=(EimEndpoint("eim.test", "eim.test:8443"),), seed=1))
    backhaul = RecordingBackhaul(error=NetworkError("down"))
    runtime = Runtime(engine, astore, backhaul, clock=lambda: 10.0,
                      options=RuntimeOptions(exchange_timeout_s=0.2, busy_retry_s=7))
    real = Runtime._apply_store

    def disk_full(self: Runtime, *args: object) -> int:
        raise StoreDiskFull("database or disk is full")

    monkeypatch.setattr(Runtime, "_apply_store", disk_full)
    downlink = await runtime.exchange(EID, HELLO)
    assert isinstance(downlink, ErrorMsg) and downlink.code == ErrorCode.INTERNAL
    assert backhaul.posts == [] and EID not in engine.sessions       # nothing happened, nothing remembered

    monkeypatch.setattr(Runtime, "_apply_store", real)
    await runtime.exchange(EID, HELLO)                                 # the same wake-up, now with a disk
    await runtime.close()
    assert [p.function for p in backhaul.posts][:1] == ["GetEimPackage"]
    assert await astore.run(lambda s: s.sessions.get(EID)) is not None


async def test_an_answer_the_engine_let_go_of_is_counted_by_reason_and_nothing_else_happens(
        astore: AsyncStore) -> None:
    def script(event: Event) -> list[Action]:
        if isinstance(event, DeviceHello):
            return [PostEs9(EID, "r9", "smdp.test", "handleNotification", b"{}")]
        assert isinstance(event, BackhaulAnswered)
        return [StaleAnswer(EID, event.request_id, "acknowledged"), ReplyIdle(EID, 60)]

    backhaul = RecordingBackhaul()
    runtime = Runtime(ScriptedEngine(script), astore, backhaul, clock=lambda: 5.0)
    downlink = await runtime.exchange(EID, HELLO)
    await runtime.close()
    assert downlink == Idle(60)
    assert runtime.metrics.stale_answers.get(reason="acknowledged") == 1
    assert runtime.metrics.errors.get(kind="downlink-without-uplink") == 0 and len(backhaul.posts) == 1
    assert "ipae_gateway_stale_answers_total" in runtime.metrics.registry.render()


async def test_the_hold_counts_what_steps_add_to_the_backlog_before_their_commit_returns(tmp_path: Path) -> None:
    """The engine decides the next device's step while this one's commit waits for the disk (a
    group commit): the hold on new work must see the deliveries those steps add, not the last
    committed count, or every device stepping meanwhile starts new work past the bound."""
    def waiting(*keys: str) -> tuple[Waiting, ...]:
        return tuple(Waiting(k, "result", "eim.test", "ProvideEimPackageResult", 10, "WAITING", 1, None) for k in keys)

    steps = {"grow": BackhaulWaiting(EID, waiting("a", "b", "c", "d"), previous=()),
             "ack": BackhaulWaiting(EID, waiting(), previous=waiting("a", "b", "c", "d"))}

    def script(event: Event) -> list[Action]:
        assert isinstance(event, TimerFired)
        return [steps[event.name], SaveSession(EID, event.name, b"")]

    limits = OutboxLimits(max_entries=4, max_bytes=1 << 20, alarm_ratio=0.5)
    async with await AsyncStore.open(tmp_path / "gw.sqlite3", StoreOptions(outbox_limits=limits)) as astore:
        engine = ScriptedEngine(script)
        engine.hold_new_work = False  # type: ignore[attr-defined]
        runtime = Runtime(engine, astore, RecordingBackhaul(), clock=lambda: 2000.0)
        runtime.note_backlog(await astore.run(lambda s: s.outbox.usage()))
        release, started = threading.Event(), threading.Event()

        def busy(s: Store) -> None:
            started.set()
            release.wait(10)

        held = asyncio.ensure_future(astore.run(busy))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        step = asyncio.ensure_future(runtime.feed(TimerFired(EID, 2000.0, "grow")))
        await asyncio.sleep(0.05)
        assert not step.done()                                  # its commit waits behind the busy store
        assert runtime.backlog is not None and runtime.backlog.entries == 0
        assert engine.hold_new_work and runtime.holding  # type: ignore[attr-defined]
        release.set()
        await held
        await step
        assert runtime.backlog.entries == 4 and runtime.holding     # committed: full, still held
        # an acknowledgement frees room only once it is committed, and the hold ends under the alarm ratio
        await runtime.feed(TimerFired(EID, 2001.0, "ack"))
        assert runtime.backlog.entries == 0 and not runtime.holding
        assert not engine.hold_new_work  # type: ignore[attr-defined]
        await runtime.close()
