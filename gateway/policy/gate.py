"""`PolicyGate`: the edge policies in front of the runtime, as a device-link `UplinkHandler`.

Theory of operation. The gate wraps the runtime's handler (`inner`) and sees every uplink
first. For each status a device reports it asks `Policies.on_status` and hands the decisions
to its backend (`GateBackend.apply_decisions`: store, alarms, webhooks, state-change reports).

- Quarantined device: the runtime never sees the uplink; the device gets
  ErrorMsg(FORBIDDEN, "device quarantined ...") and no eUICC operation runs.
- A `RunEs10` decision (ExecuteFallbackMechanism / ReturnFromFallback): the gate answers the
  Hello itself with a one-step batch (STORE DATA of the request on the ISD-R channel, then the
  policy's refresh), under a batch id of its own range (`POLICY_BATCH_BASE` and up, never
  used by the engine, whose ids count up from 1). The Result of that batch goes to
  `Policies.on_es10_result` (the response bytes on SW 9000, else None) and the wake-up then
  continues with the runtime as if the device had just said Hello (with the status of the
  Result), so the IPA's own work (eIM poll, packages, notifications) still happens in the
  same wake-up. The policy call costs one extra round trip, only when a switch happens.

The engine needs no change for fallback and return this way; the eIM report of the switch
(`ReportStateChange`) is the backend's: `state_change_request` builds the GetEimPackage
request it posts (notifyStateChange, stateChangeCause, rPLMN), and the eIM's answer is fed to
the engine as an eIM package received by poll.

rPLMN (GetEimPackageRequest [2], OPTIONAL; MCC/MNC coded as in 3GPP TS 24.008) is the
registered PLMN: with stateChangeCause fallback, the network the device registered on after
the switch, never the failing one it left. The device's status in the policy batch's Result
(if it sends one) was taken after the refresh; when it sends none, the gate hands the wake-up
on with the pre-switch status minus its PLMN, so a report sent before the device names its new
network (its slot came first) carries no rPLMN rather than a wrong one; a report sent after
that carries the network the device named.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from gateway.links.base import UplinkHandler
from gateway.links.protocol import (
    Batch,
    BatchMsg,
    BatchResult,
    DeviceStatus,
    Downlink,
    ErrorCode,
    ErrorMsg,
    Hello,
    Result,
    Step,
    Uplink,
)
from gateway.policy import plmn
from gateway.policy.decisions import PolicyDecision, ReportStateChange, RunEs10
from gateway.policy.groups import DeviceFacts, group_of
from gateway.policy.policies import Policies
from gateway.spec import apdu, esipa

POLICY_BATCH_BASE: Final = 0xFFF0_0000
POLICY_BATCH_SPAN: Final = 0x000F_FFFF
SW_OK: Final = 0x9000


def state_change_request(eid: bytes, cause: int, rplmn: bytes | None) -> bytes:
    """ESipa GetEimPackage (SGP.32 §6.3.2.x) reporting a state change: DER of EsipaMessageFromIpaToEim."""
    value: dict[str, Any] = {"eidValue": eid, "notifyStateChange": None, "stateChangeCause": cause}
    if rplmn is not None:
        value["rPLMN"] = rplmn
    return esipa.encode_from_ipa("getEimPackageRequest", value)


@dataclass(frozen=True, slots=True)
class RegistryView:
    """What the gate needs from the store registry about one device."""

    imei: str | None
    quarantined: bool
    tags: tuple[str, ...] = ()


class GateBackend(Protocol):
    async def registry(self, eid: bytes) -> RegistryView: ...

    async def apply_decisions(self, eid: bytes | None, decisions: list[PolicyDecision], now: float) -> None: ...


@dataclass(slots=True)
class _Pending:
    batch_id: int
    token: str
    status: DeviceStatus


class PolicyGate:
    def __init__(self, inner: UplinkHandler, policies: Policies, backend: GateBackend, *,
                 clock: Callable[[], float] = time.time,
                 segment_size_of: Callable[[bytes], int] = lambda eid: apdu.DEFAULT_SEGMENT_SIZE) -> None:
        self.inner = inner
        self.policies = policies
        self.backend = backend
        self.clock = clock
        self.segment_size_of = segment_size_of
        self._pending: dict[bytes, _Pending] = {}
        self._next_id = 0
        self.last_status: dict[bytes, DeviceStatus] = {}

    def report_request(self, report: ReportStateChange) -> bytes:
        """The GetEimPackage body for a `ReportStateChange`; rPLMN, when the decision leaves it
        open, is the serving network the device reported last, if it reported one since the
        switch, else absent (see the module docstring)."""
        rplmn = report.rplmn
        if rplmn is None:
            last = self.last_status.get(report.eid)
            if last is not None and plmn.valid(last.plmn):
                rplmn = plmn.to_bytes(last.plmn or "")
        return state_change_request(report.eid, report.cause, rplmn)

    async def exchange(self, eid: bytes, uplink: Uplink) -> Downlink:
        now = self.clock()
        pending = self._pending.get(eid)
        if pending is None:
            pending = self._recovered(eid, uplink)
        if isinstance(uplink, Result) and pending is not None and uplink.result.batch_id == pending.batch_id:
            self._pending.pop(eid, None)
            decisions = self.policies.on_es10_result(eid, pending.token, _response(uplink.result), now)
            status = uplink.status or pending.status
            if uplink.status is None and any(isinstance(d, ReportStateChange) for d in decisions):
                # the device switched and refreshed: its network is unknown until it says so
                status = replace(status, plmn=None)
            self.last_status[eid] = status          # before the report can be sent (report_request)
            await self.backend.apply_decisions(eid, decisions, now)
            return await self._through(eid, Hello(status), now, wake=False)
        if isinstance(uplink, Hello) and pending is not None:
            # the device lost the policy batch (or its result): the call did not run, as far as we know
            self._pending.pop(eid, None)
            decisions = self.policies.on_es10_result(eid, pending.token, None, now)
            await self.backend.apply_decisions(eid, decisions, now)
        return await self._through(eid, uplink, now, wake=isinstance(uplink, Hello))

    def _recovered(self, eid: bytes, uplink: Uplink) -> _Pending | None:
        """After a restart the gate's memory is gone but the policy state still has the call:
        a Result in the policy batch range answers it; a Hello means the batch was lost."""
        token = self.policies.outstanding(eid)
        if token is None:
            return None
        if isinstance(uplink, Result):
            batch_id = uplink.result.batch_id
            if not POLICY_BATCH_BASE <= batch_id <= POLICY_BATCH_BASE + POLICY_BATCH_SPAN:
                return None
            status = uplink.status or self.last_status.get(eid) or DeviceStatus(eid=eid)
            return _Pending(batch_id, token, status)
        return _Pending(-1, token, uplink.status)

    async def _through(self, eid: bytes, uplink: Uplink, now: float, *, wake: bool) -> Downlink:
        status = uplink.status
        if status is None:
            return await self.inner.exchange(eid, uplink)
        self.last_status[eid] = status
        view = await self.backend.registry(eid)
        group = group_of(self.policies.config.groups, DeviceFacts.from_tags(eid, view.tags))
        verdict = self.policies.on_status(eid, status, now, group=group, wake=wake, bound_imei=view.imei,
                                          quarantined=view.quarantined)
        decisions = list(verdict.decisions)
        if decisions:
            await self.backend.apply_decisions(eid, decisions, now)
        if not verdict.allowed:
            return ErrorMsg(int(ErrorCode.FORBIDDEN), "device quarantined: an operator must release it")
        run = next((d for d in decisions if isinstance(d, RunEs10)), None)
        if run is not None and isinstance(uplink, Hello):
            batch_id = POLICY_BATCH_BASE + (self._next_id % POLICY_BATCH_SPAN)
            self._next_id += 1
            self._pending[eid] = _Pending(batch_id, run.token, status)
            step = Step(tuple(apdu.store_data(run.request, self.segment_size_of(eid))))
            return BatchMsg(Batch(batch_id, (step,), aid=apdu.ISD_R_AID, refresh=run.refresh))
        return await self.inner.exchange(eid, uplink)


def _response(result: BatchResult) -> bytes | None:
    if len(result.results) != 1 or result.results[0].sw != SW_OK or not result.results[0].data:
        return None
    return result.results[0].data
