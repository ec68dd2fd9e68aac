"""`Policies`: the one object the runtime asks, per uplink status, what the edge policies decide.

Theory of operation. For every status a device reports (Hello: a wake-up; Result: a status
inside the same wake-up), `on_status` runs, in this order:

1. the IMEI binding (gateway.policy.imei): a quarantined or mismatching device stops here,
   `allowed` is False and nothing else is evaluated for it;
2. the fallback policy of the device's group (gateway.policy.fallback);
3. the roaming exposure count (gateway.policy.roaming).

and returns the decisions of all three in that order. The `AlarmBook` keeps the alarms raised
by those decisions (`record_alarms`). Pure: the caller passes the registry's IMEI binding and
quarantine flag, the device's group, the time; state changes come out as `SavePolicyState`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.config.policies import PoliciesSection
from gateway.links.protocol import DeviceStatus
from gateway.policy.alarms import AlarmBook
from gateway.policy.decisions import ClearAlarm, PolicyDecision, RaiseAlarm
from gateway.policy.fallback import Fallbacks
from gateway.policy.imei import check_imei
from gateway.policy.roaming import Roaming


@dataclass(frozen=True, slots=True)
class StatusVerdict:
    allowed: bool                       # False: quarantined, the engine must not see the uplink
    decisions: tuple[PolicyDecision, ...]


class Policies:
    def __init__(self, config: PoliciesSection, *, rand: Callable[[], float] | None = None) -> None:
        self.config = config
        self.fallbacks = Fallbacks(config, rand or random.Random().random)
        self.roaming = Roaming(config.roaming)
        self.alarms = AlarmBook()

    def reload(self, config: PoliciesSection) -> None:
        """A new configuration (SIGHUP): state is kept, thresholds and groups change."""
        self.config = config
        self.fallbacks.policies = config
        self.roaming.policy = config.roaming

    def restore(self, eid: bytes, kind: str, blob: bytes) -> None:
        """Load a `SavePolicyState` blob at start-up (kinds "fallback", "wave", "roaming")."""
        if kind == "roaming":
            self.roaming.restore(eid, blob)
        else:
            self.fallbacks.restore(eid, kind, blob)

    def on_status(self, eid: bytes, status: DeviceStatus, now: float, *, group: str | None, wake: bool,
                  bound_imei: str | None, quarantined: bool) -> StatusVerdict:
        verdict = check_imei(self.config.imei, eid, status.imei, bound=bound_imei, quarantined=quarantined, now=now)
        decisions = list(verdict.decisions)
        if verdict.allowed:
            decisions += self.fallbacks.observe(eid, status, now, group=group, wake=wake)
            decisions += self.roaming.observe(eid, status.plmn, now)
        self.record_alarms(decisions, now)
        return StatusVerdict(verdict.allowed, tuple(decisions))

    def on_es10_result(self, eid: bytes, token: str, response: bytes | None, now: float) -> list[PolicyDecision]:
        decisions = self.fallbacks.on_es10_result(eid, token, response, now)
        self.record_alarms(decisions, now)
        return decisions

    def tick(self, now: float) -> list[PolicyDecision]:
        return self.fallbacks.tick(now)

    def outstanding(self, eid: bytes) -> str | None:
        """The token of a fallback/return call not answered yet (after a restart: the gate's
        batch is gone, the policy state still knows)."""
        return self.fallbacks.outstanding(eid)

    def request_return(self, eid: bytes, now: float) -> list[PolicyDecision]:
        """Operator: a device in fallback returns at its next wake-up."""
        return self.fallbacks.request_return(eid, now)

    def report_sent(self, eid: bytes, token: str, now: float) -> list[PolicyDecision]:
        """A `ReportStateChange` reached the eIM (it answered the GetEimPackage)."""
        return self.fallbacks.report_sent(eid, token, now)

    def resume(self, now: float) -> list[PolicyDecision]:
        """At start-up, after every `restore`: the state-change reports still to send."""
        return self.fallbacks.resume(now)

    def gauges(self) -> dict[str, dict[str, int]]:
        """For the metrics endpoint: devices per fallback state, switches in flight, alarms
        by kind, devices with a roaming-exposure alarm."""
        states: dict[str, int] = {}
        for device in self.fallbacks.devices.values():
            states[device.state] = states.get(device.state, 0) + 1
        roaming = sum(1 for d in self.roaming.devices.values() if d.alarmed)
        return {"fallback_devices": states, "fallback_inflight": {"": len(self.fallbacks.wave.inflight)},
                "alarms": self.alarms.by_kind(), "roaming_alarmed_devices": {"": roaming}}

    def record_alarms(self, decisions: Iterable[PolicyDecision], now: float) -> None:
        for d in decisions:
            if isinstance(d, (RaiseAlarm, ClearAlarm)):
                self.alarms.apply(d, now)
