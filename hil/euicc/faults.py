"""Fault injection for tests and rigs: what goes wrong on a real card, on demand.

A `Faults` object is consulted by the APDU layer (`card.py`) before each command and by the
profile download (`rsp.py`) at each Bound Profile Package segment. Counting is 1-based over
every command APDU the card receives since it was created (or since `Faults.reset_count()`).

- ``delay_s``: sleep this long before answering each APDU (slow links, timeouts).
- ``sw_on_command``: {n: sw} answer the n-th APDU with that status word only, without
  executing it (a card or reader glitch).
- ``tear_after_bpp_segments``: power loss after this many ES8+ segments of the next
  LoadBoundProfilePackage have been *processed*; the segment that would come next is never
  answered (`PowerLoss` is raised from `transmit`). What a real card keeps across the tear is
  what the state file holds at that point: the ISD-P created by ConfigureISDP, marked as
  being installed, is removed at the next power-up (SGP.22: a partially installed Profile is
  deleted), and the volatile RSP session is gone.
- ``memory_full``: no room for a new Profile (ConfigureISDP fails with
  installFailedDueToInsufficientMemoryForProfile), a new eIM (addEim / AddInitialEim answer
  insufficientMemory) or the immediate-enable configuration. (A STORE DATA sequence longer
  than the card's buffer, `ApduLayer.max_command_size`, is refused with 6A84 regardless.)
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PowerLoss(Exception):
    """The card lost power while processing a command: no response ever comes."""


@dataclass
class Faults:
    delay_s: float = 0.0
    sw_on_command: dict[int, int] = field(default_factory=dict)
    tear_after_bpp_segments: int | None = None
    memory_full: bool = False
    commands_seen: int = 0

    def next_command(self) -> int | None:
        """Count one command; the status word to answer instead of executing it, if any."""
        self.commands_seen += 1
        return self.sw_on_command.get(self.commands_seen)

    def reset_count(self) -> None:
        self.commands_seen = 0
