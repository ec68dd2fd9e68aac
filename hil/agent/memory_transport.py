"""Agent side of the in-memory link: the downlink is handed over in buffer-sized chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.links.memory import MemoryLink


@dataclass
class MemoryAgentTransport:
    link: MemoryLink
    eid: bytes
    chunk_size: int = 1024

    async def exchange(self, payload: bytes, buffer_size: int, size_hint: int | None = None
                       ) -> AsyncIterator[bytes]:
        downlink = await self.link.exchange(self.eid, payload)
        for i in range(0, len(downlink), self.chunk_size):
            yield downlink[i:i + self.chunk_size]

    async def close(self) -> None:
        return None
