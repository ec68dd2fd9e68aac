"""The exchange planner: fold ES10b calls that need no decision in between into one batch.

Theory of operation. Round trips to a sleeping device are the scarce resource. Each owner
in a device session (the running procedure, the delivery track) offers a `Part`: ES10b calls
whose results the owner only needs all together. `plan` puts parts into one batch in the
order given, each call one Step (its STORE DATA blocks, `gateway.spec.apdu`), until the
device's `max_batch_bytes` budget (and the device link's own limits on a message's size
and step count) is used. The first part may be cut (a BPP too big for the
device's budget then takes several exchanges, as the device asked); later parts are added
whole or left for a later batch, so they never delay the first. A batch always carries at
least one call. BPP segments other than the last get `stop_if_data`: an early
ProfileInstallationResult ends the batch on the device (SGP.22 §5.7.6). A refresh request
is honoured only in the batch that carries the last call of its part.

Two device limits are hard: a step's CBOR item must fit the agent's `buffer_size` (it
decodes one item at a time), and a whole batch its `max_batch_bytes` (links that deliver a
message whole, as MQTT does). A call cannot be cut (its STORE DATA blocks run on one
logical channel, which the agent closes after each batch), so `oversize` names a call that
cannot fit at all; the session refuses it before planning, and `plan` never exceeds either
limit (LocalProtocolError if asked to).

The size of a batch is estimated from its APDUs plus a small per-step overhead for the
CBOR framing (docs/device-link.md); the estimate errs on the large side (the header's
allowance covers a `next_size_hint` added after planning).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.procedures.base import Call
from gateway.errors import LocalProtocolError
from gateway.links.protocol import MAX_APDUS_PER_STEP, MAX_MESSAGE, MAX_STEPS, Batch, BatchMsg, Step, encode_downlink, encode_step
from gateway.spec import apdu
from gateway.spec.apdu import ISD_R_AID

STEP_OVERHEAD = 12
APDU_OVERHEAD = 3
BATCH_OVERHEAD = 48


@dataclass(frozen=True, slots=True)
class Part:
    owner: str
    calls: tuple[Call, ...]
    refresh: str | None = None


@dataclass(frozen=True, slots=True)
class Planned:
    batch: Batch
    owners: tuple[tuple[str, int], ...]      # (owner, number of calls) in step order
    leftover: tuple[Part, ...]               # what did not fit: the first part's rest, then others


def step_of(call: Call, segment_size: int) -> Step:
    return Step(apdus=tuple(apdu.store_data(call.request, segment_size)), stop_if_data=call.segment)


def step_size(step: Step) -> int:
    return STEP_OVERHEAD + sum(len(a) + APDU_OVERHEAD for a in step.apdus)


def step_item_size(step: Step) -> int:
    """The exact size of the step's CBOR item on the wire (what the agent's buffer must hold)."""
    return len(encode_step(step))


def downlink_size(batch: Batch) -> int:
    """The exact size of the whole encoded downlink."""
    return len(encode_downlink(BatchMsg(batch)))


def batch_budget(max_batch_bytes: int | None) -> int:
    """The device's budget, and in any case what one device-link message may carry."""
    return min(max_batch_bytes if max_batch_bytes is not None else MAX_MESSAGE, MAX_MESSAGE - 1024)


def oversize(call: Call, *, segment_size: int = 255, buffer_size: int | None = None,
             max_batch_bytes: int | None = None) -> str | None:
    """Why `call` can never be sent to this device (None: it fits)."""
    step = step_of(call, segment_size)
    if len(step.apdus) > MAX_APDUS_PER_STEP:
        return f"{call.name} needs {len(step.apdus)} STORE DATA blocks; a step carries {MAX_APDUS_PER_STEP}"
    if buffer_size is not None and (item := step_item_size(step)) > buffer_size:
        return f"{call.name} is a {item}-byte step; the device buffers {buffer_size} bytes"
    if BATCH_OVERHEAD + step_size(step) > batch_budget(max_batch_bytes):
        return (f"{call.name} needs a {BATCH_OVERHEAD + step_size(step)}-byte batch; "
                f"the device accepts {max_batch_bytes} bytes")
    return None


def plan(parts: list[Part], batch_id: int, *, segment_size: int = 255,
         max_batch_bytes: int | None = None, buffer_size: int | None = None) -> Planned:
    budget = batch_budget(max_batch_bytes)
    used = BATCH_OVERHEAD
    steps: list[Step] = []
    owners: list[tuple[str, int]] = []
    leftover: list[Part] = []
    refresh: str | None = None
    for index, part in enumerate(parts):
        built = [step_of(c, segment_size) for c in part.calls]
        sizes = [step_size(s) for s in built]
        for call, step, size in zip(part.calls, built, sizes):
            if BATCH_OVERHEAD + size > budget or (buffer_size is not None and step_item_size(step) > buffer_size):
                raise LocalProtocolError(f"{call.name} cannot fit this device's limits (refuse it before planning)")
        if index == 0 or not steps:
            taken = 0
            while taken < len(built) and len(steps) < MAX_STEPS and used + sizes[taken] <= budget:
                steps.append(built[taken])
                used += sizes[taken]
                taken += 1
            if taken:
                owners.append((part.owner, taken))
            if taken < len(built):
                leftover.append(Part(part.owner, part.calls[taken:], part.refresh))
            elif part.refresh is not None:
                refresh = part.refresh
            continue
        if used + sum(sizes) <= budget and len(steps) + len(built) <= MAX_STEPS:
            steps.extend(built)
            used += sum(sizes)
            owners.append((part.owner, len(built)))
            if part.refresh is not None:
                refresh = part.refresh
        else:
            leftover.append(part)
    batch = Batch(batch_id=batch_id, steps=tuple(steps), aid=ISD_R_AID, refresh=refresh)
    return Planned(batch, tuple(owners), tuple(leftover))


def per_apdu_exchanges(batch: Batch) -> int:
    """Exchanges a relay that carries one APDU per round trip needs for `batch`: one per APDU,
    one per GET RESPONSE is not counted (the agent chains those locally either way), plus the
    MANAGE CHANNEL, SELECT and close a channel-per-session relay also sends."""
    return sum(len(s.apdus) for s in batch.steps) + (3 if batch.aid is not None else 0)
