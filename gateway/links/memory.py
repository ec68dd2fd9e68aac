"""An in-memory device link: an agent and the gateway's UplinkHandler in one process.

Theory of operation. `MemoryLink.exchange(eid, payload)` carries one encoded uplink to the
handler through the same `answer()` path the network adapters use (decode, EID check, handler,
encode) and returns the encoded downlink, counting what a real link would cost: round trips,
bytes each way and APDUs sent to the eUICC. The engine's end-to-end tests run the reference
agent (or their own loop) over it; no sockets, so hundreds of devices run in milliseconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gateway.links.base import UplinkHandler, answer
from gateway.links.protocol import BatchMsg


@dataclass(slots=True)
class LinkCounters:
    exchanges: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    apdus: int = 0
    batches: int = 0


@dataclass(slots=True)
class MemoryLink:
    handler: UplinkHandler
    totals: LinkCounters = field(default_factory=LinkCounters)
    per_device: dict[bytes, LinkCounters] = field(default_factory=dict)
    downlink_kinds: Counter[str] = field(default_factory=Counter)

    async def exchange(self, eid: bytes, payload: bytes) -> bytes:
        """One round trip for the device bound to `eid`: uplink bytes in, downlink bytes out."""
        downlink, encoded = await answer(self.handler, eid, payload)
        apdus = sum(len(s.apdus) for s in downlink.batch.steps) if isinstance(downlink, BatchMsg) else 0
        self.downlink_kinds[type(downlink).__name__] += 1
        for c in (self.totals, self.per_device.setdefault(eid, LinkCounters())):
            c.exchanges += 1
            c.uplink_bytes += len(payload)
            c.downlink_bytes += len(encoded)
            c.apdus += apdus
            c.batches += isinstance(downlink, BatchMsg)
        return encoded

    def counters(self, eid: bytes) -> LinkCounters:
        return self.per_device.get(eid, LinkCounters())
