"""The IPA engine: `Engine.handle(event) -> list[Action]` for thousands of devices.

Theory of operation. The engine is a dict of `DeviceSession`s keyed by EID; an event goes
to its device's session only, so handling is O(1) in the number of devices and nothing one
device waits for (a slow SM-DP+, a sleeping sensor) holds up another: waiting is state, not
a blocked call. The engine does no I/O (DESIGN principle 1); the runtime performs the
actions it returns, applying each list's store actions in one transaction first (see
gateway.core.actions). Time comes in with every event; jitter comes from a PRNG owned by
the engine (seeded in tests), so a run is reproducible.

A session unknown to the engine is created on its first event; `restore` loads one from the
blob the store kept (after a restart) and `resume` returns the actions that pick up what was
in flight. `forget` drops a device (a card swap; the operator's "forget"); answers to what
it had in flight are then stale (gateway.core.actions.StaleAnswer), and a session made for
it again numbers its requests on from where it stopped.

EimAcknowledgements an eIM pushes (TransferEimPackage) name sequence numbers but no EID, and
sequence numbers are per eUICC: `route_acknowledgements` places them by the deliveries the
gateway made to an eIM. A list that exactly one device's deliveries (to one eIM) cover all
goes to that device; otherwise each number goes to the one device whose delivery carried
it, and a number several devices (or none) carried is not placed: acknowledging the wrong
eUICC would remove a notification its eIM never got, while a number left alone only waits
for its delivery's own answer, which acknowledges it again.

A state change the engine did not make (a policy's fallback) is the device's eIMs' to hear:
`state_report_posts` addresses the report to each eIM of the device's eUICC configuration
(GetEimConfigurationData, with the TLS trust it names) once read, else to the configured eIMs.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from gateway.core import actions as A
from gateway.core.config import EimEndpoint, EngineConfig
from gateway.core.events import OPERATOR_FORGET, Event, OperatorAction
from gateway.core.session import DeviceSession
from gateway.core.turn import post_action

AckRoutes = dict[tuple[bytes, str], list[int]]

__all__ = ["EimEndpoint", "Engine", "EngineConfig"]


class Engine:
    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config if config is not None else EngineConfig()
        self._random = random.Random(self.config.seed)
        self.sessions: dict[bytes, DeviceSession] = {}
        # a forgotten device's request counter and requests in flight: a session made for it
        # later numbers on (no request id used twice) and knows their answers as stale
        self._forgotten: dict[bytes, tuple[int, list[str]]] = {}
        # set by the runtime while what waits for the backhaul is at its bound (Turn.hold)
        self.hold_new_work = False

    def handle(self, event: Event) -> list[A.Action]:
        if isinstance(event, OperatorAction) and event.kind == OPERATOR_FORGET:
            self.forget(event.eid)
            return [A.Audit(event.eid, None, "operator", "operator", "forget"), A.BackhaulWaiting(event.eid, ())]
        session = self.sessions.get(event.eid)
        if session is None:
            session = self.sessions[event.eid] = DeviceSession(event.eid)
            counter, in_flight = self._forgotten.pop(event.eid, (0, []))
            session.counter = counter
            session.let_go = {rid: A.STALE_FORGOTTEN for rid in in_flight}
        return session.handle(event, self.config, self._random.random, hold=self.hold_new_work)

    def restore(self, eid: bytes, blob: bytes) -> None:
        """Load a device's session from the blob of its last SaveSession."""
        self.sessions[eid] = DeviceSession.from_blob(eid, blob)
        self._forgotten.pop(eid, None)

    def resume(self, now: float, eids: Iterable[bytes] | None = None) -> list[A.Action]:
        """After `restore`: re-send what was in flight and re-arm timers."""
        out: list[A.Action] = []
        for eid in list(eids) if eids is not None else list(self.sessions):
            out.extend(self.sessions[eid].resume(now))
        return out

    def forget(self, eid: bytes) -> None:
        session = self.sessions.pop(eid, None)
        if session is not None:
            self._forgotten[eid] = (session.counter, list(session.requests)[-32:])

    def state_of(self, eid: bytes) -> str:
        session = self.sessions.get(eid)
        return session.state_name if session is not None else "unknown"

    def route_acknowledgements(self, seqs: Sequence[int]) -> tuple[AckRoutes, list[int]]:
        """({(eid, eim_id): its sequence numbers}, the numbers not placed) for pushed
        EimAcknowledgements (see the module docstring)."""
        wanted = list(dict.fromkeys(seqs))
        owners: dict[int, set[tuple[bytes, str]]] = {seq: set() for seq in wanted}
        for eid, session in self.sessions.items():
            for d in session.deliveries.values():
                if d.get("target") != "esipa":
                    continue
                for seq in d["remove_seqs"]:
                    if seq in owners:
                        owners[seq].add((eid, str(d["server"])))
        covering = set.intersection(*owners.values()) if wanted else set()
        routes: AckRoutes = {}
        if len(covering) == 1:
            routes[covering.pop()] = wanted
            return routes, []
        unplaced = []
        for seq in wanted:
            if len(owners[seq]) == 1:
                routes.setdefault(next(iter(owners[seq])), []).append(seq)
            else:
                unplaced.append(seq)
        return routes, unplaced

    def state_report_posts(self, eid: bytes, request_id: str, body: bytes) -> list[A.PostEsipa]:
        """One GetEimPackage `body` post per eIM of the device (see the module docstring); each
        request id is `request_id`:eimId."""
        session = self.sessions.get(eid)
        if session is None or not session.eims:
            return [A.PostEsipa(eid, f"{request_id}:{e.eim_id}", e.eim_id, e.fqdn, "GetEimPackage", body)
                    for e in self.config.eims]
        posts = []
        for eim in session.eims:
            if not eim.get("eimFqdn"):
                continue
            rec = {"target": "esipa", "server": str(eim["eimId"]), "function": "GetEimPackage", "body": body}
            post = post_action(session, f"{request_id}:{eim['eimId']}", rec)
            assert isinstance(post, A.PostEsipa)
            posts.append(post)
        return posts
