"""Automatic fallback and return (SGP.32 fallback mechanism), one device and one fleet at a time.

Theory of operation. Every wake-up of a device brings its status (attach failures, signal,
serving PLMN). `FallbackPolicy.observe` keeps, per device, how many consecutive wake-ups
failed and since when; when the device's group policy (gateway.config.policies) says the
device has failed long enough, the device *triggers*. Per device the states are:

    normal --trigger--> waiting --slot--> executing --ok--> fallback --return_at--> returning
       ^                                      |  refused: cooldown              |  ok
       +--------------------------------------+<-------------------------------+

`executing`/`returning` mean a `RunEs10` (ExecuteFallbackMechanism BF5D / ReturnFromFallback
BF5E, refreshFlag false: the device refreshes itself after the batch) was handed to the
engine; its response comes back through `on_es10_result`. After each switch the eIM is told
once (`ReportStateChange`: notifyStateChange, stateChangeCause fallback(1), rPLMN).

A carrier outage makes hundreds of devices trigger together; the `Wave` makes it one event:
- at most `max_concurrent` switches are in flight gateway-wide. A slot is granted only while
  the device is awake (at `observe`), so a sleeping device never holds one; a slot whose
  device never answers is freed after `call_timeout_s` and the device waits again;
- state-change reports get distinct one-second slots, each at a random point of the next
  `report_spread_s` seconds and at most `report_rate_per_s` per second, so the eIM sees a
  trickle, not a herd;
- `outage_devices` devices of one group triggering within `outage_window_s` raise ONE
  carrier-outage alarm; it clears when the last device of the group affected by it is back.

Pure: time comes in as `now` (epoch seconds), randomness from the injected `rand()`. State
is JSON (`SavePolicyState` kinds "fallback" per device, "wave" gateway-wide, both
`{"v": 1, ...}` objects, see `DeviceFallback.to_json` and `Wave.to_json`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config.policies import FallbackPolicy, PoliciesSection
from gateway.errors import DecodeError, GatewayError
from gateway.links.protocol import DeviceStatus
from gateway.policy.decisions import (
    EXECUTE_FALLBACK,
    RETURN_FROM_FALLBACK,
    Alarm,
    AuditPolicy,
    ClearAlarm,
    EmitEvent,
    PolicyDecision,
    RaiseAlarm,
    ReportStateChange,
    RunEs10,
    SavePolicyState,
)
from gateway.spec import codec

STATE_CHANGE_CAUSE_FALLBACK = 1   # SGP.32 StateChangeCause fallback(1)
NORMAL, WAITING, EXECUTING, FALLBACK, RETURNING, COOLDOWN = (
    "normal", "waiting", "executing", "fallback", "returning", "cooldown")
RESULT_OK = 0
RESULT_FALLBACK_NOT_AVAILABLE = 6
MAX_UNANSWERED = 3   # calls a device got but never answered before the attempt is given up
NO_GROUP = "-"


def execute_fallback_request() -> bytes:  # SGP.32 §5.9.x ExecuteFallbackMechanism (BF5D)
    return codec.encode("ExecuteFallbackMechanismRequest", {"refreshFlag": False})


def return_from_fallback_request() -> bytes:  # SGP.32 §5.9.x ReturnFromFallback (BF5E)
    return codec.encode("ReturnFromFallbackRequest", {"refreshFlag": False})


def _result(function: str, response: bytes) -> int:
    if function == EXECUTE_FALLBACK:
        return int(codec.decode("ExecuteFallbackMechanismResponse", response)["executeFallbackMechanismResult"])
    return int(codec.decode("ReturnFromFallbackResponse", response)["returnFromFallbackResult"])


@dataclass(slots=True)
class DeviceFallback:
    state: str = NORMAL
    group: str | None = None
    failed_wakeups: int = 0
    failing_since: float | None = None
    since: float = 0.0
    token: str | None = None
    unanswered: int = 0
    return_at: float | None = None
    return_wait_s: float | None = None
    last_return_at: float | None = None
    falls: int = 0
    switches: int = 0
    report: list[Any] | None = None   # [token, at, cause] of the state-change report not yet sent

    def to_json(self) -> bytes:
        return json.dumps({"v": 1, "state": self.state, "group": self.group, "failed_wakeups": self.failed_wakeups,
                           "failing_since": self.failing_since, "since": self.since, "token": self.token,
                           "unanswered": self.unanswered, "return_at": self.return_at,
                           "return_wait_s": self.return_wait_s, "last_return_at": self.last_return_at,
                           "falls": self.falls, "switches": self.switches, "report": self.report},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> DeviceFallback:
        d = _load(blob, "fallback state")
        fields = {k: v for k, v in d.items() if k != "v"}
        for name, kinds in _DEVICE_FIELDS.items():
            if name in fields and not _is(fields[name], kinds):
                raise DecodeError(f"{name} has the wrong type", type_name="fallback state")
        try:
            out = cls(**fields)
        except TypeError as exc:
            raise DecodeError(str(exc), type_name="fallback state") from None
        if out.state not in (NORMAL, WAITING, EXECUTING, FALLBACK, RETURNING, COOLDOWN):
            raise DecodeError(f"unknown state {out.state!r}", type_name="fallback state")
        if out.report is not None and not (len(out.report) == 3 and isinstance(out.report[0], str)
                                           and _is(out.report[1], _NUMBER) and _is(out.report[2], (int,))):
            raise DecodeError("report is not [token, at, cause]", type_name="fallback state")
        return out


_NUMBER = (int, float)
_DEVICE_FIELDS: dict[str, tuple[type, ...]] = {
    "state": (str,), "group": (str, type(None)), "failed_wakeups": (int,), "failing_since": (*_NUMBER, type(None)),
    "since": _NUMBER, "token": (str, type(None)), "unanswered": (int,), "return_at": (*_NUMBER, type(None)),
    "return_wait_s": (*_NUMBER, type(None)), "last_return_at": (*_NUMBER, type(None)), "falls": (int,),
    "switches": (int,), "report": (list, type(None)),
}


def _is(value: object, kinds: tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


@dataclass(slots=True)
class Outage:
    raised: bool = False
    recent: dict[str, float] = field(default_factory=dict)   # EID hex -> trigger time
    affected: list[str] = field(default_factory=list)         # EIDs hex, while raised


@dataclass(slots=True)
class Wave:
    inflight: dict[str, list[Any]] = field(default_factory=dict)  # EID hex -> [token, started_at]
    report_slots: list[int] = field(default_factory=list)          # whole seconds taken (x rate)
    outages: dict[str, Outage] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"v": 1, "inflight": self.inflight, "report_slots": self.report_slots,
                           "outages": {k: {"raised": o.raised, "recent": o.recent, "affected": o.affected}
                                       for k, o in self.outages.items()}},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> Wave:
        d = _load(blob, "fallback wave state")
        try:
            inflight = {str(k): [str(v[0]), float(v[1])] for k, v in d["inflight"].items() if len(v) == 2}
            if len(inflight) != len(d["inflight"]):
                raise ValueError("an in-flight entry is not [token, started_at]")
            wave = cls(inflight, [int(s) for s in d["report_slots"]],
                       {str(k): Outage(bool(o["raised"]), {str(e): float(t) for e, t in o["recent"].items()},
                                       [str(e) for e in o["affected"]])
                        for k, o in d["outages"].items()})
            for eid_hex in list(wave.inflight) + [e for o in wave.outages.values() for e in o.affected]:
                bytes.fromhex(eid_hex)
            return wave
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
            raise DecodeError(f"malformed: {exc}", type_name="fallback wave state") from None


def _load(blob: bytes, what: str) -> dict[str, Any]:
    try:
        d = json.loads(blob)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not JSON: {exc}", type_name=what) from None
    if not isinstance(d, dict) or d.get("v") != 1:
        raise DecodeError("not a version 1 object", type_name=what)
    return d


class Fallbacks:
    """The fallback policy of every device, and the wave that bounds them together."""

    def __init__(self, policies: PoliciesSection, rand: Callable[[], float]) -> None:
        self.policies = policies
        self.rand = rand
        self.devices: dict[bytes, DeviceFallback] = {}
        self.wave = Wave()
        self._wave_changes = 0   # bumped by every change of self.wave (it is saved only then)

    # -- persistence ---------------------------------------------------------------------------

    def restore(self, eid: bytes, kind: str, blob: bytes) -> None:
        if kind == "wave":
            self.wave = Wave.from_json(blob)
        elif kind == "fallback":
            self.devices[eid] = DeviceFallback.from_json(blob)

    def state_of(self, eid: bytes) -> str:
        device = self.devices.get(eid)
        return device.state if device is not None else NORMAL

    # -- inputs --------------------------------------------------------------------------------

    def observe(self, eid: bytes, status: DeviceStatus, now: float, *, group: str | None,
                wake: bool = True) -> list[PolicyDecision]:
        """A status the device reported (`wake`: it came with a Hello, one per wake-up)."""
        out: list[PolicyDecision] = []
        wave_before = self._wave_changes
        self._expire(now, out)
        device = self.devices.setdefault(eid, DeviceFallback(group=group))
        before = device.to_json()
        device.group = group
        policy = self.policies.fallback_for(group)
        if device.state == COOLDOWN and now >= device.since + policy.cooldown_s:
            self._move(device, NORMAL, now)
        if device.state == NORMAL and policy.enabled and wake:
            if self._failing(status, policy):
                device.failed_wakeups += 1
                device.failing_since = device.failing_since if device.failing_since is not None else now
                if self._triggered(device, status, policy, now):
                    self._trigger(eid, device, status, now, out)
            else:
                device.failed_wakeups, device.failing_since = 0, None
        if device.state == FALLBACK and device.return_at is not None and now >= device.return_at and wake:
            out.append(AuditPolicy(eid, "returnFromFallback", "due", (("fallback_since", device.since),)))
            self._move(device, RETURNING, now)
            device.token = None
        if device.state == WAITING and not policy.enabled:
            self._move(device, NORMAL, now)      # the policy was switched off (reload) meanwhile
        if wake and device.state in (WAITING, RETURNING) and device.token is None:
            self._grant(eid, device, policy, now, out)
        self._save(eid, device, before, wave_before, out)
        return out

    def on_es10_result(self, eid: bytes, token: str, response: bytes | None, now: float) -> list[PolicyDecision]:
        """The engine ran (or could not run) a `RunEs10`: its response, or None when the
        device did not run it (batch lost, SW error, stopped before it)."""
        out: list[PolicyDecision] = []
        device = self.devices.get(eid)
        if device is None or device.token != token:
            return [AuditPolicy(eid, "fallbackPolicy", "ignored", (("token", token), ("reason", "stale result")))]
        wave_before, before = self._wave_changes, device.to_json()
        self.wave.inflight.pop(eid.hex(), None)
        self._wave_changes += 1
        device.token = None
        function = EXECUTE_FALLBACK if device.state == EXECUTING else RETURN_FROM_FALLBACK
        policy = self.policies.fallback_for(device.group)
        if response is None:
            device.unanswered += 1
            out.append(AuditPolicy(eid, function, "not-run", (("attempt", device.unanswered),)))
            if device.unanswered >= MAX_UNANSWERED:
                self._refused(eid, device, function, "device did not run the call", now, policy, out)
            elif device.state == EXECUTING:
                self._move(device, WAITING, now)
            self._save(eid, device, before, wave_before, out)
            return out
        try:
            result = _result(function, response)
        except GatewayError as exc:
            self._refused(eid, device, function, f"unreadable response: {exc}", now, policy, out)
            self._save(eid, device, before, wave_before, out)
            return out
        retried, device.unanswered = device.unanswered > 0, 0
        if device.state == EXECUTING:
            if result == RESULT_OK:
                self._fell_back(eid, device, now, policy, out)
            elif result == RESULT_FALLBACK_NOT_AVAILABLE and retried:
                # an earlier call whose answer was lost most likely ran: the eUICC is in fallback
                # already. If it was not, the return finds "not in fallback" and ends it cleanly.
                out.append(AuditPolicy(eid, EXECUTE_FALLBACK, "already-in-fallback", (("result", result),)))
                self._fell_back(eid, device, now, policy, out)
            else:
                self._refused(eid, device, function, f"executeFallbackMechanismResult {result}", now, policy, out)
        elif result == RESULT_OK or result == RESULT_FALLBACK_NOT_AVAILABLE:
            # 6: the eUICC is not in fallback any more (the eIM enabled a profile): back to normal
            self._returned(eid, device, now, result, out)
        else:
            device.return_at = now + policy.return_after_s
            self._move(device, FALLBACK, now, keep_since=True)
            out.append(AuditPolicy(eid, RETURN_FROM_FALLBACK, "refused",
                                   (("returnFromFallbackResult", result), ("retry_at", device.return_at))))
        self._save(eid, device, before, wave_before, out)
        return out

    def outstanding(self, eid: bytes) -> str | None:
        """The token of the call decided for the device and not answered yet, if any."""
        device = self.devices.get(eid)
        return device.token if device is not None and device.state in (EXECUTING, RETURNING) else None

    def request_return(self, eid: bytes, now: float) -> list[PolicyDecision]:
        """Operator: return at the device's next wake-up instead of waiting for return_at."""
        device = self.devices.get(eid)
        if device is None or device.state != FALLBACK:
            return []
        before, wave_before = device.to_json(), self._wave_changes
        device.return_at = now
        out: list[PolicyDecision] = [AuditPolicy(eid, "returnFromFallback", "requested", (("origin", "operator"),))]
        self._save(eid, device, before, wave_before, out)
        return out

    def report_sent(self, eid: bytes, token: str, now: float) -> list[PolicyDecision]:
        """The eIM answered the GetEimPackage that carried report `token`: it is not sent again."""
        device = self.devices.get(eid)
        if device is None or device.report is None or device.report[0] != token:
            return []
        device.report = None
        return [AuditPolicy(eid, "stateChangeReported", "ok", (("token", token),)),
                SavePolicyState(eid, "fallback", device.to_json())]

    def resume(self, now: float) -> list[PolicyDecision]:
        """After `restore` at start-up: the reports that were decided but never confirmed sent,
        each at its planned time, or spread again from now when that time has passed."""
        out: list[PolicyDecision] = []
        for eid, device in sorted(self.devices.items()):
            if device.report is None:
                continue
            token, at, cause = device.report
            when = float(at) if float(at) > now else self._report_slot(now)
            out.append(ReportStateChange(eid, int(cause), None, when, str(token)))
        if out:
            out.append(SavePolicyState(b"", "wave", self.wave.to_json()))
        return out

    def tick(self, now: float) -> list[PolicyDecision]:
        """Periodic (the runtime calls it every minute or so): frees slots of vanished devices."""
        out: list[PolicyDecision] = []
        wave_before = self._wave_changes
        self._expire(now, out)
        if self._wave_changes != wave_before:
            out.append(SavePolicyState(b"", "wave", self.wave.to_json()))
        return out

    # -- steps ---------------------------------------------------------------------------------

    @staticmethod
    def _failing(status: DeviceStatus, policy: FallbackPolicy) -> bool:
        weak = (policy.min_signal_dbm is not None and status.signal_dbm is not None
                and status.signal_dbm < policy.min_signal_dbm)
        return status.attach_failures > 0 or weak

    @staticmethod
    def _triggered(device: DeviceFallback, status: DeviceStatus, policy: FallbackPolicy, now: float) -> bool:
        if policy.attach_failures and status.attach_failures >= policy.attach_failures:
            return True
        if policy.failed_wakeups and device.failed_wakeups >= policy.failed_wakeups:
            return True
        return bool(policy.failing_for_s and device.failing_since is not None
                    and now - device.failing_since >= policy.failing_for_s)

    def _trigger(self, eid: bytes, device: DeviceFallback, status: DeviceStatus, now: float,
                 out: list[PolicyDecision]) -> None:
        self._move(device, WAITING, now)
        device.token = None
        out.append(AuditPolicy(eid, "fallbackTriggered", "waiting", (
            ("attach_failures", status.attach_failures), ("failed_wakeups", device.failed_wakeups),
            ("failing_since", device.failing_since), ("signal_dbm", status.signal_dbm), ("plmn", status.plmn))))
        self._outage_seen(eid, device.group, now, out)

    def _grant(self, eid: bytes, device: DeviceFallback, policy: FallbackPolicy, now: float,
               out: list[PolicyDecision]) -> None:
        if len(self.wave.inflight) >= self.policies.fallback_wave.max_concurrent:
            return
        device.switches += 1
        token = f"fb:{eid.hex()}:{device.switches}"
        device.token = token
        self.wave.inflight[eid.hex()] = [token, now]
        self._wave_changes += 1
        if device.state == WAITING:
            self._move(device, EXECUTING, now)
            out.append(RunEs10(eid, EXECUTE_FALLBACK, execute_fallback_request(), policy.refresh, token,
                               "fallback policy: operational network failing"))
            out.append(AuditPolicy(eid, EXECUTE_FALLBACK, "requested", (("token", token),)))
        else:
            out.append(RunEs10(eid, RETURN_FROM_FALLBACK, return_from_fallback_request(), policy.refresh, token,
                               "fallback policy: return condition reached"))
            out.append(AuditPolicy(eid, RETURN_FROM_FALLBACK, "requested", (("token", token),)))

    def _fell_back(self, eid: bytes, device: DeviceFallback, now: float, policy: FallbackPolicy,
                   out: list[PolicyDecision]) -> None:
        recent_return = device.last_return_at is not None and now - device.last_return_at < policy.return_after_max_s
        wait = policy.return_after_s
        if recent_return and device.return_wait_s is not None:
            wait = min(policy.return_after_max_s, device.return_wait_s * 2)
        device.return_wait_s = wait
        device.return_at = now + wait
        device.falls += 1
        device.failed_wakeups, device.failing_since = 0, None
        self._move(device, FALLBACK, now)
        at = self._report_slot(now)
        out.append(AuditPolicy(eid, EXECUTE_FALLBACK, "ok", (("return_at", device.return_at), ("report_at", at))))
        out.append(self._report(eid, device, at))
        out.append(EmitEvent(f"fallback.executed:{eid.hex()}:{device.switches}", "fallback.executed", now, eid,
                             (("group", device.group), ("return_at", device.return_at))))

    def _returned(self, eid: bytes, device: DeviceFallback, now: float, result: int, out: list[PolicyDecision]) -> None:
        device.last_return_at = now
        device.return_at = None
        device.failed_wakeups, device.failing_since = 0, None
        self._move(device, NORMAL, now)
        out.append(AuditPolicy(eid, RETURN_FROM_FALLBACK, "ok" if result == RESULT_OK else "not-in-fallback",
                               (("returnFromFallbackResult", result),)))
        if result == RESULT_OK:
            at = self._report_slot(now)
            out.append(self._report(eid, device, at))
        out.append(EmitEvent(f"fallback.returned:{eid.hex()}:{device.switches}", "fallback.returned", now, eid,
                             (("group", device.group), ("result", result))))
        self._outage_recovered(eid, device.group, now, out)

    def _refused(self, eid: bytes, device: DeviceFallback, function: str, why: str, now: float,
                 policy: FallbackPolicy, out: list[PolicyDecision]) -> None:
        device.unanswered = 0
        if function == EXECUTE_FALLBACK:
            self._move(device, COOLDOWN, now)
            device.failed_wakeups, device.failing_since = 0, None
            out.append(AuditPolicy(eid, EXECUTE_FALLBACK, "failed", (("reason", why), ("cooldown_s", policy.cooldown_s))))
            out.append(EmitEvent(f"fallback.failed:{eid.hex()}:{device.switches}", "fallback.failed", now, eid,
                                 (("group", device.group), ("reason", why))))
            self._outage_recovered(eid, device.group, now, out)
        else:
            device.return_at = now + policy.return_after_s
            self._move(device, FALLBACK, now, keep_since=True)
            out.append(AuditPolicy(eid, RETURN_FROM_FALLBACK, "failed", (("reason", why), ("retry_at", device.return_at))))

    @staticmethod
    def _report(eid: bytes, device: DeviceFallback, at: float) -> ReportStateChange:
        token = f"sc:{eid.hex()}:{device.switches}"
        device.report = [token, at, STATE_CHANGE_CAUSE_FALLBACK]
        return ReportStateChange(eid, STATE_CHANGE_CAUSE_FALLBACK, None, at, token)

    def _move(self, device: DeviceFallback, state: str, now: float, *, keep_since: bool = False) -> None:
        device.state = state
        if not keep_since:
            device.since = now

    def _expire(self, now: float, out: list[PolicyDecision]) -> None:
        for eid_hex, (token, started) in list(self.wave.inflight.items()):
            eid = bytes.fromhex(eid_hex)
            device = self.devices.get(eid)
            timeout = self.policies.fallback_for(device.group if device else None).call_timeout_s
            if now - float(started) < timeout:
                continue
            del self.wave.inflight[eid_hex]
            self._wave_changes += 1
            if device is not None and device.token == token:
                before = device.to_json()
                device.token = None
                if device.state == EXECUTING:
                    self._move(device, WAITING, now)
                out.append(AuditPolicy(eid, "fallbackPolicy", "timeout", (("token", token),)))
                if device.to_json() != before:
                    out.append(SavePolicyState(eid, "fallback", device.to_json()))

    def _report_slot(self, now: float) -> float:
        """A time for one state-change report: random within the spread, one rate slot each."""
        wave_cfg = self.policies.fallback_wave
        rate = wave_cfg.report_rate_per_s
        self.wave.report_slots = [s for s in self.wave.report_slots if s >= math.floor(now * rate)]
        taken = set(self.wave.report_slots)
        slot = math.ceil((now + self.rand() * wave_cfg.report_spread_s) * rate)
        while slot in taken:
            slot += 1
        self.wave.report_slots.append(slot)
        self._wave_changes += 1
        return slot / rate

    # -- one alarm per outage ------------------------------------------------------------------

    def _outage_seen(self, eid: bytes, group: str | None, now: float, out: list[PolicyDecision]) -> None:
        cfg = self.policies.fallback_wave
        key = group or NO_GROUP
        outage = self.wave.outages.setdefault(key, Outage())
        self._wave_changes += 1
        outage.recent = {e: t for e, t in outage.recent.items() if now - t < cfg.outage_window_s}
        outage.recent[eid.hex()] = now
        if outage.raised:
            if eid.hex() not in outage.affected:
                outage.affected.append(eid.hex())
            return
        if len(outage.recent) >= cfg.outage_devices:
            outage.raised = True
            outage.affected = sorted(outage.recent)
            alarm_key = f"carrier-outage:{key}"
            text = (f"{len(outage.recent)} devices of group {key} lost their network within "
                    f"{cfg.outage_window_s:.0f} s: carrier outage suspected, falling back")
            out.append(RaiseAlarm(Alarm(alarm_key, "carrier-outage", "critical", text, None,
                                        (("group", key), ("devices", len(outage.recent))))))
            out.append(AuditPolicy(None, "alarm", "raised", (("key", alarm_key), ("text", text))))
            out.append(EmitEvent(f"alarm.raised:{alarm_key}:{now:.0f}", "alarm.raised", now, None,
                                 (("key", alarm_key), ("kind", "carrier-outage"), ("text", text),
                                  ("group", key), ("devices", len(outage.recent)))))

    def _outage_recovered(self, eid: bytes, group: str | None, now: float, out: list[PolicyDecision]) -> None:
        key = group or NO_GROUP
        outage = self.wave.outages.get(key)
        if outage is None:
            return
        self._wave_changes += 1
        outage.recent.pop(eid.hex(), None)
        if not outage.raised or eid.hex() not in outage.affected:
            return
        outage.affected.remove(eid.hex())
        if outage.affected:
            return
        del self.wave.outages[key]
        alarm_key = f"carrier-outage:{key}"
        text = f"every device of group {key} affected by the outage is back on its own profile"
        out.append(ClearAlarm(alarm_key, text))
        out.append(AuditPolicy(None, "alarm", "cleared", (("key", alarm_key),)))
        out.append(EmitEvent(f"alarm.cleared:{alarm_key}:{now:.0f}", "alarm.cleared", now, None,
                             (("key", alarm_key), ("kind", "carrier-outage"), ("text", text))))

    def _save(self, eid: bytes, device: DeviceFallback, before: bytes, wave_before: int,
              out: list[PolicyDecision]) -> None:
        after = device.to_json()
        if after != before:
            out.append(SavePolicyState(eid, "fallback", after))
        if self._wave_changes != wave_before:
            out.append(SavePolicyState(b"", "wave", self.wave.to_json()))


__all__ = ["DeviceFallback", "Fallbacks", "Wave", "execute_fallback_request", "return_from_fallback_request"]
