"""The engine inside the service runtime (gateway.service.runtime.Runtime): real SQLite store,
real HTTPS backhaul, the real SM-DP+ and eIM peers, the eIM pushing through the gateway's
inject endpoint (gateway.backhaul.inject_server), and the device on the in-memory link.

Each action list's store actions commit in one transaction before its I/O; a pushed package
is in the inbox before the eIM gets its eimPackageReceived; after a restart the engine is
rebuilt from nothing but the store's sessions table (as the supervisor does) and carries on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.backhaul.http import TlsTrust
from gateway.backhaul.inject_server import InjectServer, server_ssl_context
from gateway.core.actions import PostEs9, PostEs11, PostEsipa
from gateway.core.engine import Engine
from gateway.links.memory import MemoryLink
from gateway.service.runtime import HttpBackhaul, Runtime, RuntimeOptions
from gateway.store import AsyncStore
from hil.pki import RspPki
from tests.core.driver import ICCID, Peers, make_agent, running_peers

OPTIONS = RuntimeOptions(exchange_timeout_s=2.0, busy_retry_s=30)


class HangingBackhaul:
    """The runtime's HttpBackhaul, except that one ES9+ function never answers: the gateway
    dies while it waits (the test closes the runtime)."""

    def __init__(self, inner: HttpBackhaul, hang_on: str) -> None:
        self.inner = inner
        self.hang_on = hang_on

    async def post_esipa(self, action: PostEsipa) -> bytes:
        return await self.inner.post_esipa(action)

    async def post_es9(self, action: PostEs9) -> bytes:
        if action.function == self.hang_on:
            await asyncio.Event().wait()
        return await self.inner.post_es9(action)

    async def post_es11(self, action: PostEs11) -> bytes:
        return await self.inner.post_es11(action)


def backhaul(peers: Peers) -> HttpBackhaul:
    return HttpBackhaul(peers.http, trust=TlsTrust(ca_file=str(peers.pki.tls_trust_path)))


@asynccontextmanager
async def store_with(db: Path, eid: bytes) -> AsyncIterator[AsyncStore]:
    astore = await AsyncStore.open(db)
    try:
        await astore.run(lambda s: s.devices.register(eid, "coap", "meter-1", now=0.0))
        yield astore
    finally:
        await astore.close()


async def settled(runtime: Runtime) -> None:
    for _ in range(500):
        if runtime.inflight == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the runtime did not settle")


async def test_a_package_pushed_through_the_inject_endpoint_is_in_the_inbox_then_runs_once(
        pki: RspPki, tmp_path: Path) -> None:
    tls = server_ssl_context(str(pki.dptls.cert_path), str(pki.dptls.key_path))
    runtimes: list[Runtime] = []

    async def on_transfer(body: bytes, binding: str) -> bytes:
        return await runtimes[0].on_transfer(body, binding)

    async with InjectServer(on_transfer, tls, port=0) as inject, \
            running_peers(pki, inject_url=f"https://127.0.0.1:{inject.port}") as peers:
        card = peers.card()
        async with store_with(tmp_path / "gateway.db", card.eid) as astore:
            runtime = Runtime(Engine(peers.config()), astore, backhaul(peers), options=OPTIONS)
            runtimes.append(runtime)
            try:
                queued = await peers.admin.post(f"{peers.eim.url}/admin/eids/{card.eid.hex()}/psmo",
                                                {"operations": [{"op": "getRAT"}]})
                assert queued["push"] == "eimPackageReceived"
                inbox = await astore.run(lambda s: s.inbox.entries(card.eid))
                assert len(inbox) == 1                                   # persisted before the answer
                await settled(runtime)
                agent, _ = make_agent(MemoryLink(runtime), card)
                await agent.run_session()
                await settled(runtime)
                entry = await astore.run(lambda s: s.inbox.find(card.eid, inbox[0].key))
                assert entry is not None and entry.state == "done"
                ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
                assert result["kind"] == "euiccPackageResultSigned" and result["verified"]
                assert card.state.eims[0].counter == 1 and card.notifications == []
                operations = [r.operation for r in await astore.run(lambda s: s.audit.query(eid=card.eid))]
                assert "euiccPackage" in operations and "deliverResult" in operations
                session = await astore.run(lambda s: s.sessions.get(card.eid))
                assert session is not None and session.state == "idle"
            finally:
                await runtime.close()


async def test_a_download_resumes_from_the_store_after_the_gateway_died_waiting_for_the_bpp(
        pki: RspPki, tmp_path: Path) -> None:
    async with running_peers(pki) as peers:
        card = peers.card()
        await peers.download(card.eid, await peers.order(size=2048))
        async with store_with(tmp_path / "gateway.db", card.eid) as astore:
            first = Runtime(Engine(peers.config()), astore, HangingBackhaul(backhaul(peers), "getBoundProfilePackage"),
                            options=OPTIONS)
            agent, _ = make_agent(MemoryLink(first), card)
            report = await agent.run_session()         # gets Idle once the wait for the BPP runs out
            assert report.idle_after_s is not None and card.profiles == []
            await first.close()                         # the gateway dies
            saved = await astore.run(lambda s: s.sessions.get(card.eid))
            assert saved is not None and saved.state == "download:FETCHING"

            engine = Engine(peers.config())             # only what SQLite kept
            for session in await astore.run(lambda s: s.sessions.list()):
                engine.restore(session.eid, session.blob)
            second = Runtime(engine, astore, backhaul(peers), options=OPTIONS)
            try:
                await second.apply(engine.resume(second.clock()), second.clock())   # the BPP is asked again
                await settled(second)
                agent, _ = make_agent(MemoryLink(second), card)
                await agent.run_session()
                await settled(second)
                assert [p.iccid for p in card.profiles] == [ICCID] and card.notifications == []
                ((_, result),) = (await peers.one_result_per_package(card.eid)).items()
                assert result["kind"] == "profileDownloadTriggerResult" and result["verified"]
                installs = [r for r in await astore.run(lambda s: s.audit.query(eid=card.eid))
                            if r.operation == "download"]
                assert [r.result for r in installs] == ["ok"]
            finally:
                await second.close()
