"""The engine's actions applied to the real SQLite store (gateway.store), as the runtime will.

Each action list's store actions (SaveSession, MarkInbox, Audit) are applied in one
`Store.transaction()` before its I/O actions; a pushed package is in the inbox (under the key
the engine derives) before the engine sees it. After a "restart" the engine is rebuilt from
nothing but the store's sessions table and carries on. The SM-DP+/eIM are the in-test
responders of tests/core/peers.py (the real peers come later); the store file is real.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from gateway.core import actions as A
from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.core.events import EimPackageReceived, Event
from gateway.core.packages import classify, package_key
from gateway.links.memory import MemoryLink
from gateway.store.store import Store
from hil.euicc import SoftEuicc
from hil.euicc.eim import eim_config_from
from hil.pki import RspPki
from tests.core.peers import MiniEim, MiniSmdp
from tests.core.rig import EngineRig, make_agent

ICCID = bytes.fromhex("98001032547698103214")


class StoreRig(EngineRig):
    """EngineRig whose store actions go to a real Store, one transaction per action list."""

    store: Store

    def run(self, events: list[Event]) -> None:
        queue = deque(events)
        while queue:
            event = queue.popleft()
            out = self.engine.handle(event)
            with self.store.transaction():
                for action in out:
                    self.apply(action)
            for action in out:
                self.actions.append(action)
                follow = self.perform(action)
                if follow is not None:
                    queue.append(follow)

    def apply(self, action: A.Action) -> None:
        if isinstance(action, A.SaveSession):
            self.store.sessions.put(action.eid, action.state_name, action.blob, now=self.now)
        elif isinstance(action, A.MarkInbox):
            entry = self.store.inbox.find(action.eid, action.key)
            if entry is None:
                return                                   # a polled package: the session blob holds it
            if action.state == "running":
                self.store.inbox.start(entry.id, now=self.now)
            else:
                self.store.inbox.finish(entry.id, now=self.now)
        elif isinstance(action, A.Audit):
            self.store.audit.append(time=self.now, operation=action.operation, result=action.result,
                                    eid=action.eid, iccid=action.iccid.hex() if action.iccid else None,
                                    origin_eim=action.origin, detail={"detail": action.detail})

    def restart_from_store(self) -> None:
        self.engine = Engine(self.engine.config)
        for session in self.store.sessions.list():
            self.engine.restore(session.eid, session.blob)
        self.run_resumed()

    def run_resumed(self) -> None:
        follow: list[Event] = []
        for action in self.engine.resume(self.now):
            event = self.perform(action)
            if event is not None:
                follow.append(event)
        self.run(follow)


def make(pki: RspPki, tmp_path: Path) -> tuple[StoreRig, MemoryLink, SoftEuicc, Store]:
    eim = MiniEim(pki)
    card = SoftEuicc(pki, pki.eid_bytes)
    card.state.eims.append(eim_config_from(card, eim.initial_eim()))
    card.commit()
    rig = StoreRig(Engine(EngineConfig(eims=(EimEndpoint(eim.eim_id, eim.fqdn),), seed=4)), MiniSmdp(pki), eim)
    store = Store.open(tmp_path / "gateway.db")
    rig.store = store
    return rig, MemoryLink(rig), card, store


async def test_pushed_package_runs_from_the_inbox_and_its_entry_is_done(pki: RspPki, tmp_path: Path) -> None:
    rig, link, card, store = make(pki, tmp_path)
    try:
        push = rig.eim.transfer(rig.eim.euicc_package_request(card.eid, [("getRAT", {})], b"\x01"))
        _, package = classify(push)
        key = package_key(rig.eim.eim_id, package)
        store.inbox.enqueue(card.eid, key, "euiccPackage", push, origin=rig.eim.eim_id, now=rig.now)
        rig.run([EimPackageReceived(card.eid, rig.now, rig.eim.eim_id, push, "push", key)])
        agent, _ = make_agent(link, card)
        await agent.run_session()
        entry = store.inbox.find(card.eid, key)
        assert entry is not None and entry.state == "done"
        assert len(rig.eim.results) == 1
        operations = [r.operation for r in store.audit.query(eid=card.eid)]
        assert "euiccPackage" in operations and "deliverResult" in operations
        session = store.sessions.get(card.eid)
        assert session is not None and session.state == "idle"
    finally:
        store.close()


async def test_download_resumes_from_the_store_after_a_restart_mid_session(pki: RspPki, tmp_path: Path) -> None:
    rig, link, card, store = make(pki, tmp_path)
    try:
        rig.crash_on = "getBoundProfilePackage"         # the gateway dies waiting for the BPP
        rig.eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x02")
        agent, _ = make_agent(link, card)
        await agent.run_session()
        saved = store.sessions.get(card.eid)
        assert saved is not None and saved.state == "download:FETCHING"
        rig.restart_from_store()                         # only what SQLite kept
        await agent.run_session()
        assert [p.iccid for p in card.profiles] == [ICCID] and card.notifications == []
        assert len(rig.eim.results) == 1
        installs = [r for r in store.audit.query(eid=card.eid) if r.operation == "download"]
        assert [r.result for r in installs] == ["ok"]
    finally:
        store.close()
