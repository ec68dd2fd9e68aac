"""EimAcknowledgements an eIM pushes (TransferEimPackage, SGP.32 §5.14.1) name no EID: the
gateway places them by the deliveries it made (gateway.core.engine.route_acknowledgements).

End to end: the real eIM peer pushes through the gateway's inject endpoint (real TLS, real
SQLite, the runtime, software eUICCs on the in-memory link) the acknowledgements whose answer
the gateway lost; the right device's deliveries become acknowledged and its eUICC's results
are removed on its next wake, while another device holding the same sequence number keeps
its own. Pure: the placement rules, including numbers it must not guess.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway.backhaul.http import TlsTrust
from gateway.backhaul.inject_server import InjectServer, server_ssl_context
from gateway.core.actions import PostEs9, PostEs11, PostEsipa
from gateway.core.engine import Engine
from gateway.core.procedures import notifications as N
from gateway.core.retry import BackoffPolicy
from gateway.core.session import DeviceSession
from gateway.errors import NetworkError, RemoteProtocolError
from gateway.links.memory import MemoryLink
from gateway.service.runtime import HttpBackhaul, Runtime, RuntimeOptions
from gateway.service.runtime import _pushed_acknowledgements as pushed_acknowledgements
from gateway.spec import codec
from gateway.store import AsyncStore
from hil import rspcrypto
from hil.peers.eim import push
from hil.pki import RspPki
from tests.core.driver import Peers, make_agent, running_peers

OPTIONS = RuntimeOptions(exchange_timeout_s=2.0, busy_retry_s=30)
GET_RAT = {"op": "getRAT"}


class AnswerLostBackhaul:
    """The real HTTPS backhaul, except that the eIM's answers to ProvideEimPackageResult never
    come back: the eIM has the result (and acknowledged it), the gateway sees a network error."""

    def __init__(self, inner: HttpBackhaul) -> None:
        self.inner = inner

    async def post_esipa(self, action: PostEsipa) -> bytes:
        answer = await self.inner.post_esipa(action)
        if action.function == "ProvideEimPackageResult":
            raise NetworkError("connection reset before the answer")
        return answer

    async def post_es9(self, action: PostEs9) -> bytes:
        return await self.inner.post_es9(action)

    async def post_es11(self, action: PostEs11) -> bytes:
        return await self.inner.post_es11(action)


async def settled(runtime: Runtime) -> None:
    for _ in range(500):
        if runtime.inflight == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the runtime did not settle")


@asynccontextmanager
async def gateway_and_peers(pki: RspPki, tmp_path: Path) -> AsyncIterator[tuple[list[Runtime], AsyncStore, Peers]]:
    tls = server_ssl_context(str(pki.dptls.cert_path), str(pki.dptls.key_path))
    runtimes: list[Runtime] = []

    async def on_transfer(body: bytes, binding: str) -> bytes:
        return await runtimes[0].on_transfer(body, binding)

    async with InjectServer(on_transfer, tls, port=0) as inject, \
            running_peers(pki, inject_url=f"https://127.0.0.1:{inject.port}") as peers:
        astore = await AsyncStore.open(tmp_path / "gateway.db")
        try:
            yield runtimes, astore, peers
        finally:
            await astore.close()


async def test_a_pushed_acknowledgement_reaches_the_device_whose_results_it_names_and_no_other(
        pki: RspPki, tmp_path: Path) -> None:
    async with gateway_and_peers(pki, tmp_path) as (runtimes, astore, peers):
        other = bytes.fromhex(rspcrypto.eid_with_check_digits("890490320000000000077000000001"))
        cards = [peers.card(), peers.card(other)]
        for n, card in enumerate(cards):
            await astore.run(lambda s, c=card, n=n: s.devices.register(c.eid, "coap", f"meter-{n}", now=0.0))
        # a delivery retried only after 10 minutes: nothing but the push can acknowledge it here
        config = peers.config(delivery_backoff=BackoffPolicy(600.0, 3600.0, None, jitter_ratio=0.0))
        engine = Engine(config)
        runtime = Runtime(engine, astore, AnswerLostBackhaul(HttpBackhaul(peers.http, trust=TlsTrust(
            ca_file=str(pki.tls_trust_path)))), options=OPTIONS)
        runtimes.append(runtime)
        try:
            a, b = cards
            for card, packages in ((a, 2), (b, 1)):
                for _ in range(packages):
                    await peers.psmo(card.eid, GET_RAT)
                    await settled(runtime)
                    agent, _ = make_agent(MemoryLink(runtime), card)
                    await agent.run_session()
                    await settled(runtime)
            a_seqs = sorted(n.seq_number for n in a.notifications)
            b_seqs = sorted(n.seq_number for n in b.notifications)
            assert len(a_seqs) == 2 and len(b_seqs) == 1 and b_seqs[0] in a_seqs     # b shares a number with a
            assert {d["state"] for d in engine.sessions[a.eid].deliveries.values()} == {N.WAITING}

            device = peers.eim.service.devices[a.eid]                  # the eIM owes a its acknowledgements
            device.pending_acks[:] = a_seqs
            push.push_acknowledgements_later(peers.eim.service, device)
            for _ in range(500):
                if not device.pending_acks:
                    break
                await asyncio.sleep(0.01)
            assert device.pending_acks == []                           # the gateway took the push
            await settled(runtime)

            assert {d["state"] for d in engine.sessions[a.eid].deliveries.values()} == {N.ACKED}
            assert {d["state"] for d in engine.sessions[b.eid].deliveries.values()} == {N.WAITING}
            inbox = await astore.run(lambda s: s.inbox.entries(a.eid))
            assert [e.state for e in inbox if e.origin == peers.eim.service.eim_id][-1] == "done"
            audit = await astore.run(lambda s: s.audit.query(eid=a.eid))
            acked = [r for r in audit if r.operation == "deliverResult" and r.result == "ok"]
            assert [r.detail["detail"] for r in acked] == [f"result acknowledged by {peers.eim.service.eim_id}"] * 2

            for card in (a, b):
                agent, _ = make_agent(MemoryLink(runtime), card)
                await agent.run_session()
                await settled(runtime)
            assert a.notifications == []                               # removed on a's next wake
            assert [n.seq_number for n in b.notifications] == b_seqs   # b's own result is still owed
        finally:
            await runtime.close()


# --- placement rules (pure) -------------------------------------------------------------------

def _engine_with(deliveries: dict[bytes, list[tuple[str, list[int]]]]) -> Engine:
    """An engine whose devices each have result deliveries to eIMs: (eim_id, remove_seqs)."""
    engine = Engine()
    for eid, items in deliveries.items():
        session = engine.sessions[eid] = DeviceSession(eid)
        for n, (eim_id, seqs) in enumerate(items):
            session.deliveries[f"r{n}"] = N.result_delivery(f"r{n}", eim_id, b"", seqs, None)
    return engine


A_EID, B_EID, C_EID = (bytes([0x89] + [n] * 15) for n in (1, 2, 3))


def test_a_list_only_one_device_covers_goes_to_it_whole() -> None:
    engine = _engine_with({A_EID: [("eim-1", [4]), ("eim-1", [5])], B_EID: [("eim-1", [4])]})
    assert engine.route_acknowledgements([4, 5]) == ({(A_EID, "eim-1"): [4, 5]}, [])


def test_a_number_several_devices_carried_is_not_guessed() -> None:
    engine = _engine_with({A_EID: [("eim-1", [4])], B_EID: [("eim-1", [4])]})
    assert engine.route_acknowledgements([4]) == ({}, [4])


def test_otherwise_each_number_goes_to_its_one_device_and_unknown_numbers_to_none() -> None:
    engine = _engine_with({A_EID: [("eim-1", [4]), ("eim-1", [9])], B_EID: [("eim-1", [4])],
                           C_EID: [("eim-2", [7])]})
    routes, unplaced = engine.route_acknowledgements([4, 7, 9, 12])
    assert routes == {(C_EID, "eim-2"): [7], (A_EID, "eim-1"): [9]} and unplaced == [4, 12]


def test_deliveries_to_an_smdp_do_not_place_an_eim_acknowledgement() -> None:
    engine = _engine_with({A_EID: [("eim-1", [3])]})
    engine.sessions[A_EID].deliveries["r0"]["target"] = "es9"
    assert engine.route_acknowledgements([3]) == ({}, [3])


@given(st.binary(max_size=64))
def test_any_pushed_acknowledgements_body_is_read_or_refused_as_a_protocol_error(inner: bytes) -> None:
    body = b"\xbf\x4e" + len(b"\xbf\x53" + bytes([len(inner)]) + inner).to_bytes(1, "big") \
        + b"\xbf\x53" + bytes([len(inner)]) + inner
    try:
        seqs = pushed_acknowledgements(body)
    except RemoteProtocolError:
        return
    assert seqs is not None and all(isinstance(s, int) for s in seqs)
    assert codec.decode("EimAcknowledgements", codec.encode("EimAcknowledgements", seqs)) == seqs
