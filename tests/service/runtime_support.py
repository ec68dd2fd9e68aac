"""Helpers of the runtime tests: a scripted engine and a recording backhaul.

The scripted engine stands in for gateway.core's engine where a test is about how the
runtime *applies* an action list (the engine's decisions are not under test there); tests
that need real decisions use gateway.core.engine.Engine itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.core.actions import Action, PostEs9, PostEs11, PostEsipa
from gateway.core.events import Event
from gateway.links.protocol import Batch, Step

EID = bytes.fromhex("89049032123451234500000000000186")
BATCH = Batch(batch_id=7, steps=(Step(apdus=(bytes.fromhex("80E2910003BF2E00"),)),))


@dataclass
class ScriptedEngine:
    script: Callable[[Event], list[Action]]
    events: list[Event] = field(default_factory=list)

    def handle(self, event: Event) -> list[Action]:
        self.events.append(event)
        return self.script(event)


@dataclass
class RecordingBackhaul:
    answer: bytes = b""
    error: BaseException | None = None
    on_post: Callable[[PostEsipa | PostEs9 | PostEs11], None] | None = None
    posts: list[PostEsipa | PostEs9 | PostEs11] = field(default_factory=list)

    async def _post(self, action: PostEsipa | PostEs9 | PostEs11) -> bytes:
        self.posts.append(action)
        if self.on_post is not None:
            self.on_post(action)
        if self.error is not None:
            raise self.error
        return self.answer

    async def post_esipa(self, action: PostEsipa) -> bytes:
        return await self._post(action)

    async def post_es9(self, action: PostEs9) -> bytes:
        return await self._post(action)

    async def post_es11(self, action: PostEs11) -> bytes:
        return await self._post(action)


def committed_sessions(db: Path) -> list[tuple[bytes, str]]:
    """Sessions as another connection sees them: only what was committed."""
    conn = sqlite3.connect(db)
    try:
        return [(bytes(r[0]), r[1]) for r in conn.execute("SELECT eid, state FROM sessions")]
    finally:
        conn.close()
